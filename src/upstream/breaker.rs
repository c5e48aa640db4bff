//! Per-instance circuit breaker (passive health checks), and per-model rate
//! limits.
//!
//! Every attempt against an upstream instance reports its outcome here; the
//! breaker decides whether the instance may receive traffic. State machine per
//! instance: Closed -> Open -> HalfOpen -> Closed (probe succeeded) or Open
//! (probe failed). Only what says the instance is broken counts: connect
//! failures, timeouts, 5xx.
//!
//! A 429 says something else: this key has used up this model's quota. It
//! leaves the circuit alone and sets the (instance, upstream model) pair aside
//! for the upstream's `Retry-After` (capped by `max_cooldown`); the provider's
//! other models keep the instance. A 429 without `Retry-After` sets nothing
//! aside: the request that got it tries another instance, and nothing says how
//! long the quota lasts (a guess would turn the next requests into 503s).
//!
//! In HalfOpen a single probe is let through. Its admission is a
//! [`ProbeGuard`]: dropped without an outcome reported (the client left, a
//! hedge lost, the deadline passed, selection gave up), it frees the slot for
//! the next request at once. `probe_timeout` is only a backstop.
//!
//! Time is passed in (`now`) so tests are deterministic. Callers on different
//! threads may pass slightly out-of-order instants; all elapsed-time math
//! saturates so that never panics or reopens early.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure ratio in the window above which the circuit opens.
    pub failure_rate: f64,
    /// Attempts needed in the window before `failure_rate` is considered.
    pub min_requests: u32,
    /// Sliding window for the failure ratio.
    pub window: Duration,
    /// How long an opened circuit stays open (minimum).
    pub cooldown: Duration,
    /// Upper bound for an upstream-supplied Retry-After (an opened circuit's
    /// length, and how long a 429 sets a model aside).
    pub max_cooldown: Duration,
    /// Backstop: after this long a probe whose guard was neither settled nor
    /// dropped (which should not happen) stops blocking new probes.
    pub probe_timeout: Duration,
}

/// The default `probe_timeout`, and its floor: longer than a probe that is
/// still legitimately waiting for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most (model, instance) pairs set aside at once on one instance. Models come
/// from the configuration, so this is never reached in practice; it only keeps
/// the list bounded whatever happens.
const MAX_SET_ASIDE: usize = 256;

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(300),
            probe_timeout: PROBE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    Connect,
    Timeout,
    Status5xx,
    Status429,
}

impl FailureKind {
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Status5xx,
        FailureKind::Status429,
    ];

    fn index(self) -> usize {
        match self {
            FailureKind::Connect => 0,
            FailureKind::Timeout => 1,
            FailureKind::Status5xx => 2,
            FailureKind::Status429 => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// Number of buckets the sliding window is split into. Buckets keep memory
/// bounded regardless of request rate, at the cost of events leaving the
/// window up to `window / BUCKETS` early.
const BUCKETS: u32 = 10;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    total: u32,
    failures: u32,
}

#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<Bucket>,
}

