//! The in-memory store: answers by key, bounded in bytes.
//!
//! `pingora-lru` keeps the recency order and the byte count (each entry weighs its bytes) and
//! says what to evict when the total passes `cache.max_bytes`; the answers themselves sit in a
//! map beside it (the LRU hands its data back only when evicting). Both change under one lock,
//! so the map holds exactly what the LRU counts.

use super::key::CacheKey;
use bytes::Bytes;
use pingora_lru::Lru;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// One LRU shard: a sharded `Lru` evicts from a randomly chosen shard, so with a few large
/// answers it can drop the newest one while older ones stay. The map's lock serialises every
/// change anyway, so shards would buy no concurrency.
const SHARDS: usize = 1;

/// What an entry costs besides its body: the key, the map's and the LRU's bookkeeping.
pub const ENTRY_OVERHEAD: usize = 128;

/// A stored answer.
pub struct Entry {
    key: CacheKey,
    pub body: Bytes,
    expires: Instant,
}

pub struct MemoryStore {
    entries: Mutex<HashMap<u64, Entry>>,
    order: Lru<u64, SHARDS>,
}

impl MemoryStore {
    pub fn new(max_bytes: usize) -> MemoryStore {
        MemoryStore {
            entries: Mutex::new(HashMap::new()),
            order: Lru::with_capacity(max_bytes, 64),
        }
    }

    /// The stored answer for `key`, unless it expired by `now` (then it is dropped).
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Bytes> {
        let short = key.short();
        let found = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.get(&short) {
                Some(e) if e.key == *key && e.expires > now => Some(e.body.clone()),
                Some(e) if e.key == *key => {
                    entries.remove(&short);
                    self.order.remove(short);
                    return None;
                }
                _ => None,
            }
        };
        if found.is_some() {
            self.order.promote(short);
        }
        found
    }

    /// Stores an answer until `expires`, evicting the least recently used answers to stay
    /// within the byte bound. The caller has checked the entry's size.
    pub fn insert(&self, key: CacheKey, body: Bytes, expires: Instant) {
        let short = key.short();
        let weight = body.len() + ENTRY_OVERHEAD;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(short, Entry { key, body, expires });
        self.order.admit(short, short, weight);
        for (evicted, _) in self.order.evict_to_limit() {
            entries.remove(&evicted);
        }
    }

    /// The bytes the stored answers weigh.
    pub fn bytes(&self) -> usize {
        self.order.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClientEndpoint;
    use std::time::Duration;

    fn key(n: u32) -> CacheKey {
        let body = format!("{{\"n\":{n}}}");
        CacheKey::for_request(&["m"], ClientEndpoint::ChatCompletions, body.as_bytes())
            .unwrap_or_else(|| panic!("no key for {body}"))
    }

    #[test]
    fn stays_within_its_bytes_and_evicts_the_oldest() {
        let store = MemoryStore::new(10 * (1000 + ENTRY_OVERHEAD));
        let later = Instant::now() + Duration::from_secs(60);
        for n in 0..100 {
            store.insert(key(n), Bytes::from(vec![b'x'; 1000]), later);
            assert!(store.bytes() <= 10 * (1000 + ENTRY_OVERHEAD));
        }
        assert!(store.get(&key(0), Instant::now()).is_none());
        assert!(store.get(&key(99), Instant::now()).is_some());
        let held = store.entries.lock().map(|e| e.len()).unwrap_or(0);
        assert_eq!(held, 10);
    }

    #[test]
    fn the_newest_answer_is_never_the_one_evicted() {
        let entry = 10_000;
        let store = MemoryStore::new(3 * (entry + ENTRY_OVERHEAD));
        let later = Instant::now() + Duration::from_secs(60);
        for n in 0..500 {
            store.insert(key(n), Bytes::from(vec![b'x'; entry]), later);
            assert!(store.get(&key(n), Instant::now()).is_some(), "{n} evicted");
        }
    }

    #[test]
    fn an_expired_answer_is_gone() {
        let store = MemoryStore::new(1 << 20);
        let now = Instant::now();
        store.insert(
            key(1),
            Bytes::from_static(b"{}"),
            now + Duration::from_secs(1),
        );
        assert!(store.get(&key(1), now).is_some());
        assert!(store.get(&key(1), now + Duration::from_secs(2)).is_none());
        assert_eq!(store.bytes(), 0);
    }
}
