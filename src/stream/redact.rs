//! A provider key echoed in a stream passed through to the client (an upstream error event that
//! quotes the key it was sent) is replaced before the client sees it, also when it is split
//! across reads.

use bytes::Bytes;
use memchr::memmem;

pub const REDACTED: &[u8] = b"[redacted]";

/// Replaces `secret` in a stream's bytes. Bytes at the end of a read that could begin the secret
/// are held until the next read shows whether they do; every other read goes on as it is.
pub struct StreamRedactor {
    finder: memmem::Finder<'static>,
    held: Vec<u8>,
}

impl StreamRedactor {
    /// `None` for secrets too short to tell from ordinary text (as [`crate::error::redact`]).
    pub fn new(secret: &str) -> Option<StreamRedactor> {
        (secret.len() >= 4).then(|| StreamRedactor {
            finder: memmem::Finder::new(secret.as_bytes()).into_owned(),
            held: Vec::new(),
        })
    }

    fn secret(&self) -> &[u8] {
        self.finder.needle()
    }

    /// The longest end of `data` that is a proper beginning of the secret.
    fn partial_at_end(&self, data: &[u8]) -> usize {
        let secret = self.secret();
        let window = data.len().min(secret.len() - 1);
        let tail = &data[data.len() - window..];
        // Candidates start where the secret's first byte is; the earliest is the longest.
        memchr::memchr_iter(secret[0], tail)
            .map(|at| tail.len() - at)
            .find(|&n| tail[tail.len() - n..] == secret[..n])
            .unwrap_or(0)
    }

    /// The bytes to send for `input`; at the end of the stream, whatever is held too.
    pub fn redact(&mut self, input: Bytes, end: bool) -> Bytes {
        if self.held.is_empty()
            && self.finder.find(&input).is_none()
            && (end || self.partial_at_end(&input) == 0)
        {
            return input;
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(&input);
        let mut out = Vec::with_capacity(data.len());
        let mut from = 0;
        for at in self.finder.find_iter(&data) {
            out.extend_from_slice(&data[from..at]);
            out.extend_from_slice(REDACTED);
            from = at + self.secret().len();
        }
        let rest = &data[from..];
        let hold = if end { 0 } else { self.partial_at_end(rest) };
        out.extend_from_slice(&rest[..rest.len() - hold]);
        self.held = rest[rest.len() - hold..].to_vec();
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    fn run(pieces: &[&[u8]]) -> Vec<u8> {
        let mut r = StreamRedactor::new(KEY).unwrap();
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let end = i + 1 == pieces.len();
            out.extend_from_slice(&r.redact(Bytes::copy_from_slice(p), end));
        }
        out
    }

    #[test]
    fn the_key_is_replaced_wherever_the_reads_cut_it() {
        let stream = format!(
            "data: {{\"x\":1}}\n\ndata: {{\"error\":{{\"message\":\"bad key {KEY} and {KEY}\"}}}}\n\n"
        );
        let expected = stream.replace(KEY, "[redacted]");
        let bytes = stream.as_bytes();
        for a in 0..bytes.len() {
            for b in (a..bytes.len()).step_by(7) {
                let got = run(&[&bytes[..a], &bytes[a..b], &bytes[b..]]);
                assert_eq!(String::from_utf8(got).unwrap(), expected, "cuts {a} {b}");
            }
        }
    }

    #[test]
    fn reads_without_the_key_go_on_as_they_are() {
        let mut r = StreamRedactor::new(KEY).unwrap();
        let read = Bytes::from_static(b"data: {\"x\":\"sk-other\"}\n\n");
        let out = r.redact(read.clone(), false);
        assert_eq!(out.as_ptr(), read.as_ptr(), "copied");
        // A read ending in what could begin the key is held back, then let go.
        assert_eq!(
            &r.redact(Bytes::from_static(b"abc sk-li"), false)[..],
            b"abc "
        );
        assert_eq!(&r.redact(Bytes::from_static(b"ke"), false)[..], b"sk-like");
        assert_eq!(&r.redact(Bytes::from_static(b"x sk-"), true)[..], b"x sk-");
        assert!(StreamRedactor::new("abc").is_none());
    }
}