impl Window {
    fn evict(&mut self, now: Instant, window: Duration) {
        while let Some(front) = self.buckets.front() {
            if now.saturating_duration_since(front.start) >= window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn record(&mut self, now: Instant, failed: bool, window: Duration) {
        self.evict(now, window);
        let width = window / BUCKETS;
        let fits_last = self
            .buckets
            .back()
            .is_some_and(|b| now.saturating_duration_since(b.start) < width);
        if !fits_last {
            self.buckets.push_back(Bucket {
                start: now,
                total: 0,
                failures: 0,
            });
        }
        if let Some(b) = self.buckets.back_mut() {
            b.total = b.total.saturating_add(1);
            if failed {
                b.failures = b.failures.saturating_add(1);
            }
        }
    }

    /// (attempts, failures) currently in the window.
    fn counts(&self) -> (u64, u64) {
        self.buckets.iter().fold((0, 0), |(t, f), b| {
            (t + u64::from(b.total), f + u64::from(b.failures))
        })
    }

    fn clear(&mut self) {
        self.buckets.clear();
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    /// Stored as start + length rather than a deadline so no `Instant`
    /// addition (which can overflow) is ever needed.
    Open {
        since: Instant,
        length: Duration,
    },
    /// `probe` is the single probe slot while it is out: when it was claimed,
    /// and the claim's token (so only its own guard can free it).
    HalfOpen {
        probe: Option<(Instant, u64)>,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive: u32,
    window: Window,
    /// Token of the last probe claimed.
    probes: u64,
}

/// An upstream model set aside on one instance after a 429.
#[derive(Debug)]
struct SetAside {
    model: Box<str>,
    since: Instant,
    length: Duration,
}

impl SetAside {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.length
    }

    fn remaining(&self, now: Instant) -> Duration {
        self.length
            .saturating_sub(now.saturating_duration_since(self.since))
    }
}

#[derive(Debug)]
struct InstanceBreaker {
    /// True whenever the phase is not Closed. Lets the hot path (a healthy
    /// instance) answer without taking the mutex; a stale read only lets one
    /// extra request through at the moment of transition.
    tripped: AtomicBool,
    inner: Mutex<Inner>,
    /// True while `set_aside` may hold an entry (written under its lock), so
    /// that an instance without rate limits is checked without locking.
    any_set_aside: AtomicBool,
    set_aside: Mutex<Vec<SetAside>>,
    failures: [AtomicU64; 4],
}

impl InstanceBreaker {
    fn new() -> Self {
        InstanceBreaker {
            tripped: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive: 0,
                window: Window::default(),
                probes: 0,
            }),
            any_set_aside: AtomicBool::new(false),
            set_aside: Mutex::new(Vec::new()),
            failures: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections cannot leave `Inner` half-updated in a way
        // that matters, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_set_aside(&self) -> MutexGuard<'_, Vec<SetAside>> {
        self.set_aside.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much longer `model` is set aside on this instance, if it is.
    fn set_aside_for(&self, model: &str, now: Instant) -> Option<Duration> {
        if !self.any_set_aside.load(Ordering::Acquire) {
            return None;
        }
        let mut list = self.lock_set_aside();
        list.retain(|s| !s.expired(now));
        self.any_set_aside
            .store(!list.is_empty(), Ordering::Release);
        list.iter()
            .find(|s| &*s.model == model)
            .map(|s| s.remaining(now))
    }

    /// Frees the probe slot if probe `token` still holds it.
    fn release_probe(&self, token: u64) {
        let mut inner = self.lock();
        if let Phase::HalfOpen {
            probe: Some((_, held)),
        } = inner.phase
        {
            if held == token {
                inner.phase = Phase::HalfOpen { probe: None };
            }
        }
    }
}

impl Inner {
    /// Advances time-driven transitions (Open -> HalfOpen, expired probe) and
    /// returns the resulting state.
    fn refresh(&mut self, cfg: &BreakerConfig, now: Instant) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { since, length } => {
                if now.saturating_duration_since(since) >= length {
                    self.phase = Phase::HalfOpen { probe: None };
                    CircuitState::HalfOpen
                } else {
                    CircuitState::Open
                }
            }
            Phase::HalfOpen { probe } => {
                // Backstop: a probe whose outcome never arrives and whose
                // guard was never dropped must not wedge the instance forever.
                if probe
                    .is_some_and(|(at, _)| now.saturating_duration_since(at) >= cfg.probe_timeout)
                {
                    self.phase = Phase::HalfOpen { probe: None };
                }
                CircuitState::HalfOpen
            }
        }
    }

    fn open(&mut self, now: Instant, length: Duration) {
        self.phase = Phase::Open { since: now, length };
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive = 0;
        self.window.clear();
    }
}

/// How long to stay open: at least `cooldown`, longer if the upstream asked
/// (capped so a hostile or buggy Retry-After cannot ban an instance forever).
fn open_length(cfg: &BreakerConfig, retry_after: Option<Duration>) -> Duration {
    let asked = retry_after.unwrap_or(Duration::ZERO).min(cfg.max_cooldown);
    cfg.cooldown.max(asked)
}

/// What [`Breakers::try_acquire`] granted.
#[must_use]
#[derive(Debug)]
pub enum Admission {
    /// No attempt may go there now: circuit open, the probe is out, or the
    /// model is set aside on this instance after a 429.
    Refused,
    /// Closed circuit: nothing was claimed, nothing needs settling.
    Admitted,
    /// HalfOpen: this attempt is the single probe. Keep the guard for the
    /// attempt's lifetime; dropping it unsettled frees the slot.
    Probe(ProbeGuard),
}

impl Admission {
    pub fn is_admitted(&self) -> bool {
        !matches!(self, Admission::Refused)
    }
}

/// The claim on an instance's probe slot. Dropped before its outcome was
/// reported, the probe counts as abandoned and the slot is free for the next
/// request; [`ProbeGuard::settle`] says the outcome went to `on_success` or
/// `on_failure`, which decide the circuit themselves.
#[must_use]
#[derive(Debug)]
pub struct ProbeGuard {
    /// `None` once settled.
    breaker: Option<Arc<InstanceBreaker>>,
    token: u64,
}

impl ProbeGuard {
    /// The probe's outcome has been reported: nothing to release.
    pub fn settle(mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.release_probe(self.token);
        }
    }
}

/// Circuit breakers for all upstream instances, shared by all worker threads.
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    /// Shared with the breakers a reload builds for the same provider ([`Breakers::carry_over`]).
    map: Arc<RwLock<HashMap<SocketAddr, Arc<InstanceBreaker>>>>,
}

