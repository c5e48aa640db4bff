//! The exact-match response cache: whole answers of models that opt in (`models.<m>.cache`),
//! by a key of what changes the answer ([`key`]), in a store bounded in bytes ([`store`]).
//!
//! Only complete, successful (2xx) answers are stored, as the client received them (its
//! protocol's bytes; a stream as the whole answer it carried, [`stream`]), each at most
//! `cache.max_entry_bytes`. Clients opt out per request with
//! `Cache-Control: no-cache` (not served from the cache; its answer may be stored) or `no-store`
//! (neither). The proxy's hooks only call in here: the lookup after a request is planned, the
//! collection as the answer's bytes leave.
//!
//! Stampede protection: the first miss of a key leads (its request goes upstream); identical
//! requests that miss while it runs wait for its answer to be stored, at most the model's
//! `timeout`, then are answered from the cache, or go upstream themselves if the leader's answer
//! was not stored (an error, too large, the client left).

pub mod key;
pub mod store;
pub mod stream;

use crate::api::ClientEndpoint;
use crate::config::CacheSettings;
use bytes::Bytes;
use key::CacheKey;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use store::MemoryStore;
use tokio::sync::watch;

/// Response header saying what the cache did: `hit`, `miss` or `bypass`.
pub const CACHE_HEADER: &str = "x-dragoman-cache";

/// What the cache did for a request to a cached model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from the cache.
    Hit,
    /// Not found; the answer is stored if it qualifies.
    Miss,
    /// Not looked up: the client opted out, or the request is not cacheable.
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// The cache's part of a model: how long its answers live, and its series.
pub struct ModelCache {
    pub ttl: Duration,
    pub counters: Option<CacheCounters>,
}

/// `dragoman_cache_requests_total{model, outcome}`, resolved once per model.
pub struct CacheCounters {
    pub hit: IntCounter,
    pub miss: IntCounter,
    pub bypass: IntCounter,
}

impl ModelCache {
    fn count(&self, status: CacheStatus) {
        if let Some(c) = &self.counters {
            match status {
                CacheStatus::Hit => c.hit.inc(),
                CacheStatus::Miss => c.miss.inc(),
                CacheStatus::Bypass => c.bypass.inc(),
            }
        }
    }
}

/// The process's cache, kept across reloads that leave `cache` unchanged.
pub struct ResponseCache {
    store: MemoryStore,
    pub settings: CacheSettings,
    bytes_held: Option<IntGauge>,
    /// With `cache.store: redis`: the rate limits' store, where entries are shared too.
    pub shared: Option<Arc<crate::limits::Limiter>>,
    /// Keys whose leading miss is upstream now: its id, and what its waiters watch (closed when
    /// the leader is done). Bounded by the requests in flight.
    flights: Mutex<HashMap<CacheKey, (u64, watch::Receiver<()>)>>,
    next_flight: AtomicU64,
}

/// A leading miss: while it is held, identical misses wait for its answer. Dropped when the
/// answer is stored, or with the request.
pub struct FlightGuard {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    id: u64,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self
            .cache
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
        // Dropping `_done` then wakes the waiters.
    }
}

/// The first miss leads; the others follow it.
enum Flight {
    Lead(FlightGuard),
    Follow(watch::Receiver<()>),
}

impl ResponseCache {
    pub fn new(
        settings: CacheSettings,
        bytes_held: Option<IntGauge>,
        shared: Option<Arc<crate::limits::Limiter>>,
    ) -> ResponseCache {
        ResponseCache {
            store: MemoryStore::new(settings.max_bytes),
            settings,
            bytes_held,
            shared,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
        }
    }

