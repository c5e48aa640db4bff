//! Rate limits: requests per minute, tokens per minute and requests in flight, per gateway key,
//! per model and per provider.
//!
//! A request is admitted once, after routing: it takes one request and its estimated tokens
//! (prompt bytes / 4, plus the output it asked for) from every bucket that applies, or from none.
//! When its answer reports the real usage, the difference is given back or charged. Buckets live
//! in this process, shared by its worker threads, or in Redis, shared by several gateways; when
//! Redis does not answer, the process's own buckets take over until it does. Requests in flight
//! are counted per process.

pub mod bucket;
pub mod store;
pub mod usage;

use crate::config::{LimitStoreSettings, LimitsConfig};
use crate::error::{ErrorCode, GatewayError};
use bucket::{Concurrency, ConcurrencySlot, Reading, TokenBucket};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{RedisStore, StoreAnswer, StoreBucket};

/// What a set of limits belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Key,
    Model,
    Provider,
}

impl ScopeKind {
    fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::Model => "model",
            ScopeKind::Provider => "provider",
        }
    }
}

/// The limits of one gateway key, model or provider.
#[derive(Debug)]
pub struct ScopeLimits {
    kind: ScopeKind,
    name: String,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    concurrency: Option<Concurrency>,
    /// What the buckets were built from (a reload keeps them when it is unchanged).
    config: LimitsConfig,
    /// The buckets' names in the shared store.
    rpm_key: String,
    tpm_key: String,
    /// `dragoman_rate_limit_rejections_total` for this scope, resolved once.
    rejections: Option<prometheus::IntCounter>,
}

impl ScopeLimits {
    /// `None` when `config` sets no limit.
    pub fn new(kind: ScopeKind, name: &str, config: LimitsConfig) -> Option<Arc<ScopeLimits>> {
        if config.is_empty() {
            return None;
        }
        let prefix = format!("dragoman:limits:{}:{name}", kind.as_str());
        Some(Arc::new(ScopeLimits {
            kind,
            name: name.to_string(),
            rpm: config.rpm.map(TokenBucket::per_minute),
            tpm: config.tpm.map(TokenBucket::per_minute),
            concurrency: config.concurrency.map(Concurrency::new),
            config,
            rpm_key: format!("{prefix}:rpm"),
            tpm_key: format!("{prefix}:tpm"),
            rejections: crate::observe::metrics::rate_limit_counter(kind.as_str(), name),
        }))
    }

    /// Like [`ScopeLimits::new`], but keeps `old` (its buckets' levels and the requests it counts
    /// in flight) when it was built for the same scope and limits: a reload does not hand out a
    /// fresh minute's worth.
    pub fn reuse_or_new(
        old: Option<&Arc<ScopeLimits>>,
        kind: ScopeKind,
        name: &str,
        config: LimitsConfig,
    ) -> Option<Arc<ScopeLimits>> {
        match old {
            Some(old) if old.kind == kind && old.name == name && old.config == config => {
                Some(old.clone())
            }
            _ => ScopeLimits::new(kind, name, config),
        }
    }

    pub fn counts_tokens(&self) -> bool {
        self.tpm.is_some()
    }

    /// Counts a request this scope refused.
    fn refused(&self) {
        if let Some(c) = &self.rejections {
            c.inc();
        }
    }

    fn describe(&self) -> String {
        format!("{} `{}`", self.kind.as_str(), self.name)
    }
}

/// Where buckets live: this process, or a store shared with other gateways.
pub struct Limiter {
    store: Option<RedisStore>,
}

impl std::fmt::Debug for Limiter {
    // The store's URL may hold a password: say only whether there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("shared", &self.store.is_some())
            .finish()
    }
}

impl Limiter {
    pub fn new(settings: &LimitStoreSettings) -> Result<Limiter, String> {
        let store = match &settings.redis_url {
            Some(url) => Some(RedisStore::new(url.expose(), settings.store_timeout)?),
            None => None,
        };
        Ok(Limiter { store })
    }

    pub fn local() -> Limiter {
        Limiter { store: None }
    }

    /// The shared store, when `limits.store` names one (the response cache shares it).
    pub fn shared_store(&self) -> Option<&RedisStore> {
        self.store.as_ref()
    }
}

/// What the `x-ratelimit-*` headers of a request's answers say: the tightest bucket of each unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub requests: Option<Reading>,
    pub tokens: Option<Reading>,
}