/// One instance's circuit as the admin endpoints show it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSnapshot {
    pub state: CircuitState,
    /// Failures in a row (while closed).
    pub consecutive: u32,
    /// Attempts and failures reported in the current window (while closed).
    pub window_attempts: u64,
    pub window_failures: u64,
    /// Failures by kind since the instance was first seen: connect, timeout, 5xx, 429.
    pub failures: [u64; 4],
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            map: Arc::default(),
        }
    }

    /// Breakers under `config` that keep these ones' instances: their circuits, windows and
    /// counts. A reload keeps a provider's breakers this way, whatever else changed.
    pub fn carry_over(&self, config: BreakerConfig) -> Self {
        Breakers {
            config,
            map: self.map.clone(),
        }
    }

    /// The circuit of `addr` now, for the admin endpoints (no probe claimed).
    pub fn snapshot(&self, addr: SocketAddr, now: Instant) -> BreakerSnapshot {
        let Some(b) = self.get(addr) else {
            return BreakerSnapshot {
                state: CircuitState::Closed,
                consecutive: 0,
                window_attempts: 0,
                window_failures: 0,
                failures: [0; 4],
            };
        };
        let failures = FailureKind::ALL.map(|k| b.failures[k.index()].load(Ordering::Relaxed));
        let mut inner = b.lock();
        let state = inner.refresh(&self.config, now);
        inner.window.evict(now, self.config.window);
        let (window_attempts, window_failures) = inner.window.counts();
        BreakerSnapshot {
            state,
            consecutive: inner.consecutive,
            window_attempts,
            window_failures,
            failures,
        }
    }

    fn get(&self, addr: SocketAddr) -> Option<Arc<InstanceBreaker>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(&addr).cloned()
    }

    fn get_or_create(&self, addr: SocketAddr) -> Arc<InstanceBreaker> {
        if let Some(b) = self.get(addr) {
            return b;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.entry(addr)
                .or_insert_with(|| Arc::new(InstanceBreaker::new())),
        )
    }

    /// May an attempt for upstream model `model` go to `addr` now? In
    /// HalfOpen an admission claims the single probe slot, returned as a
    /// [`ProbeGuard`] that must live as long as the attempt.
    pub fn try_acquire(&self, addr: SocketAddr, model: &str, now: Instant) -> Admission {
        let Some(b) = self.get(addr) else {
            return Admission::Admitted;
        };
        if b.set_aside_for(model, now).is_some() {
            return Admission::Refused;
        }
        if !b.tripped.load(Ordering::Acquire) {
            return Admission::Admitted;
        }
        let mut inner = b.lock();
        match inner.refresh(&self.config, now) {
            CircuitState::Closed => Admission::Admitted,
            CircuitState::Open => Admission::Refused,
            CircuitState::HalfOpen => match inner.phase {
                Phase::HalfOpen { probe: None } => {
                    inner.probes = inner.probes.wrapping_add(1);
                    let token = inner.probes;
                    inner.phase = Phase::HalfOpen {
                        probe: Some((now, token)),
                    };
                    drop(inner);
                    Admission::Probe(ProbeGuard {
                        breaker: Some(b),
                        token,
                    })
                }
                _ => Admission::Refused,
            },
        }
    }

    /// Read-only check of the circuit (no probe claimed, models aside), for
    /// choosing among candidates. HalfOpen is reported even while the probe
    /// is out; `try_acquire` is the authority on whether a request may
    /// actually go.
    pub fn state(&self, addr: SocketAddr, now: Instant) -> CircuitState {
        let Some(b) = self.get(addr) else {
            return CircuitState::Closed;
        };
        if !b.tripped.load(Ordering::Acquire) {
            return CircuitState::Closed;
        }
        let mut inner = b.lock();
        inner.refresh(&self.config, now)
    }

    /// How much longer `model` is set aside on `addr` after a 429, if it is.
    pub fn set_aside(&self, addr: SocketAddr, model: &str, now: Instant) -> Option<Duration> {
        self.get(addr)?.set_aside_for(model, now)
    }

    /// Reports a successful attempt. In HalfOpen any success is taken as the
    /// probe's (evidence that the instance works, whoever brought it) and
    /// closes the circuit.
    pub fn on_success(&self, addr: SocketAddr, now: Instant) {
        // Unknown instances have no failures to forget.
        let Some(b) = self.get(addr) else {
            return;
        };
        let mut inner = b.lock();
        match inner.refresh(&self.config, now) {
            CircuitState::Closed => {
                inner.consecutive = 0;
                inner.window.record(now, false, self.config.window);
            }
            // A request started before the circuit opened says little about
            // the instance now; wait for the cooldown and a real probe.
            CircuitState::Open => {}
            CircuitState::HalfOpen => {
                inner.close();
                b.tripped.store(false, Ordering::Release);
            }
        }
    }

    /// Reports an attempt that says the instance is broken (connect failure,
    /// timeout, 5xx). `retry_after` is the upstream's Retry-After, if any: a
    /// circuit this failure opens stays open at least that long (capped).
    ///
    /// A `Status429` is only counted here: a rate limit is no sign of a broken
    /// instance, and goes to [`Breakers::on_rate_limited`].
    pub fn on_failure(
        &self,
        addr: SocketAddr,
        kind: FailureKind,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let cfg = &self.config;
        let b = self.get_or_create(addr);
        b.failures[kind.index()].fetch_add(1, Ordering::Relaxed);
        if kind == FailureKind::Status429 {
            return;
        }
        // "Retry after 0 s" is no request to back off.
        let retry_after = retry_after.filter(|d| !d.is_zero());

        let mut inner = b.lock();
        match inner.refresh(cfg, now) {
            CircuitState::Closed => {
                inner.consecutive = inner.consecutive.saturating_add(1);
                inner.window.record(now, true, cfg.window);
                let (total, failed) = inner.window.counts();
                let rate_tripped = total > 0
                    && total >= u64::from(cfg.min_requests)
                    && failed as f64 / total as f64 > cfg.failure_rate;
                if inner.consecutive >= cfg.consecutive_failures || rate_tripped {
                    inner.open(now, open_length(cfg, retry_after));
                    b.tripped.store(true, Ordering::Release);
                }
            }
            // Late failures from requests already in flight do not extend the
            // cooldown.
            CircuitState::Open => {}
            CircuitState::HalfOpen => {
                inner.open(now, open_length(cfg, retry_after));
            }
        }
    }

    /// Reports a 429 for upstream model `model` on `addr`: that pair is set
    /// aside for `retry_after` (capped by `max_cooldown`; zero sets nothing
    /// aside, and so does no `Retry-After`). The circuit,
    /// and so the instance's other models, are left alone. A later 429 can
    /// lengthen a set-aside, never shorten it.
    pub fn on_rate_limited(
        &self,
        addr: SocketAddr,
        model: &str,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let b = self.get_or_create(addr);
        b.failures[FailureKind::Status429.index()].fetch_add(1, Ordering::Relaxed);
        let Some(length) = retry_after.map(|d| d.min(self.config.max_cooldown)) else {
            return;
        };
        if length.is_zero() {
            return;
        }
        let mut list = b.lock_set_aside();
        list.retain(|s| !s.expired(now));
        match list.iter_mut().find(|s| &*s.model == model) {
            Some(s) => {
                if length > s.remaining(now) {
                    s.since = now;
                    s.length = length;
                }
            }
            None => {
                if list.len() >= MAX_SET_ASIDE {
                    // Make room by dropping the one that would end first.
                    if let Some(first) = list
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.remaining(now))
                        .map(|(i, _)| i)
                    {
                        list.swap_remove(first);
                    }
                }
                list.push(SetAside {
                    model: model.into(),
                    since: now,
                    length,
                });
            }
        }
        b.any_set_aside.store(true, Ordering::Release);
    }

    /// Failure counts by kind since start, for metrics. Every kind is present
    /// (zero if none) so exported series are stable.
    pub fn failures(&self, addr: SocketAddr) -> HashMap<FailureKind, u64> {
        let b = self.get(addr);
        FailureKind::ALL
            .iter()
            .map(|&k| {
                let n = b
                    .as_ref()
                    .map_or(0, |b| b.failures[k.index()].load(Ordering::Relaxed));
                (k, n)
            })
            .collect()
    }
}