    fn join_flight(self: &Arc<Self>, key: CacheKey) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, done)) = flights.get(&key) {
            return Flight::Follow(done.clone());
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (done, watched) = watch::channel(());
        flights.insert(key, (id, watched));
        Flight::Lead(FlightGuard {
            cache: self.clone(),
            key,
            id,
            _done: done,
        })
    }

    /// Stores a whole answer for `ttl`, unless it is larger than `cache.max_entry_bytes`; with
    /// a shared store, there too (in the background: the answer's bytes are on their way).
    pub fn put(&self, key: CacheKey, body: Bytes, ttl: Duration) {
        if body.len() > self.settings.max_entry_bytes {
            return;
        }
        if let (Some(shared), Ok(runtime)) = (&self.shared, tokio::runtime::Handle::try_current()) {
            let (shared, value) = (shared.clone(), body.clone());
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            runtime.spawn(async move {
                if let Some(store) = shared.shared_store() {
                    store.set_with_ttl(&key.store_name(), &value, ttl_ms).await;
                }
            });
        }
        self.put_local(key, body, ttl);
    }

    fn put_local(&self, key: CacheKey, body: Bytes, ttl: Duration) {
        let Some(expires) = Instant::now().checked_add(ttl) else {
            return;
        };
        self.store.insert(key, body, expires);
        if let Some(gauge) = &self.bytes_held {
            gauge.set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
        }
    }

    /// The answer from this process's store, else from the shared one (then kept here too,
    /// for the time it has left there).
    async fn get_anywhere(&self, key: &CacheKey) -> Option<Bytes> {
        if let Some(found) = self.get(key) {
            return Some(found);
        }
        let store = self.shared.as_ref()?.shared_store()?;
        let (value, ttl_ms) = store.get_with_ttl(&key.store_name()).await?;
        if value.len() > self.settings.max_entry_bytes {
            return None;
        }
        let value = Bytes::from(value);
        self.put_local(*key, value.clone(), Duration::from_millis(ttl_ms));
        Some(value)
    }

    fn get(&self, key: &CacheKey) -> Option<Bytes> {
        let found = self.store.get(key, Instant::now());
        if let Some(gauge) = &self.bytes_held {
            gauge.set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
        }
        found
    }
}

/// What the client's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    /// The answer may come from the cache (not `no-cache`, not `no-store`).
    pub read: bool,
    /// The answer may be stored (not `no-store`).
    pub store: bool,
}

impl Directive {
    pub fn of(headers: &http::HeaderMap) -> Directive {
        let mut directive = Directive {
            read: true,
            store: true,
        };
        let tokens = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            if token.eq_ignore_ascii_case("no-store") {
                directive = Directive {
                    read: false,
                    store: false,
                };
            } else if token.eq_ignore_ascii_case("no-cache") {
                directive.read = false;
            }
        }
        directive
    }
}

/// Where a request's answer goes once whole: carried by its planned call.
pub struct CacheFill {
    /// What the cache did, for the response header.
    pub status: CacheStatus,
    /// Where to store the answer; `None`: not stored.
    pub target: Option<StoreTarget>,
}

impl CacheFill {
    /// What a fallback model's answer to the request carries: the client's model's status, and
    /// no target (it is another model's answer, not stored under the client's model's key).
    pub fn for_fallback(status: CacheStatus) -> CacheFill {
        CacheFill {
            status,
            target: None,
        }
    }
}

pub struct StoreTarget {
    pub key: CacheKey,
    pub ttl: Duration,
    pub cache: Arc<ResponseCache>,
    /// Held by a leading miss until its answer is stored (or the request ends).
    pub flight: Mutex<Option<FlightGuard>>,
}

