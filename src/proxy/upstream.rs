//! The upstream leg: choosing an instance, writing the provider's request, and deciding retries.

use super::ctx::RequestCtx;
use super::headers;
use crate::config::InstanceUrl;
use crate::plan::PlannedCall;
use crate::providers::openai::encode_component;
use crate::providers::AuthPlacement;
use crate::upstream::balance::BalanceMode;
use crate::upstream::breaker::{
    parse_retry_after, Admission, CircuitState, FailureKind, ProbeGuard,
};
use bytes::Bytes;
use http::header;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::Backend;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client headers that never reach an upstream: credentials (the gateway's key replaces them),
/// account selectors, framing (the gateway sets its own), hop-by-hop fields, and
/// `accept-encoding` (the response filters need plain bytes).
fn is_stripped(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "cookie"
            | "openai-organization"
            | "openai-project"
            | "anthropic-version"
            | "host"
            | "content-length"
            | "transfer-encoding"
            | "accept-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
    )
}

/// Picks an instance for the next attempt: healthy (active checks), circuit not open (passive
/// health), the call's model not set aside there after a 429, not failed for this request, and
/// not already serving it in a hedged leg if another is free. Attempts after the first wait an
/// exponential backoff with jitter. Every attempt takes one upstream call from the request's
/// budget (`max_upstream_calls`, over all its legs), given back if no instance could be picked.
///
/// A half-open instance's probe slot, once claimed, is held in `ctx.probe` for the attempt: an
/// early return here, or the attempt's end without a reported outcome, drops it and frees the slot.
pub async fn select_peer(call: &PlannedCall, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let model = &call.model;
    let provider = &model.provider;
    // The previous attempt is over; had its probe's outcome been reported, the guard is gone.
    ctx.probe = None;
    if ctx.attempts > 0 {
        tokio::time::sleep(backoff(provider.retry_backoff, ctx.attempts)).await;
    }
    let now = Instant::now();
    let remaining = time_left(
        ctx.started.unwrap_or(now),
        model.timeout,
        call.budget.deadline,
        now,
    );
    if remaining.is_zero() {
        return Error::e_explain(ErrorType::ReadTimedout, "no time left for another attempt");
    }
    if !call.budget.take_call() {
        // Only a hedged leg racing another for the last call gets here: legs start and retries
        // are decided only while calls are left.
        return Error::e_explain(
            ErrorType::HTTPStatus(503),
            format!(
                "The request made the {} upstream calls it may (max_upstream_calls)",
                call.budget.max_calls
            ),
        );
    }
    let (backend, instance, addr, probe) = match pick(call, ctx, now) {
        Ok(picked) => picked,
        Err(e) => {
            call.budget.return_call();
            return Err(e);
        }
    };
    let sni = if instance.tls {
        instance.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, instance.tls, sni);
    let options = &mut peer.options;
    options.connection_timeout = Some(model.connect_timeout.min(remaining));
    options.total_connection_timeout = Some(model.connect_timeout.saturating_mul(2).min(remaining));
    // Streams: the longest gap between chunks. Whole answers: what is left of the deadline.
    options.read_timeout = Some(if call.stream {
        model.stream_idle_timeout
    } else {
        remaining
    });
    options.write_timeout = Some(Duration::from_secs(60));
    options.idle_timeout = Some(Duration::from_secs(90));
    lock(&call.instances_in_use).push(backend.addr.clone());
    ctx.inflight = Some(provider.load.start(addr));
    ctx.attempt_started = Some(now);
    ctx.attempts += 1;
    ctx.backend = Some(backend);
    ctx.probe = probe;
    Ok(Box::new(peer))
}