/// Parses an HTTP Retry-After value: delta-seconds ("120"), or an HTTP-date
/// (IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT") relative to `now_unix`
/// seconds; None if unparseable or in the past.
///
/// The obsolete RFC 850 and asctime date forms are not accepted; ignoring a
/// Retry-After only means falling back to the normal failure handling.
pub fn parse_retry_after(value: &str, now_unix: u64) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|c| c.is_ascii_digit()) {
        // Saturate instead of failing: a huge value still means "back off",
        // and the breaker caps it anyway.
        let secs = value.bytes().fold(0u64, |acc, c| {
            acc.saturating_mul(10).saturating_add(u64::from(c - b'0'))
        });
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    (at > now_unix).then(|| Duration::from_secs(at - now_unix))
}

/// Parses "Sun, 06 Nov 1994 08:49:37 GMT" into Unix seconds. Dates before
/// 1970 are rejected (they are in the past for any caller anyway).
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let b = s.as_bytes();
    if b.len() != 29 {
        return None;
    }
    // Fixed punctuation positions of the format.
    let fixed = [
        (3, b','),
        (4, b' '),
        (7, b' '),
        (11, b' '),
        (16, b' '),
        (19, b':'),
        (22, b':'),
        (25, b' '),
    ];
    if fixed.iter().any(|&(i, c)| b[i] != c) || &b[26..29] != b"GMT" {
        return None;
    }
    // The weekday is redundant; only check it is well-formed.
    if !DAYS.contains(&&b[0..3]) {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == &b[8..11])? as u64 + 1;
    let day = digits(&b[5..7])?;
    let year = digits(&b[12..16])?;
    let hour = digits(&b[17..19])?;
    let min = digits(&b[20..22])?;
    let sec = digits(&b[23..25])?;
    // sec 60 allows a leap second.
    if year < 1970 || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_since_epoch(year, month, day);
    Some(days * 86_400 + hour * 3_600 + min * 60 + sec)
}

