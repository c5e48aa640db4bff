//! Request ids: the client's `x-request-id` when it is a plausible id, else one made here.
//!
//! A client's id is kept when it is 1 to 128 bytes of `[A-Za-z0-9._:-]` (UUIDs, ULIDs, W3C trace
//! ids and the usual `req_...` forms all are): anything else, which would let a client write
//! arbitrary text into logs and upstream headers, is replaced. Made ids are 32 hex digits: a
//! per-process random half, and a counter passed through a keyed bijection, so they never repeat
//! within a process, do not collide across processes, and do not tell how many requests came.

use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const HEADER: &str = "x-request-id";
/// An upstream's own request id, passed on to the client under this name.
pub const UPSTREAM_HEADER: &str = "x-upstream-request-id";
pub const MAX_LEN: usize = 128;

/// On an answer's head: the request's id, and the upstream's own id (if it sent one) moved to
/// `x-upstream-request-id`.
pub fn set_on_answer(headers: &mut http::HeaderMap, id: &HeaderValue) {
    let ours = const { http::HeaderName::from_static(HEADER) };
    if let Some(theirs) = headers.remove(&ours) {
        let upstream = const { http::HeaderName::from_static(UPSTREAM_HEADER) };
        let _ = headers.try_insert(upstream, theirs);
    }
    let _ = headers.try_insert(ours, id.clone());
}

/// Whether a client's id is kept as it is.
pub fn is_acceptable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

struct Keys {
    prefix: u64,
    mix: [u64; 3],
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut bytes = [0u8; 32];
        // A failing system RNG leaves the process's own hash keys as the source.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            use std::hash::{BuildHasher, Hasher};
            for (i, chunk) in bytes.chunks_mut(8).enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(i);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Keys {
            prefix: word(0),
            mix: [word(1), word(2) | 1, word(3) | 1],
        }
    })
}

/// A new id: 32 lower-case hex digits.
pub fn generate() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let keys = keys();
    // Each step is invertible (xor with a key, multiplication by an odd number, xor-shift), so
    // distinct counters give distinct values.
    let mut x = COUNTER.fetch_add(1, Ordering::Relaxed) ^ keys.mix[0];
    x = x.wrapping_mul(keys.mix[1]);
    x ^= x >> 32;
    x = x.wrapping_mul(keys.mix[2]);
    x ^= x >> 29;
    let mut out = [0u8; 32];
    hex(keys.prefix, &mut out[..16]);
    hex(x, &mut out[16..]);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The id of a request: the client's, if it sent exactly one acceptable id, else a new one; and
/// whether it is new (so the request's header must be set to it).
pub fn of_request(headers: &http::HeaderMap) -> (HeaderValue, bool) {
    let mut sent = headers.get_all(HEADER).iter();
    match (sent.next(), sent.next()) {
        (Some(id), None) if is_acceptable(id.as_bytes()) => (id.clone(), false),
        _ => (generate(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptable_ids() {
        assert!(is_acceptable(b"req_01HZX4-abc.def:1"));
        assert!(is_acceptable(&[b'a'; 128]));
        assert!(!is_acceptable(&[b'a'; 129]));
        assert!(!is_acceptable(b""));
        assert!(!is_acceptable(b"has space"));
        assert!(!is_acceptable(b"new\nline"));
        assert!(!is_acceptable("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_unique_hex() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn one_acceptable_client_id_is_kept_else_replaced() {
        let mut h = http::HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("client-1"));
        assert_eq!(
            of_request(&h),
            (HeaderValue::from_static("client-1"), false)
        );
        h.append(HEADER, HeaderValue::from_static("client-2"));
        assert!(of_request(&h).1);
        let mut bad = http::HeaderMap::new();
        bad.insert(HEADER, HeaderValue::from_static("a b"));
        let (id, new) = of_request(&bad);
        assert!(new && id != "a b");
        assert!(of_request(&http::HeaderMap::new()).1);
    }
}
