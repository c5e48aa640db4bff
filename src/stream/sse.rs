//! An incremental Server-Sent Events parser (the WHATWG event-stream format) for upstream streams.
//!
//! Bytes arrive split anywhere: inside a UTF-8 sequence, inside `\r\n`, inside a field name. The
//! parser keeps only the unfinished line and the event being built, bounded by `max_event_bytes`
//! so that a stream that never ends an event is an error rather than unbounded memory.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when given.
    pub event: Option<String>,
    /// The `data:` fields joined with `\n`.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// An event (or line) grew past the limit.
    EventTooLarge(usize),
    /// A line is not valid UTF-8.
    InvalidUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::EventTooLarge(n) => write!(f, "stream event larger than {n} bytes"),
            SseError::InvalidUtf8 => f.write_str("stream event is not valid UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line not yet terminated.
    line: Vec<u8>,
    /// A `\r` ended the last line; a `\n` right after it belongs to the same line break.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    max_event_bytes: usize,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            max_event_bytes,
        }
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', bytes) {
            let (head, rest) = bytes.split_at(pos);
            let joined;
            let line = if self.line.is_empty() {
                std::str::from_utf8(head).map_err(|_| SseError::InvalidUtf8)?
            } else {
                // The line began in an earlier chunk.
                let mut bytes = std::mem::take(&mut self.line);
                bytes.extend_from_slice(head);
                joined = String::from_utf8(bytes).map_err(|_| SseError::InvalidUtf8)?;
                &joined
            };
            self.process_line(line, out)?;
            let ended_by_cr = rest[0] == b'\r';
            bytes = &rest[1..];
            if ended_by_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if self.line.len() + bytes.len() + self.data.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// The stream ended. An event not terminated by a blank line is discarded, as the format
    /// says; returns whether anything was left unfinished.
    pub fn finish(&mut self) -> bool {
        let unfinished = !self.line.is_empty() || self.has_data;
        self.line.clear();
        self.data.clear();
        self.has_data = false;
        self.event = None;
        unfinished
    }

    fn process_line(&mut self, line: &str, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.has_data = false;
            self.event = None;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // comment
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                if self.data.len() > self.max_event_bytes {
                    return Err(SseError::EventTooLarge(self.max_event_bytes));
                }
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter to a translator
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out).unwrap();
        }
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    const STREAM: &[u8] = "event: message_start\r\ndata: {\"a\":\"h\u{e9}\u{1F600}\"}\r\n\r\n: keep-alive comment\n\nevent: ping\ndata:\n\ndata: line1\ndata:line2\n\ndata: [DONE]\n\n".as_bytes();

    fn expected() -> Vec<SseEvent> {
        vec![
            ev(Some("message_start"), "{\"a\":\"h\u{e9}\u{1F600}\"}"),
            ev(Some("ping"), ""),
            ev(None, "line1\nline2"),
            ev(None, "[DONE]"),
        ]
    }

    #[test]
    fn parses_fields_comments_and_multiline_data() {
        assert_eq!(parse_all(&[STREAM]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let got = parse_all(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(got, expected(), "split at {i}/{j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_and_bare_cr_line_endings() {
        let stream = b"data: a\r\rdata: b\r\n\r\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&chunks), vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn oversized_events_are_errors() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        assert_eq!(
            p.push(b"data: 0123456789abcdefXYZ", &mut out),
            Err(SseError::EventTooLarge(16))
        );
        let mut p = SseParser::new(16);
        p.push(b"data: 0123456789\n", &mut out).unwrap();
        assert!(p.push(b"data: 0123456789\n", &mut out).is_err());
    }

    #[test]
    fn unterminated_event_is_reported_at_finish() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.push(b"data: {\"partial\"", &mut out).unwrap();
        assert!(out.is_empty());
        assert!(p.finish());
        let mut p = SseParser::new(1024);
        p.push(b"data: x\n\n", &mut out).unwrap();
        assert!(!p.finish());
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        assert_eq!(
            p.push(b"data: \xff\n", &mut out),
            Err(SseError::InvalidUtf8)
        );
    }
}