/// The instance for an attempt, with its URL, its address, and its probe slot when its circuit
/// is half-open.
fn pick(
    call: &PlannedCall,
    ctx: &RequestCtx,
    now: Instant,
) -> Result<(
    Backend,
    Arc<InstanceUrl>,
    std::net::SocketAddr,
    Option<ProbeGuard>,
)> {
    let provider = &call.model.provider;
    let (backend, probe) = match provider.balance {
        BalanceMode::RoundRobin => round_robin_pick(call, ctx, now),
        mode => load_aware_pick(call, ctx, mode, now),
    }
    .ok_or_else(|| {
        Error::explain(
            ErrorType::HTTPStatus(503),
            format!("No instance of provider `{}` is available", provider.name),
        )
    })?;
    let instance = backend
        .ext
        .get::<Arc<InstanceUrl>>()
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "backend without its URL"))?;
    let Some(addr) = inet(&backend.addr) else {
        return Error::e_explain(
            ErrorType::InternalError,
            "unix socket upstreams are not supported",
        );
    };
    Ok((backend, instance, addr, probe))
}

/// What is left for the next attempt: until the leg's own deadline, `started` plus its model's
/// `timeout` (each leg of the dispatcher is a subrequest with a context of its own, so `started`
/// is when that leg began), or the request's total deadline, whichever comes first.
fn time_left(
    started: Instant,
    timeout: Duration,
    total_deadline: Instant,
    now: Instant,
) -> Duration {
    let leg_deadline = started.checked_add(timeout).unwrap_or(total_deadline);
    leg_deadline
        .min(total_deadline)
        .saturating_duration_since(now)
}

/// An instance chosen for an attempt, with its probe slot when its circuit is half-open.
type Pick = (Backend, Option<ProbeGuard>);

/// Whether `b` may take this attempt, circuit aside.
fn eligible(
    b: &Backend,
    healthy: bool,
    failed: &[SocketAddr],
    in_use: Option<&[SocketAddr]>,
) -> bool {
    healthy && !failed.contains(&b.addr) && !in_use.is_some_and(|busy| busy.contains(&b.addr))
}

/// Pingora's weighted round robin over eligible instances whose circuit lets the attempt in.
/// Instances already serving this request (hedges) are avoided while others remain.
fn round_robin_pick(call: &PlannedCall, ctx: &RequestCtx, now: Instant) -> Option<Pick> {
    let provider = &call.model.provider;
    let model = call.model.upstream_model.as_str();
    let in_use = lock(&call.instances_in_use).clone();
    // Only the accepted instance's admission can be a probe: selection stops there.
    let probe = std::cell::Cell::new(None);
    let pick = |avoid: Option<&[SocketAddr]>| {
        provider.upstreams.select_with(b"", 256, |b, healthy| {
            eligible(b, healthy, &ctx.failed_backends, avoid)
                && inet(&b.addr).is_some_and(|a| {
                    match provider.breakers.try_acquire(a, model, now) {
                        Admission::Refused => false,
                        Admission::Admitted => true,
                        Admission::Probe(guard) => {
                            probe.set(Some(guard));
                            true
                        }
                    }
                })
        })
    };
    let backend = pick(Some(&in_use)).or_else(|| pick(None))?;
    Some((backend, probe.into_inner()))
}

/// The least loaded eligible instance (`least_inflight`, `ewma`).
fn load_aware_pick(
    call: &PlannedCall,
    ctx: &RequestCtx,
    mode: BalanceMode,
    now: Instant,
) -> Option<Pick> {
    let provider = &call.model.provider;
    let model = call.model.upstream_model.as_str();
    let backends = provider.upstreams.backends();
    let all = backends.get_backend();
    let in_use = lock(&call.instances_in_use).clone();
    for avoid in [Some(&in_use[..]), None] {
        let mut candidates: Vec<(std::net::SocketAddr, usize)> = all
            .iter()
            .filter(|b| eligible(b, backends.ready(b), &ctx.failed_backends, avoid))
            .filter_map(|b| inet(&b.addr).map(|a| (a, b.weight)))
            .filter(|(a, _)| provider.breakers.state(*a, now) != CircuitState::Open)
            .collect();
        while let Some(best) = provider.load.choose(mode, &candidates) {
            let probe = match provider.breakers.try_acquire(best, model, now) {
                Admission::Refused => {
                    candidates.retain(|(a, _)| *a != best);
                    continue;
                }
                Admission::Admitted => None,
                Admission::Probe(guard) => Some(guard),
            };
            let backend = all.iter().find(|b| inet(&b.addr) == Some(best)).cloned()?;
            return Some((backend, probe));
        }
    }
    None
}