impl RateLimitHeaders {
    fn tighten(slot: &mut Option<Reading>, reading: Reading) {
        if slot.is_none_or(|r| reading.remaining < r.remaining) {
            *slot = Some(reading);
        }
    }

    /// Sets OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`. The values are
    /// written into one buffer that they all share: two allocations (the buffer, and the count
    /// of its sharers) instead of one for each.
    pub fn apply(&self, headers: &mut HeaderMap) {
        const NAMES: [HeaderName; 6] = [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ];
        let readings = [self.requests, self.tokens];
        if readings.iter().all(Option::is_none) {
            return;
        }
        let mut text = Vec::with_capacity(96);
        // Where each value ends in `text`; an unset unit's values are empty.
        let mut ends = [0; 6];
        let mut digits = itoa::Buffer::new();
        for (unit, reading) in readings.iter().enumerate() {
            if let Some(r) = reading {
                text.extend_from_slice(digits.format(r.limit).as_bytes());
                ends[3 * unit] = text.len();
                text.extend_from_slice(digits.format(r.remaining).as_bytes());
                ends[3 * unit + 1] = text.len();
                write_reset(r.reset, &mut text);
                ends[3 * unit + 2] = text.len();
            } else {
                ends[3 * unit..3 * unit + 3].fill(text.len());
            }
        }
        let text = bytes::Bytes::from(text);
        let mut start = 0;
        for (name, end) in NAMES.into_iter().zip(ends) {
            if end > start {
                // Digits and letters are always valid header values. Past `http`'s maximum
                // number of headers (far above any head) they are left out.
                if let Ok(value) = HeaderValue::from_maybe_shared(text.slice(start..end)) {
                    let _ = headers.try_insert(name, value);
                }
            }
            start = end;
        }
    }
}

/// OpenAI's duration format: `20ms`, `1.5s`, `6m0s`. Integer formatting only: this runs for
/// every answer.
fn write_reset(d: Duration, text: &mut Vec<u8>) {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut digits = itoa::Buffer::new();
    if ms < 1000 {
        text.extend_from_slice(digits.format(ms).as_bytes());
        text.extend_from_slice(b"ms");
    } else if ms < 60_000 {
        text.extend_from_slice(digits.format(ms / 1000).as_bytes());
        // Milliseconds as a decimal fraction without trailing zeros: 1.5s, 1.05s, 1.005s.
        let mut frac = ms % 1000;
        if frac != 0 {
            let mut places = 3;
            while frac % 10 == 0 {
                frac /= 10;
                places -= 1;
            }
            text.push(b'.');
            let shown = digits.format(frac).as_bytes();
            text.resize(text.len() + places - shown.len(), b'0');
            text.extend_from_slice(shown);
        }
        text.push(b's');
    } else {
        text.extend_from_slice(digits.format(ms / 60_000).as_bytes());
        text.push(b'm');
        text.extend_from_slice(digits.format(ms % 60_000 / 1000).as_bytes());
        text.push(b's');
    }
}

/// Per client request, shared by every upstream call made for it: what its answers' headers
/// say, and the token buckets its estimate was taken from until its usage settles them.
#[derive(Debug, Default)]
pub struct Accounting {
    pub headers: RateLimitHeaders,
    /// The tokens the request was charged before it ran.
    pub estimate: u64,
    /// Whether a tokens-per-minute bucket applies, so the answer's usage is worth reading.
    pub counts_tokens: bool,
    /// The scopes whose `tpm` took the estimate, until the usage settles them.
    charged: Mutex<Vec<Charged>>,
}

/// A scope whose token bucket took a request's estimate, and where: the shared store, or this
/// process.
#[derive(Debug)]
struct Charged {
    scope: Arc<ScopeLimits>,
    store: Option<Arc<Limiter>>,
}