fn digits(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (year >= 1970); Hinnant's
/// days_from_civil restricted to non-negative years.
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // 719_468 = days from 0000-03-01 to 1970-01-01.
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread;

    /// The upstream model most tests use.
    const M: &str = "gpt-x";

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Whether an attempt for `M` would be let in (a probe claimed here is
    /// released again at once).
    fn admits(b: &Breakers, a: SocketAddr, now: Instant) -> bool {
        b.try_acquire(a, M, now).is_admitted()
    }

    /// Claims the probe slot and keeps it.
    fn probe(b: &Breakers, a: SocketAddr, now: Instant) -> ProbeGuard {
        match b.try_acquire(a, M, now) {
            Admission::Probe(guard) => guard,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    /// Trips `a` open at `t0` with default config (5 consecutive failures).
    fn trip(b: &Breakers, a: SocketAddr, t0: Instant) {
        for _ in 0..5 {
            b.on_failure(a, FailureKind::Connect, None, t0);
        }
        assert_eq!(b.state(a, t0), CircuitState::Open);
    }

    #[test]
    fn opens_after_consecutive_failures() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        assert!(admits(&b, a, t0));
        for _ in 0..4 {
            b.on_failure(a, FailureKind::Timeout, None, t0);
        }
        assert_eq!(b.state(a, t0), CircuitState::Closed);
        assert!(admits(&b, a, t0));
        b.on_failure(a, FailureKind::Status5xx, None, t0);
        assert_eq!(b.state(a, t0), CircuitState::Open);
        assert!(!admits(&b, a, t0));
    }

    #[test]
    fn closed_admission_claims_nothing() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        assert!(matches!(b.try_acquire(a, M, t0), Admission::Admitted));
        b.on_failure(a, FailureKind::Connect, None, t0);
        assert!(matches!(b.try_acquire(a, M, t0), Admission::Admitted));
    }

    #[test]
    fn success_resets_consecutive_count() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        for _ in 0..4 {
            b.on_failure(a, FailureKind::Connect, None, t0);
        }
        b.on_success(a, t0);
        for _ in 0..4 {
            b.on_failure(a, FailureKind::Connect, None, t0);
        }
        // 8 of 9 failed, but below min_requests and never 5 in a row.
        assert_eq!(b.state(a, t0), CircuitState::Closed);
        b.on_failure(a, FailureKind::Connect, None, t0);
        assert_eq!(b.state(a, t0), CircuitState::Open);
    }

    fn rate_config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 100,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_on_failure_rate_only_above_min_requests() {
        let b = Breakers::new(rate_config());
        let a = addr(1);
        let t0 = Instant::now();
        // F S F S F S F S F: 5/9 > 0.5 but only 9 attempts.
        for i in 0..9 {
            if i % 2 == 0 {
                b.on_failure(a, FailureKind::Status5xx, None, t0);
            } else {
                b.on_success(a, t0);
            }
        }
        assert_eq!(b.state(a, t0), CircuitState::Closed);
        // 6/10 > 0.5 with 10 attempts.
        b.on_failure(a, FailureKind::Status5xx, None, t0);
        assert_eq!(b.state(a, t0), CircuitState::Open);
    }

    #[test]
    fn failure_rate_must_exceed_threshold() {
        let b = Breakers::new(rate_config());
        let a = addr(1);
        let t0 = Instant::now();
        for _ in 0..5 {
            b.on_success(a, t0);
        }
        for _ in 0..5 {
            b.on_failure(a, FailureKind::Timeout, None, t0);
        }
        // Exactly 0.5 is not above 0.5.
        assert_eq!(b.state(a, t0), CircuitState::Closed);
    }

    #[test]
    fn old_events_leave_the_window() {
        let b = Breakers::new(rate_config());
        let a = addr(1);
        let t0 = Instant::now();
        for _ in 0..6 {
            b.on_failure(a, FailureKind::Connect, None, t0);
        }
        for _ in 0..3 {
            b.on_success(a, t0);
        }
        // Had the first 9 stayed, this would be 7/10 and open.
        let later = t0 + secs(31);
        b.on_failure(a, FailureKind::Connect, None, later);
        assert_eq!(b.state(a, later), CircuitState::Closed);
        // Fresh events still count.
        for _ in 0..5 {
            b.on_success(a, later);
        }
        for _ in 0..4 {
            b.on_failure(a, FailureKind::Connect, None, later);
        }
        assert_eq!(b.state(a, later), CircuitState::Closed); // 5/10
        b.on_failure(a, FailureKind::Connect, None, later); // 6/11
        assert_eq!(b.state(a, later), CircuitState::Open);
    }

    #[test]
    fn server_error_retry_after_lengthens_the_opened_circuit() {
        let b = Breakers::new(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        let a = addr(1);
        let t0 = Instant::now();
        b.on_failure(a, FailureKind::Status5xx, Some(secs(120)), t0);
        assert_eq!(b.state(a, t0 + secs(119)), CircuitState::Open);
        assert_eq!(b.state(a, t0 + secs(120)), CircuitState::HalfOpen);
        // Capped by max_cooldown, and never shorter than cooldown.
        let c = addr(2);
        b.on_failure(c, FailureKind::Status5xx, Some(secs(3600)), t0);
        assert_eq!(b.state(c, t0 + secs(299)), CircuitState::Open);
        assert_eq!(b.state(c, t0 + secs(300)), CircuitState::HalfOpen);
        let d = addr(3);
        b.on_failure(d, FailureKind::Status5xx, Some(secs(5)), t0);
        assert_eq!(b.state(d, t0 + secs(29)), CircuitState::Open);
        assert_eq!(b.state(d, t0 + secs(30)), CircuitState::HalfOpen);
    }

    #[test]
    fn rate_limit_sets_only_that_model_aside() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        b.on_rate_limited(a, "x", Some(secs(30)), t0);
        assert!(!b.try_acquire(a, "x", t0).is_admitted());
        assert_eq!(b.set_aside(a, "x", t0 + secs(10)), Some(secs(20)));
        // The instance's circuit and its other models are untouched.
        assert_eq!(b.state(a, t0), CircuitState::Closed);
        assert!(matches!(b.try_acquire(a, "y", t0), Admission::Admitted));
        assert_eq!(b.set_aside(a, "y", t0), None);
        // And the model is not set aside on other instances.
        assert!(b.try_acquire(addr(2), "x", t0).is_admitted());
    }

    #[test]
    fn rate_limit_lasts_exactly_its_retry_after() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        // Shorter than the 30 s cooldown: one second means one second.
        b.on_rate_limited(a, M, Some(secs(1)), t0);
        assert!(!admits(&b, a, t0 + Duration::from_millis(999)));
        assert!(matches!(
            b.try_acquire(a, M, t0 + secs(1)),
            Admission::Admitted
        ));
        assert_eq!(b.set_aside(a, M, t0 + secs(1)), None);
    }

    #[test]
    fn rate_limit_retry_after_is_capped() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        b.on_rate_limited(a, M, Some(Duration::from_secs(u64::MAX)), t0);
        assert!(!admits(&b, a, t0 + secs(299)));
        assert!(admits(&b, a, t0 + secs(300)));
    }

    #[test]
    fn rate_limit_without_retry_after_sets_nothing_aside() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        b.on_rate_limited(a, M, None, t0);
        assert_eq!(b.set_aside(a, M, t0), None);
        assert!(admits(&b, a, t0));
        // "Retry after 0 s" asks for no pause at all.
        b.on_rate_limited(a, M, Some(Duration::ZERO), t0);
        assert!(admits(&b, a, t0));
    }

    #[test]
    fn rate_limits_never_trip_the_circuit() {
        let b = Breakers::new(BreakerConfig {
            consecutive_failures: 1,
            min_requests: 1,
            ..BreakerConfig::default()
        });
        let a = addr(1);
        let t0 = Instant::now();
        for _ in 0..20 {
            b.on_rate_limited(a, M, None, t0);
            b.on_failure(a, FailureKind::Status429, Some(secs(60)), t0);
        }
        assert_eq!(b.state(a, t0), CircuitState::Closed);
        assert_eq!(b.failures(a)[&FailureKind::Status429], 40);
    }

    #[test]
    fn later_rate_limit_lengthens_never_shortens() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        b.on_rate_limited(a, M, Some(secs(10)), t0);
        // A late, shorter answer from a request already in flight.
        b.on_rate_limited(a, M, Some(secs(1)), t0 + secs(1));
        assert!(!admits(&b, a, t0 + secs(9)));
        // A longer one.
        b.on_rate_limited(a, M, Some(secs(60)), t0 + secs(5));
        assert!(!admits(&b, a, t0 + secs(64)));
        assert!(admits(&b, a, t0 + secs(65)));
    }

    #[test]
    fn set_aside_list_is_bounded() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        for i in 0..(MAX_SET_ASIDE as u64 + 50) {
            b.on_rate_limited(a, &format!("m{i}"), Some(secs(100 + i)), t0);
        }
        let inner = b.get(a).expect("instance");
        assert_eq!(inner.lock_set_aside().len(), MAX_SET_ASIDE);
        // The ones that would have ended first made room.
        assert_eq!(b.set_aside(a, "m0", t0), None);
        assert!(b
            .set_aside(a, &format!("m{}", MAX_SET_ASIDE + 49), t0)
            .is_some());
        // Expired entries are pruned, and the lock-free check is off again.
        assert!(admits(&b, a, t0 + secs(1000)));
        assert!(inner.lock_set_aside().is_empty());
        assert!(!inner.any_set_aside.load(Ordering::Acquire));
    }

    #[test]
    fn set_aside_model_claims_no_probe() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        b.on_rate_limited(a, "x", Some(secs(60)), t0);
        assert!(!b.try_acquire(a, "x", t1).is_admitted());
        // The slot is still free for another model.
        let _probe = probe(&b, a, t1);
    }

    #[test]
    fn cooldown_then_single_probe_success_closes() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        assert!(!admits(&b, a, t0 + secs(29)));
        // A stale success while open does not close it.
        b.on_success(a, t0 + secs(29));
        assert_eq!(b.state(a, t0 + secs(29)), CircuitState::Open);

        let t1 = t0 + secs(30);
        assert_eq!(b.state(a, t1), CircuitState::HalfOpen);
        let guard = probe(&b, a, t1);
        assert!(!admits(&b, a, t1), "second caller refused");
        assert_eq!(b.state(a, t1), CircuitState::HalfOpen);
        b.on_success(a, t1);
        guard.settle();
        assert_eq!(b.state(a, t1), CircuitState::Closed);
        assert!(matches!(b.try_acquire(a, M, t1), Admission::Admitted));
        assert!(matches!(b.try_acquire(a, M, t1), Admission::Admitted));
        // Counters were reset: 4 failures do not reopen.
        for _ in 0..4 {
            b.on_failure(a, FailureKind::Connect, None, t1);
        }
        assert_eq!(b.state(a, t1), CircuitState::Closed);
    }

    #[test]
    fn probe_failure_reopens_for_another_cooldown() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let guard = probe(&b, a, t1);
        b.on_failure(a, FailureKind::Timeout, None, t1);
        guard.settle();
        assert_eq!(b.state(a, t1), CircuitState::Open);
        assert!(!admits(&b, a, t1 + secs(29)));
        assert!(admits(&b, a, t1 + secs(30)));
    }

    #[test]
    fn probe_rate_limited_frees_the_slot_for_other_models() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let guard = probe(&b, a, t1);
        // The probe's answer is a 429: it says nothing of the instance.
        b.on_rate_limited(a, M, Some(secs(90)), t1);
        drop(guard);
        assert_eq!(b.state(a, t1), CircuitState::HalfOpen);
        assert!(!admits(&b, a, t1));
        assert!(matches!(b.try_acquire(a, "other", t1), Admission::Probe(_)));
    }

    #[test]
    fn dropped_probe_guard_frees_the_slot() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let guard = probe(&b, a, t1);
        assert!(!admits(&b, a, t1));
        drop(guard);
        let again = probe(&b, a, t1);
        assert!(!admits(&b, a, t1), "and claimed again");
        drop(again);
        assert_eq!(b.state(a, t1), CircuitState::HalfOpen);
    }

    #[test]
    fn settled_probe_guard_releases_nothing() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        // Settled without an outcome reaching the breaker, the slot stays
        // taken: settle only disarms the guard.
        probe(&b, a, t1).settle();
        assert!(!admits(&b, a, t1));
    }

    #[test]
    fn a_stale_guard_cannot_free_a_newer_probe() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let old = probe(&b, a, t1);
        // The backstop frees the slot and someone else claims it...
        let t2 = t1 + PROBE_TIMEOUT;
        let new = probe(&b, a, t2);
        // ...then the first probe's guard goes: the newer probe keeps its slot.
        drop(old);
        assert!(!admits(&b, a, t2));
        drop(new);
        assert!(admits(&b, a, t2));
    }

    #[test]
    fn dropped_guard_after_the_outcome_is_harmless() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let guard = probe(&b, a, t1);
        b.on_failure(a, FailureKind::Connect, None, t1);
        drop(guard);
        assert_eq!(b.state(a, t1), CircuitState::Open);
        let t2 = t1 + secs(30);
        let guard = probe(&b, a, t2);
        b.on_success(a, t2);
        drop(guard);
        assert_eq!(b.state(a, t2), CircuitState::Closed);
    }

    #[test]
    fn unreported_probe_expires_after_probe_timeout() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let _lost = probe(&b, a, t1);
        assert!(!admits(&b, a, t1 + PROBE_TIMEOUT - secs(1)));
        let _backstop = probe(&b, a, t1 + PROBE_TIMEOUT);
        assert!(!admits(&b, a, t1 + PROBE_TIMEOUT), "and claimed again");
    }

    #[test]
    fn instances_are_independent() {
        let b = Breakers::new(BreakerConfig::default());
        let (a, c) = (addr(1), addr(2));
        let t0 = Instant::now();
        trip(&b, a, t0);
        assert_eq!(b.state(c, t0), CircuitState::Closed);
        assert!(admits(&b, c, t0));
        assert!(!admits(&b, a, t0));
        assert_eq!(b.failures(c)[&FailureKind::Connect], 0);
    }

    #[test]
    fn failures_counted_by_kind() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now();
        b.on_failure(a, FailureKind::Connect, None, t0);
        b.on_failure(a, FailureKind::Timeout, None, t0);
        b.on_failure(a, FailureKind::Timeout, None, t0);
        b.on_rate_limited(a, M, Some(secs(60)), t0);
        trip(&b, a, t0);
        // Counted even while open.
        b.on_failure(a, FailureKind::Status5xx, None, t0);
        let f = b.failures(a);
        assert_eq!(f.len(), 4);
        assert_eq!(f[&FailureKind::Connect], 6);
        assert_eq!(f[&FailureKind::Timeout], 2);
        assert_eq!(f[&FailureKind::Status5xx], 1);
        assert_eq!(f[&FailureKind::Status429], 1);
    }

    #[test]
    fn concurrent_probe_is_exclusive() {
        let b = Arc::new(Breakers::new(BreakerConfig::default()));
        let a = addr(1);
        let t0 = Instant::now();
        trip(&b, a, t0);
        let t1 = t0 + secs(30);
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (b, barrier) = (Arc::clone(&b), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    // Guards are returned, not dropped, so none frees the slot.
                    b.try_acquire(a, M, t1)
                })
            })
            .collect();
        let admissions: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let probes = admissions
            .iter()
            .filter(|a| matches!(a, Admission::Probe(_)))
            .count();
        assert_eq!(probes, 1);
        assert_eq!(admissions.iter().filter(|a| a.is_admitted()).count(), 1);
    }

    #[test]
    fn concurrency_smoke() {
        let b = Arc::new(Breakers::new(BreakerConfig::default()));
        let a = addr(1);
        let t0 = Instant::now();
        let threads = 8u64;
        let iters = 2_000u64;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let b = Arc::clone(&b);
                thread::spawn(move || {
                    let mut failed = 0u64;
                    for i in 0..iters {
                        // Instants deliberately interleave out of order
                        // across threads.
                        let now = t0 + Duration::from_millis(i * 50 + t * 7);
                        let _ = b.state(a, now);
                        let model = if t % 2 == 0 { M } else { "other" };
                        let admission = b.try_acquire(a, model, now);
                        if admission.is_admitted() {
                            match (i + t) % 4 {
                                0 => b.on_success(a, now),
                                // Abandoned: the guard (if any) drops below.
                                1 => {}
                                2 => {
                                    b.on_rate_limited(a, model, Some(secs(1)), now);
                                    failed += 1;
                                }
                                _ => {
                                    b.on_failure(a, FailureKind::Timeout, None, now);
                                    failed += 1;
                                }
                            }
                        }
                        drop(admission);
                    }
                    failed
                })
            })
            .collect();
        let expected: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let counted: u64 = b.failures(a).values().sum();
        assert_eq!(counted, expected);

        // Still a working state machine afterwards, whatever state the race
        // left it in: failures open it from any state.
        let end = t0 + Duration::from_millis(iters * 50) + b.config.max_cooldown;
        for _ in 0..5 {
            b.on_failure(a, FailureKind::Connect, None, end);
        }
        let end = end + b.config.cooldown;
        // Whether it reopened from HalfOpen or tripped from Closed, it is out
        // for a cooldown, then lets exactly one probe through.
        assert!(!admits(&b, a, end - Duration::from_millis(1)));
        assert_eq!(b.state(a, end), CircuitState::HalfOpen);
        let guard = probe(&b, a, end);
        assert!(!admits(&b, a, end));
        b.on_success(a, end);
        guard.settle();
        assert_eq!(b.state(a, end), CircuitState::Closed);
        assert!(admits(&b, a, end));
    }

    #[test]
    fn out_of_order_instants_do_not_panic() {
        let b = Breakers::new(BreakerConfig::default());
        let a = addr(1);
        let t0 = Instant::now() + secs(100);
        trip(&b, a, t0);
        let earlier = t0 - secs(50);
        assert_eq!(b.state(a, earlier), CircuitState::Open);
        b.on_failure(a, FailureKind::Status5xx, Some(secs(10)), earlier);
        b.on_rate_limited(a, M, Some(secs(10)), t0);
        assert!(!admits(&b, a, earlier));
        b.on_rate_limited(a, M, Some(secs(20)), earlier);
        b.on_success(a, earlier);
        assert_eq!(b.state(a, t0 + secs(30)), CircuitState::HalfOpen);
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("120", 0), Some(secs(120)));
        assert_eq!(parse_retry_after(" 7 ", 0), Some(secs(7)));
        assert_eq!(parse_retry_after("0", 0), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", 0),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_date_in_future() {
        // 2015-10-21T07:28:00Z
        let at = 1_445_412_480;
        let v = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(v, at - 60), Some(secs(60)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 0),
            Some(secs(10))
        );
        // Leap day and year boundary.
        assert_eq!(
            parse_imf_fixdate("Thu, 29 Feb 2024 12:00:00 GMT"),
            Some(1_709_208_000)
        );
        assert_eq!(
            parse_imf_fixdate("Fri, 31 Dec 1999 23:59:59 GMT"),
            Some(946_684_799)
        );
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
    }

    #[test]
    fn retry_after_date_in_past_or_now() {
        let at = 1_445_412_480;
        let v = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(v, at), None);
        assert_eq!(parse_retry_after(v, at + 1), None);
        assert_eq!(parse_retry_after("Mon, 01 Jan 1900 00:00:00 GMT", 0), None);
    }

    #[test]
    fn retry_after_garbage() {
        for v in [
            "",
            "   ",
            "-5",
            "+5",
            "1.5",
            "soon",
            "12 s",
            "Wed, 21 Oct 2015 07:28:00 UTC",
            "Wed, 21 Oct 2015 07:28:00",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 29 Feb 2015 07:28:00 GMT",
            "Wed, 21 Foo 2015 07:28:00 GMT",
            "Xyz, 21 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 24:00:00 GMT",
            "Wed, 21 Oct 2015 07:60:00 GMT",
            "Wed,21 Oct 2015 07:28:00 GMT ",
            "Wed, 2a Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
            "Wed, 21 Oct 2015 07:28:00 GMT\u{e9}",
        ] {
            assert_eq!(parse_retry_after(v, 0), None, "{v:?}");
        }
    }
}