fn inet(addr: &SocketAddr) -> Option<std::net::SocketAddr> {
    match addr {
        SocketAddr::Inet(a) => Some(*a),
        _ => None,
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `base * 2^(attempt-1)`, scaled by a random factor in [0.5, 1.5), capped at 5 s.
fn backoff(base: Duration, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    exp.mul_f64(jitter).min(Duration::from_secs(5))
}

/// Rewrites the client's request header into the provider's.
pub fn write_request_header(
    req: &mut RequestHeader,
    call: &PlannedCall,
    endpoint: &InstanceUrl,
) -> Result<()> {
    let provider = &call.model.provider;
    headers::strip(req, is_stripped);
    let mut path = String::with_capacity(endpoint.base_path.len() + call.path.len() + 64);
    path.push_str(&endpoint.base_path);
    path.push_str(&call.path);
    if let AuthPlacement::Query { name } = &provider.auth {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&encode_component(name));
        path.push('=');
        path.push_str(&encode_component(provider.credential.expose()));
    }
    req.set_method(http::Method::POST);
    req.set_uri(
        http::Uri::try_from(path).or_err(ErrorType::InternalError, "invalid upstream path")?,
    );
    req.insert_header(header::HOST, endpoint.authority())?;
    req.insert_header(header::CONTENT_TYPE, "application/json")?;
    req.insert_header(header::CONTENT_LENGTH, call.body.len())?;
    if call.stream {
        req.insert_header(header::ACCEPT, "text/event-stream")?;
    }
    if let AuthPlacement::Header { name, prefix } = &provider.auth {
        let mut value =
            http::HeaderValue::try_from(format!("{prefix}{}", provider.credential.expose()))
                .or_err(
                    ErrorType::InternalError,
                    "credential is not a valid header value",
                )?;
        value.set_sensitive(true);
        req.insert_header(name.clone(), value)?;
    }
    for (name, value) in &provider.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// The body Pingora sends upstream: the planned bytes at the end of the (empty) client body,
/// on every attempt.
pub fn fill_body(call: &PlannedCall, body: &mut Option<Bytes>, end_of_stream: bool) {
    *body = Some(if end_of_stream {
        call.body.clone()
    } else {
        Bytes::new()
    });
}

/// Whether another attempt may follow this one.
fn may_retry(call: &PlannedCall, ctx: &RequestCtx) -> bool {
    let provider = &call.model.provider;
    retry_allowed(
        ctx.attempts,
        provider.max_attempts,
        provider.endpoint_count,
        ctx.failed_backends.len(),
        call.budget.calls_left(),
    )
}

/// Another attempt needs attempts left for the provider (`max_attempts`), an instance that has not
/// failed this request, and an upstream call left in the request's budget (`max_upstream_calls`,
/// shared by all its legs). When one is missing, the last failure is the answer.
fn retry_allowed(
    attempts: u32,
    max_attempts: u32,
    instances: usize,
    failed_instances: usize,
    calls_left: u32,
) -> bool {
    attempts < max_attempts && instances > failed_instances && calls_left > 0
}

/// Marks the current attempt's instance failed, for this request and its circuit breaker.
pub fn record_failure(
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    kind: FailureKind,
    retry_after: Option<Duration>,
) {
    if let Some(b) = ctx.backend.take() {
        if let Some(addr) = inet(&b.addr) {
            call.model
                .provider
                .breakers
                .on_failure(addr, kind, retry_after, Instant::now());
        }
        ctx.failed_backends.push(b.addr);
    }
    if let Some(probe) = ctx.probe.take() {
        probe.settle();
    }
}

/// A 429: the call's model is set aside on the attempt's instance (which this request does not
/// try again); the instance's circuit is left alone.
fn record_rate_limit(call: &PlannedCall, ctx: &mut RequestCtx, retry_after: Option<Duration>) {
    if let Some(b) = ctx.backend.take() {
        if let Some(addr) = inet(&b.addr) {
            call.model.provider.breakers.on_rate_limited(
                addr,
                &call.model.upstream_model,
                retry_after,
                Instant::now(),
            );
        }
        ctx.failed_backends.push(b.addr);
    }
    // Says nothing of the instance: a probe that got it frees the slot for the next request.
    ctx.probe = None;
}

pub fn record_success(call: &PlannedCall, ctx: &mut RequestCtx) {
    if let Some(addr) = ctx.backend.as_ref().and_then(|b| inet(&b.addr)) {
        let now = Instant::now();
        let provider = &call.model.provider;
        provider.breakers.on_success(addr, now);
        if let Some(started) = ctx.attempt_started {
            provider
                .load
                .observe_latency(addr, now.saturating_duration_since(started));
        }
    }
    if let Some(probe) = ctx.probe.take() {
        probe.settle();
    }
}

fn failure_kind(e: &Error) -> FailureKind {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            FailureKind::Timeout
        }
        _ => FailureKind::Connect,
    }
}