impl Accounting {
    /// The usage the answer reported: the buckets that took the estimate get the difference back
    /// (or are charged it) at once, before the answer's last bytes reach the client. Once.
    pub fn record_usage(&self, used: usage::TokenUsage) {
        let charged = std::mem::take(&mut *self.charged.lock().unwrap_or_else(|e| e.into_inner()));
        let refund = self.estimate as f64 - used.total() as f64;
        if charged.is_empty() || refund == 0.0 {
            return;
        }
        let now = Instant::now();
        let mut shared: Vec<(String, u64, Arc<Limiter>)> = Vec::new();
        for Charged { scope, store } in charged {
            let Some(tpm) = &scope.tpm else { continue };
            match store {
                Some(limiter) => shared.push((scope.tpm_key.clone(), tpm.capacity(), limiter)),
                None => tpm.adjust(refund, now),
            }
        }
        let (Some((_, _, limiter)), Ok(runtime)) =
            (shared.first(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let limiter = limiter.clone();
        runtime.spawn(async move {
            let Some(store) = &limiter.store else { return };
            let request: Vec<StoreBucket> = shared
                .iter()
                .map(|(key, capacity, _)| StoreBucket {
                    key,
                    capacity: *capacity,
                    amount: refund as i64,
                })
                .collect();
            store.call(false, &request).await;
        });
    }
}

/// An admitted request: it holds its places in the concurrency gauges until it ends.
pub struct Admission {
    _slots: [Option<ConcurrencySlot>; 3],
    pub accounting: Arc<Accounting>,
}

/// The tokens a request is charged before it runs: its bytes over four (a token is about four
/// bytes of English text and JSON), plus the output it asked for.
pub fn estimate_tokens(body_len: usize, max_output: Option<u64>) -> u64 {
    (body_len as u64)
        .div_ceil(4)
        .saturating_add(max_output.unwrap_or(0))
}

/// Admits a request under every limit in `scopes`, or refuses it with a 429 saying which limit
/// and when to retry. `Ok(None)`: no limit applies.
pub async fn admit(
    limiter: &Arc<Limiter>,
    scopes: [Option<&Arc<ScopeLimits>>; 3],
    estimate: u64,
) -> Result<Option<Admission>, GatewayError> {
    admit_sharing(limiter, scopes, estimate, None).await
}

/// Admits the same request under more limits (a fallback model's and its provider's), settling
/// against the usage its answer reports in `accounting` (the request's). Without `accounting`
/// (no limit applied to the request itself), the estimate stands.
pub async fn admit_more(
    limiter: &Arc<Limiter>,
    scopes: [Option<&Arc<ScopeLimits>>; 3],
    accounting: Option<&Arc<Accounting>>,
) -> Result<Option<Admission>, GatewayError> {
    let estimate = accounting.map_or(0, |a| a.estimate);
    admit_sharing(limiter, scopes, estimate, accounting).await
}

async fn admit_sharing(
    limiter: &Arc<Limiter>,
    scopes: [Option<&Arc<ScopeLimits>>; 3],
    estimate: u64,
    accounting: Option<&Arc<Accounting>>,
) -> Result<Option<Admission>, GatewayError> {
    if scopes.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut slots: [Option<ConcurrencySlot>; 3] = Default::default();
    for (slot, scope) in slots.iter_mut().zip(scopes) {
        let Some(scope) = scope else { continue };
        if let Some(gauge) = &scope.concurrency {
            // On refusal the slots already taken are given back as `slots` drops.
            *slot = Some(gauge.try_acquire().ok_or_else(|| {
                scope.refused();
                limited(
                    format!(
                        "Too many concurrent requests for {}: the limit is {}",
                        scope.describe(),
                        gauge.limit()
                    ),
                    Duration::from_secs(1),
                )
            })?);
        }
        if let Some(tpm) = &scope.tpm {
            if estimate > tpm.capacity() {
                scope.refused();
                return Err(GatewayError::new(
                    429,
                    format!(
                        "Request too large for {}: it needs about {estimate} tokens, more than its limit of {} tokens per minute",
                        scope.describe(),
                        tpm.capacity()
                    ),
                )
                .with_code(ErrorCode::RateLimitExceeded));
            }
        }
    }
    let mut headers = RateLimitHeaders::default();
    let mut store = None;
    let taken = match limiter.store.as_ref().filter(|s| s.usable()) {
        Some(redis) => take_shared(redis, &scopes, estimate, &mut headers).await,
        None => None,
    };
    match taken {
        Some(result) => {
            result?;
            store = Some(limiter.clone());
        }
        None => take_local(&scopes, estimate, &mut headers)?,
    }
    let charged = scopes
        .iter()
        .flatten()
        .filter(|s| s.counts_tokens())
        .map(|s| Charged {
            scope: Arc::clone(s),
            store: store.clone(),
        });
    let accounting = match accounting {
        Some(shared) => {
            shared
                .charged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(charged);
            shared.clone()
        }
        None => Arc::new(Accounting {
            headers,
            estimate,
            counts_tokens: scopes.iter().flatten().any(|s| s.counts_tokens()),
            charged: Mutex::new(charged.collect()),
        }),
    };
    Ok(Some(Admission {
        _slots: slots,
        accounting,
    }))
}

fn limited(message: String, wait: Duration) -> GatewayError {
    let mut e = GatewayError::new(429, message).with_code(ErrorCode::RateLimitExceeded);
    e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    e
}

fn over_limit(
    scope: &ScopeLimits,
    unit: &str,
    bucket: &TokenBucket,
    wait: Duration,
) -> GatewayError {
    scope.refused();
    limited(
        format!(
            "Rate limit reached for {}: {} {unit} per minute. Retry after {:.1} s",
            scope.describe(),
            bucket.capacity(),
            wait.as_secs_f64()
        ),
        wait,
    )
}

/// Each scope's buckets with the cost a request takes from them: one request, `estimate` tokens.
fn buckets<'a>(
    scopes: &'a [Option<&'a Arc<ScopeLimits>>; 3],
    estimate: u64,
) -> impl Iterator<Item = (&'a ScopeLimits, &'static str, &'a TokenBucket, &'a str, u64)> {
    scopes.iter().flatten().flat_map(move |s| {
        let rpm = s
            .rpm
            .as_ref()
            .map(|b| (&***s, "requests", b, s.rpm_key.as_str(), 1));
        let tpm = s
            .tpm
            .as_ref()
            .map(|b| (&***s, "tokens", b, s.tpm_key.as_str(), estimate));
        rpm.into_iter().chain(tpm)
    })
}

