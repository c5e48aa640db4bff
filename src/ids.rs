//! Response and tool-call ids for providers that send none (Gemini), and timestamps.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique id such as `chatcmpl-5f1c0e3a9b7d2e41`: a per-process random key hashed with a counter,
/// so ids never repeat within a process and are not guessable across processes.
pub fn new_id(prefix: &str) -> String {
    use once_cell::sync::Lazy;
    static KEY: Lazy<RandomState> = Lazy::new(RandomState::new);
    let mut hasher = KEY.build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{prefix}{:016x}", hasher.finish())
}

/// Seconds since the Unix epoch, for OpenAI's `created`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = super::new_id("call_");
        let b = super::new_id("call_");
        assert_ne!(a, b);
        assert!(a.starts_with("call_") && a.len() == 21);
    }
}