/// A failed connection: retry on another instance while attempts remain.
pub fn on_connect_failure(
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    record_failure(call, ctx, failure_kind(&e), None);
    e.set_retry(may_retry(call, ctx));
    e
}

/// An error after connecting: a reused pooled connection that the upstream had closed is retried
/// (nothing was processed); a timeout or reset before the response started is retried on another
/// instance; nothing is retried once the response started.
pub fn on_proxy_error(
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    response_started: bool,
    client_reused: bool,
    mut e: Box<Error>,
) -> Box<Error> {
    if response_started {
        e.set_retry(false);
        return e;
    }
    if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
        // Raised by the response filter to retry a 5xx/429; already decided and recorded.
        return e;
    }
    if *e.esource() != pingora_error::ErrorSource::Upstream {
        e.set_retry(false);
        return e;
    }
    e.retry.decide_reuse(client_reused);
    if !e.retry() {
        record_failure(call, ctx, failure_kind(&e), None);
        e.set_retry(may_retry(call, ctx));
    }
    e
}

/// An upstream answer's status: 5xx and 429 are retried on another instance while attempts
/// remain (an `Err` here aborts the attempt before any byte reaches the client). A 5xx counts
/// against the instance's circuit; a 429 sets the call's model aside on that instance.
pub fn on_response_status(
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    resp: &pingora_http::ResponseHeader,
) -> Result<()> {
    let status = resp.status.as_u16();
    if status != 429 && !(500..=599).contains(&status) {
        record_success(call, ctx);
        return Ok(());
    }
    let retry_after = resp
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, crate::ids::unix_now()));
    if status == 429 {
        record_rate_limit(call, ctx, retry_after);
    } else {
        record_failure(call, ctx, FailureKind::Status5xx, retry_after);
    }
    if !may_retry(call, ctx) {
        return Ok(());
    }
    let mut e = Error::explain(
        ErrorType::HTTPStatus(status),
        format!("status {status}; retrying on another instance"),
    );
    e.set_retry(true);
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_max_attempts_failed_instances_or_the_call_budget() {
        assert!(retry_allowed(1, 3, 2, 1, 5));
        assert!(!retry_allowed(3, 3, 5, 1, 5), "max_attempts reached");
        assert!(!retry_allowed(1, 3, 2, 2, 5), "every instance failed");
        assert!(!retry_allowed(1, 3, 2, 1, 0), "no upstream call left");
    }

    #[test]
    fn an_attempt_gets_what_is_left_of_its_leg_within_the_total() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // The leg's own timeout, counted from the leg's start.
        assert_eq!(time_left(t0, s(10), t0 + s(100), t0 + s(4)), s(6));
        // A fallback leg started later gets its own full timeout.
        assert_eq!(time_left(t0 + s(10), s(10), t0 + s(100), t0 + s(10)), s(10));
        // The request's total cuts it short.
        assert_eq!(time_left(t0, s(10), t0 + s(5), t0 + s(1)), s(4));
        // Nothing left: zero, never an underflow.
        assert_eq!(
            time_left(t0, s(10), t0 + s(100), t0 + s(11)),
            Duration::ZERO
        );
        assert_eq!(time_left(t0, s(10), t0 + s(5), t0 + s(6)), Duration::ZERO);
        // A timeout too large to add leaves the total in charge.
        assert_eq!(time_left(t0, Duration::MAX, t0 + s(5), t0), s(5));
    }
}
