//! The upstream leg: choosing an instance, writing the provider's request, and deciding retries.

use super::ctx::RequestCtx;
use super::headers;
use crate::config::InstanceUrl;
use crate::error::{ErrorCode, GatewayError};
use crate::header_policy;
use crate::plan::PlannedCall;
use crate::providers::AuthPlacement;
use crate::upstream::breaker::{parse_retry_after, FailureKind, ProbeGuard};
use crate::upstream::budget;
use crate::upstream::credentials::{self, AttemptKey, NoKey};
use crate::upstream::report;
use crate::upstream::retry::{self, StatusClass};
use crate::upstream::select::{self, inet};
use bytes::Bytes;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::Backend;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        tokio::time::sleep(retry::backoff(provider.retry_backoff, ctx.attempts)).await;
    }
    if crate::drain::DRAIN.is_grace_over() {
        // No attempt, and so no retry, once a shutdown's grace period has ended.
        return Err(shutting_down_error());
    }
    let now = Instant::now();
    let remaining = budget::time_left(
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
    // The key first: with none to send there is no attempt, and no probe slot to give back.
    ctx.key = match provider.credentials.pick(ctx.refused_keys, now) {
        Ok(key) => key,
        Err(no_key) => {
            call.budget.return_call();
            return Err(no_key_error(call, no_key));
        }
    };
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
    // Streams: the longest gap between chunks, and never past `edge.max_stream_duration`.
    // Whole answers: what is left of the deadline.
    options.read_timeout = Some(if call.stream {
        let stream_left = call
            .registry
            .edge
            .max_stream_duration
            .saturating_sub(now.saturating_duration_since(ctx.started.unwrap_or(now)));
        model
            .stream_idle_timeout
            .min(stream_left.max(Duration::from_millis(1)))
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
    let in_use = lock(&call.instances_in_use).clone();
    let (backend, probe) = select::pick(
        provider,
        &call.model.upstream_model,
        &ctx.failed_backends,
        &in_use,
        now,
    )
    .ok_or_else(|| no_instance(call, ctx, now))?;
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

/// Why no instance could take the attempt: a 429 (with `Retry-After`) when the provider has the
/// model set aside everywhere after its own 429s, else a 503.
fn no_instance(call: &PlannedCall, ctx: &RequestCtx, now: Instant) -> Box<Error> {
    let model = &call.model;
    let provider = &model.provider;
    match select::rate_limited_for(provider, &model.upstream_model, &ctx.failed_backends, now) {
        Some(wait) => {
            // Whole seconds, rounded up: never sooner than the provider asked.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let message = format!(
                "Model `{}` is rate limited by provider `{}`; retry after {seconds} s",
                model.name, provider.name
            );
            let refusal = GatewayError::new(429, message.clone())
                .with_code(ErrorCode::RateLimitExceeded)
                .with_retry_after(seconds);
            Error::because(ErrorType::HTTPStatus(429), message, refusal)
        }
        None => Error::explain(
            ErrorType::HTTPStatus(503),
            format!("No instance of provider `{}` is available", provider.name),
        ),
    }
}

/// Why no key could go with the attempt: every key set aside after the upstream refused it
/// answers as a model set aside everywhere does (a 429 with `Retry-After`, so `rate_limited`
/// fallbacks apply); no valid key at all (a key command failing past its token's lifetime) is
/// a 503.
/// The end of a shutdown's grace period, as a refusal the client reads as it is.
pub fn shutting_down_error() -> Box<Error> {
    let refusal = crate::drain::shutting_down();
    let message = refusal.message.clone();
    Error::because(ErrorType::HTTPStatus(503), message, refusal)
}

fn no_key_error(call: &PlannedCall, no_key: NoKey) -> Box<Error> {
    let provider = &call.model.provider;
    match no_key {
        NoKey::SetAside(wait) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let message = format!(
                "Every key of provider `{}` is set aside after 401/429 answers; retry after \
                 {seconds} s",
                provider.name
            );
            let refusal = GatewayError::new(429, message.clone())
                .with_code(ErrorCode::RateLimitExceeded)
                .with_retry_after(seconds);
            Error::because(ErrorType::HTTPStatus(429), message, refusal)
        }
        NoKey::Unavailable => Error::explain(
            ErrorType::HTTPStatus(503),
            format!("Provider `{}` has no valid key", provider.name),
        ),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the client's request came from, as the gateway saw it.
pub struct ClientOrigin {
    pub ip: Option<std::net::IpAddr>,
    pub tls: bool,
}

/// Rewrites the client's request header into the provider's. Which client headers stay is
/// `header_policy`'s rule; `x-forwarded-for` (unless the provider has
/// `forward_client_address: false`) and `-proto` are the gateway's own, from the connection.
pub fn write_request_header(
    req: &mut RequestHeader,
    call: &PlannedCall,
    endpoint: &InstanceUrl,
    key: Option<&AttemptKey>,
    origin: &ClientOrigin,
) -> Result<()> {
    let provider = &call.model.provider;
    headers::strip(req, |name| {
        !header_policy::forwards(name, &provider.forward_headers)
    });
    if let Some(ip) = origin.ip.filter(|_| provider.forward_client_address) {
        req.insert_header("x-forwarded-for", ip.to_string())?;
    }
    req.insert_header(
        "x-forwarded-proto",
        if origin.tls { "https" } else { "http" },
    )?;
    let mut path = String::with_capacity(endpoint.base_path.len() + call.path.len() + 64);
    path.push_str(&endpoint.base_path);
    path.push_str(&call.path);
    if let Some(pair) = key.and_then(|k| k.key.query()) {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(pair);
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
    if let (AuthPlacement::Header { name, .. }, Some(value)) =
        (&provider.auth, key.and_then(|k| k.key.header()))
    {
        // Rendered when the key was loaded: a reference count, not a copy.
        req.insert_header(name.clone(), value.clone())?;
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
    retry::retry_allowed(
        ctx.attempts,
        provider.max_attempts,
        provider.endpoint_count,
        ctx.failed_backends.len(),
        call.budget.calls_left(),
    )
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

/// A failed connection: retry on another instance while attempts remain. The error Pingora logs
/// (once per attempt) becomes one line naming the instance and the cause.
pub fn on_connect_failure(call: &PlannedCall, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
    let provider = &call.model.provider.name;
    let mut e = report::connect_failure(&e, provider, ctx.backend.as_ref());
    record_failure(call, ctx, retry::failure_kind(e.etype()), None);
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
        record_failure(call, ctx, retry::failure_kind(e.etype()), None);
        e.set_retry(may_retry(call, ctx));
    }
    e
}

/// A 401 or 429 with several keys: the key is refused, not the instance nor the model. The key
/// is set aside (for everyone) and the attempt retried with another key while the retry policy
/// allows; the instance's circuit and the model's place on it are left alone.
fn on_key_refused(
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    resp: &pingora_http::ResponseHeader,
) -> Result<()> {
    let status = resp.status.as_u16();
    let now = Instant::now();
    let retry_after = resp
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, crate::ids::unix_now()));
    let credentials = &call.model.provider.credentials;
    if let Some(key) = ctx.key.as_ref() {
        credentials.set_aside(key.index, status, retry_after, now);
        credentials::mark_tried(&mut ctx.refused_keys, key.index);
    }
    // The instance answered: a probe it carried settles nothing, and frees the slot.
    ctx.probe = None;
    if let Some(addr) = ctx.backend.as_ref().and_then(|b| inet(&b.addr)) {
        if status == 429 {
            // Counted for the metrics only: a rate limit is no sign of a broken instance.
            let breakers = &call.model.provider.breakers;
            breakers.on_failure(addr, FailureKind::Status429, None, now);
        }
    }
    if !(may_retry(call, ctx) && credentials.another_key(ctx.refused_keys, now)) {
        return Ok(());
    }
    let mut e = Error::explain(
        ErrorType::HTTPStatus(status),
        format!("status {status}; retrying with another key"),
    );
    e.set_retry(true);
    Err(e)
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
    if retry::refuses_key(status) && call.model.provider.credentials.rotates() {
        return on_key_refused(call, ctx, resp);
    }
    let class = retry::classify_status(status);
    if class == StatusClass::Answer {
        record_success(call, ctx);
        return Ok(());
    }
    let retry_after = resp
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, crate::ids::unix_now()));
    if class == StatusClass::RateLimited {
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