fn take_local(
    scopes: &[Option<&Arc<ScopeLimits>>; 3],
    estimate: u64,
    headers: &mut RateLimitHeaders,
) -> Result<(), GatewayError> {
    let now = Instant::now();
    for (i, (scope, unit, bucket, _, cost)) in buckets(scopes, estimate).enumerate() {
        match bucket.try_take(cost, now) {
            Ok(reading) => record(headers, unit, reading),
            Err(wait) => {
                // All or nothing: give back what this request took.
                for (_, _, b, _, c) in buckets(scopes, estimate).take(i) {
                    b.adjust(c as f64, now);
                }
                return Err(over_limit(scope, unit, bucket, wait));
            }
        }
    }
    Ok(())
}

fn record(headers: &mut RateLimitHeaders, unit: &str, reading: Reading) {
    let slot = if unit == "requests" {
        &mut headers.requests
    } else {
        &mut headers.tokens
    };
    RateLimitHeaders::tighten(slot, reading);
}

/// `None` when the store did not answer (the caller takes locally instead).
async fn take_shared(
    store: &RedisStore,
    scopes: &[Option<&Arc<ScopeLimits>>; 3],
    estimate: u64,
    headers: &mut RateLimitHeaders,
) -> Option<Result<(), GatewayError>> {
    let list: Vec<_> = buckets(scopes, estimate).collect();
    let request: Vec<StoreBucket> = list
        .iter()
        .map(|(_, _, bucket, key, cost)| StoreBucket {
            key,
            capacity: bucket.capacity(),
            amount: *cost as i64,
        })
        .collect();
    match store.call(true, &request).await? {
        StoreAnswer::Taken(levels) => {
            for ((_, unit, bucket, _, _), level) in list.iter().zip(levels) {
                record(headers, unit, bucket.reading(level as f64));
            }
            Some(Ok(()))
        }
        StoreAnswer::Wait { wait, bucket } => {
            let (scope, unit, b, _, _) = list.get(bucket).or(list.first())?;
            Some(Err(over_limit(scope, unit, b, wait)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(
        kind: ScopeKind,
        rpm: Option<u64>,
        tpm: Option<u64>,
        c: Option<u32>,
    ) -> Arc<ScopeLimits> {
        ScopeLimits::new(
            kind,
            "a",
            LimitsConfig {
                rpm,
                tpm,
                concurrency: c,
            },
        )
        .unwrap()
    }

    /// What a scope's token bucket holds now.
    fn tokens_left(scope: &ScopeLimits) -> u64 {
        let tpm = scope.tpm.as_ref().unwrap();
        tpm.try_take(0, Instant::now()).unwrap().remaining
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn each_rate_limit_header_gets_its_own_value() {
        let reading = |limit, remaining, ms| Reading {
            limit,
            remaining,
            reset: Duration::from_millis(ms),
        };
        let values = |headers: &RateLimitHeaders| {
            let mut map = HeaderMap::new();
            headers.apply(&mut map);
            let mut pairs: Vec<(String, String)> = map
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
                .collect();
            pairs.sort();
            pairs
        };
        let pair = |n: &str, v: &str| (format!("x-ratelimit-{n}"), v.to_string());
        let tokens_only = RateLimitHeaders {
            requests: None,
            tokens: Some(reading(1000, 250, 45_000)),
        };
        assert_eq!(
            values(&tokens_only),
            [
                pair("limit-tokens", "1000"),
                pair("remaining-tokens", "250"),
                pair("reset-tokens", "45s"),
            ]
        );
        let both = RateLimitHeaders {
            requests: Some(reading(60, 59, 1000)),
            tokens: Some(reading(1000, 250, 1500)),
        };
        assert_eq!(
            values(&both),
            [
                pair("limit-requests", "60"),
                pair("limit-tokens", "1000"),
                pair("remaining-requests", "59"),
                pair("remaining-tokens", "250"),
                pair("reset-requests", "1s"),
                pair("reset-tokens", "1.5s"),
            ]
        );
        assert!(values(&RateLimitHeaders::default()).is_empty());
    }

    #[test]
    fn reset_texts_follow_openai() {
        let reset_text = |d| {
            let mut text = Vec::new();
            write_reset(d, &mut text);
            String::from_utf8(text).unwrap_or_default()
        };
        assert_eq!(reset_text(Duration::from_millis(20)), "20ms");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_millis(1050)), "1.05s");
        assert_eq!(reset_text(Duration::from_millis(1005)), "1.005s");
        assert_eq!(reset_text(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(reset_text(Duration::from_secs(2)), "2s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn no_limits_no_admission() {
        let limiter = Arc::new(Limiter::local());
        assert!(run(admit(&limiter, [None, None, None], 10))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_refused_request_takes_from_no_bucket() {
        let limiter = Arc::new(Limiter::local());
        let key = scope(ScopeKind::Key, Some(100), None, None);
        let model = scope(ScopeKind::Model, Some(1), None, None);
        let first = run(admit(&limiter, [Some(&key), Some(&model), None], 0)).unwrap();
        let h = first.as_ref().unwrap().accounting.headers;
        // The model's bucket is the tighter one.
        assert_eq!(h.requests.unwrap().limit, 1);
        assert_eq!(h.requests.unwrap().remaining, 0);
        let e = run(admit(&limiter, [Some(&key), Some(&model), None], 0))
            .err()
            .unwrap();
        assert_eq!(e.status, 429);
        assert!(e.message.contains("model `a`"), "{}", e.message);
        assert!(e.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        // The key's bucket lost only the admitted request.
        let r = key
            .rpm
            .as_ref()
            .unwrap()
            .try_take(0, Instant::now())
            .unwrap();
        assert_eq!(r.remaining, 99);
    }

    #[test]
    fn estimates_above_a_token_limit_are_refused_up_front() {
        let limiter = Arc::new(Limiter::local());
        let key = scope(ScopeKind::Key, None, Some(1000), None);
        let e = run(admit(&limiter, [Some(&key), None, None], 1001))
            .err()
            .unwrap();
        assert!(e.message.contains("too large"), "{}", e.message);
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn the_estimate_is_settled_against_reported_usage() {
        let limiter = Arc::new(Limiter::local());
        let key = scope(ScopeKind::Key, None, Some(1000), None);
        let a = run(admit(&limiter, [Some(&key), None, None], 600))
            .unwrap()
            .unwrap();
        a.accounting.record_usage(usage::TokenUsage {
            input: 100,
            output: 50,
            ..Default::default()
        });
        // Settled at once, and only once.
        a.accounting.record_usage(usage::TokenUsage::default());
        drop(a);
        // 1000 - 150 left (within refill noise).
        let left = tokens_left(&key);
        assert!((850..=852).contains(&left), "{left}");
        // No usage reported: the estimate stands.
        let a = run(admit(&limiter, [Some(&key), None, None], 500))
            .unwrap()
            .unwrap();
        drop(a);
        let left = tokens_left(&key);
        assert!((350..=353).contains(&left), "{left}");
    }

    #[test]
    fn concurrency_is_held_until_the_admission_ends() {
        let limiter = Arc::new(Limiter::local());
        let key = scope(ScopeKind::Key, None, None, Some(1));
        let a = run(admit(&limiter, [Some(&key), None, None], 0)).unwrap();
        let e = run(admit(&limiter, [Some(&key), None, None], 0))
            .err()
            .unwrap();
        assert!(e.message.contains("concurrent"), "{}", e.message);
        drop(a);
        assert!(run(admit(&limiter, [Some(&key), None, None], 0)).is_ok());
    }
}