impl StoreTarget {
    /// Stores the whole answer, then lets the identical misses waiting for it go.
    pub fn store(&self, answer: Bytes) {
        self.cache.put(self.key, answer, self.ttl);
        drop(
            self.flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// What to do with a request to a model that caches.
pub enum Lookup {
    /// Answer with these bytes (a whole answer in the client's protocol).
    Hit(Bytes),
    /// Go upstream; this says whether and where its answer is stored.
    Upstream(CacheFill),
}

/// The request to look up.
pub struct Request<'a> {
    /// The served model's identity: its name, provider and upstream model id.
    pub model: [&'a str; 3],
    pub endpoint: ClientEndpoint,
    pub stream: bool,
    pub body: &'a [u8],
    pub directive: Directive,
    /// How long an identical miss already upstream is waited for (the model's `timeout`).
    pub wait: Duration,
}

/// Looks a request up in `cache` for a model whose cache settings are `model`, and counts the
/// outcome. An identical miss already upstream is waited for (see the module's documentation).
pub async fn lookup(
    cache: &Arc<ResponseCache>,
    model: &ModelCache,
    request: &Request<'_>,
) -> Lookup {
    let outcome = decide(cache, model, request).await;
    model.count(match &outcome {
        Lookup::Hit(_) => CacheStatus::Hit,
        Lookup::Upstream(fill) => fill.status,
    });
    outcome
}

async fn decide(cache: &Arc<ResponseCache>, model: &ModelCache, request: &Request<'_>) -> Lookup {
    let bypass = Lookup::Upstream(CacheFill {
        status: CacheStatus::Bypass,
        target: None,
    });
    let cacheable = matches!(
        request.endpoint,
        ClientEndpoint::ChatCompletions
            | ClientEndpoint::Messages
            | ClientEndpoint::Complete
            | ClientEndpoint::Embeddings
    );
    // Streams are served and stored for OpenAI chat and Anthropic Messages clients (`stream`).
    let stream_unsupported = request.stream && !stream::supported(request.endpoint);
    if !cacheable || stream_unsupported || !request.directive.store {
        return bypass;
    }
    let Some(key) = CacheKey::for_request(&request.model, request.endpoint, request.body) else {
        return bypass;
    };
    let fill = |status, flight| {
        Lookup::Upstream(CacheFill {
            status,
            target: Some(StoreTarget {
                key,
                ttl: model.ttl,
                cache: cache.clone(),
                flight: Mutex::new(flight),
            }),
        })
    };
    if !request.directive.read {
        return fill(CacheStatus::Bypass, None);
    }
    if let Some(body) = cache.get_anywhere(&key).await {
        return Lookup::Hit(body);
    }
    match cache.join_flight(key) {
        Flight::Lead(guard) => fill(CacheStatus::Miss, Some(guard)),
        Flight::Follow(mut done) => {
            // Ends when the leader is done (its sender dropped), whatever its outcome.
            let _ = tokio::time::timeout(request.wait, done.changed()).await;
            match cache.get(&key) {
                Some(body) => Lookup::Hit(body),
                None => fill(CacheStatus::Miss, None),
            }
        }
    }
}

/// Gathers one attempt's answer as it leaves for the client: a whole answer as it is, a stream
/// into the whole answer it carries (in the protocol of the client's endpoint).
pub enum Gather {
    Whole(Collector),
    Stream(Box<stream::StreamGather>),
}

impl Gather {
    /// `None`: a stream at an endpoint whose streams are not gathered.
    pub fn new(endpoint: ClientEndpoint, stream: bool, limit: usize) -> Option<Gather> {
        if stream {
            let gather = stream::StreamGather::new(endpoint, limit)?;
            Some(Gather::Stream(Box::new(gather)))
        } else {
            Some(Gather::Whole(Collector::new(limit)))
        }
    }

    /// Adds a chunk; false once nothing will be stored.
    pub fn push(&mut self, chunk: &Bytes) -> bool {
        match self {
            Gather::Whole(c) => c.push(chunk),
            Gather::Stream(s) => s.push(chunk),
        }
    }

    /// The whole answer, if it is one to store.
    pub fn finish(self) -> Option<Bytes> {
        match self {
            Gather::Whole(c) => c.finish(),
            Gather::Stream(s) => s.finish(),
        }
    }
}

/// Gathers the bytes of one attempt's answer as they leave for the client, up to the largest
/// entry; the chunks are shared, not copied, until the answer is whole.
pub struct Collector {
    parts: Vec<Bytes>,
    len: usize,
    limit: usize,
    /// Passed the limit: nothing is stored.
    overflowed: bool,
}

impl Collector {
    pub fn new(limit: usize) -> Collector {
        Collector {
            parts: Vec::new(),
            len: 0,
            limit,
            overflowed: false,
        }
    }

    /// Adds a chunk; false once the answer is too large to store (the parts are dropped).
    pub fn push(&mut self, chunk: &Bytes) -> bool {
        if self.overflowed {
            return false;
        }
        self.len += chunk.len();
        if self.len > self.limit {
            self.overflowed = true;
            self.parts = Vec::new();
            return false;
        }
        if !chunk.is_empty() {
            self.parts.push(chunk.clone());
        }
        true
    }

    /// The whole answer.
    pub fn finish(self) -> Option<Bytes> {
        if self.overflowed {
            return None;
        }
        match self.parts.len() {
            0 => None,
            1 => self.parts.into_iter().next(),
            _ => {
                let mut whole = bytes::BytesMut::with_capacity(self.len);
                for part in &self.parts {
                    whole.extend_from_slice(part);
                }
                Some(whole.freeze())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(value) {
            h.insert(http::header::CACHE_CONTROL, v);
        }
        h
    }

    #[test]
    fn cache_control_opts_out() {
        let both = Directive {
            read: true,
            store: true,
        };
        assert_eq!(Directive::of(&http::HeaderMap::new()), both);
        assert_eq!(Directive::of(&headers("max-age=0")), both);
        let no_cache = Directive::of(&headers("No-Cache"));
        assert!(!no_cache.read && no_cache.store);
        let no_store = Directive::of(&headers("max-age=5, no-store"));
        assert!(!no_store.read && !no_store.store);
    }

    #[test]
    fn the_collector_keeps_a_whole_answer_within_its_limit() {
        let mut c = Collector::new(6);
        assert!(c.push(&Bytes::from_static(b"abc")));
        assert!(c.push(&Bytes::from_static(b"def")));
        assert_eq!(c.finish().as_deref(), Some(&b"abcdef"[..]));
        let mut c = Collector::new(5);
        c.push(&Bytes::from_static(b"abc"));
        assert!(!c.push(&Bytes::from_static(b"def")));
        assert!(c.finish().is_none());
    }
}
