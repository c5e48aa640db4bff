//! The client's side of a request: read the body (bounded), route it by `model`, plan the
//! upstream call, and hand it to the dispatcher, which runs it as Pingora subrequests.
//!
//! Why a subrequest: routing needs the body, so it is read here, before `upstream_peer`; Pingora
//! forwards an already-read body only from its 64 KiB retry buffer. The subrequest has no body of
//! its own, so on every attempt Pingora hands `request_body_filter` an empty end of body, where the
//! planned bytes (of any size) are put in. Retries to other instances re-send them the same way.

use super::cache_hook;
use super::ctx::RequestCtx;
use super::dispatch;
use super::fanout;
use super::local_response;
use crate::access;
use crate::api::{self, ClientEndpoint, ClientProtocol, ClientRequest};
use crate::buffers::{Exhausted, Held};
use crate::cache::CacheFill;
use crate::error::ErrorCode;
use crate::error::GatewayError;
use crate::experiments::UserIdentity;
use crate::limits;
use crate::plan::PlannedCall;
use crate::registry::Registry;
use crate::upstream::retry;
use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;
use std::sync::Arc;

/// Handles a client request end to end. Always answers the client.
/// What [`handle`] did with the request.
pub enum Handled {
    /// The client has its answer.
    Answered,
    /// Proxy the planned call in this session (`ctx.call`).
    ProxyHere,
}

/// Handles a client request: answers it, or leaves the planned call for this session to proxy.
///
/// A request is proxied in its own session (Pingora's plain path, the fastest) when its body
/// fits Pingora's retry buffer, which then replays it through `request_body_filter` on every
/// attempt, and its model needs no dispatcher (no fallbacks, no hedging). Otherwise the
/// dispatcher runs it as subrequests.
pub async fn handle(
    session: &mut Session,
    registry: Arc<Registry>,
    ctx: &mut RequestCtx,
) -> Handled {
    // A client that stops reading an answer is let go after this, which ends its upstream call.
    session.set_write_timeout(Some(registry.edge.write_timeout));
    let req = session.req_header();
    let endpoint = match api::endpoint_for(&req.method, req.uri.path()) {
        Ok(e) => e,
        Err(e) => {
            let protocol = api::protocol_of_path(req.uri.path());
            reject(session, &e, protocol).await;
            return Handled::Answered;
        }
    };
    let protocol = endpoint.protocol();
    let key = if registry.keys.is_empty() {
        None
    } else {
        match registry.keys.authenticate(session.req_header()) {
            Ok(key) => Some(key),
            Err(e) => {
                reject(session, &e, protocol).await;
                return Handled::Answered;
            }
        }
    };
    ctx.observe.authenticated(&registry, key);
    if endpoint == ClientEndpoint::Models {
        let body = key.map_or(&registry.model_list, |k| &k.model_list).clone();
        if let Err(e) = local_response::write_json(session, 200, body, None).await {
            log::debug!("could not send model list: {e}");
        }
        return Handled::Answered;
    }
    // Before the first read, so that small bodies can be replayed on retries.
    session.as_downstream_mut().enable_retry_buffering();
    let body = match read_body(
        session,
        registry.max_request_bytes,
        registry.edge.body_timeout,
        &mut ctx.held,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            reject(session, &e, protocol).await;
            return Handled::Answered;
        }
    };
    ctx.observe.body_read();
    if matches!(endpoint, ClientEndpoint::Compare | ClientEndpoint::Batch) {
        let run = if endpoint == ClientEndpoint::Compare {
            fanout::compare(session, &registry, key, &body).await
        } else {
            fanout::batch(session, &registry, key, &body).await
        };
        if let Err(e) = run {
            reject(session, &e, protocol).await;
        }
        return Handled::Answered;
    }
    let request = match ClientRequest::read(endpoint, &body) {
        Ok(r) => r,
        Err(e) => {
            reject(session, &e, protocol).await;
            return Handled::Answered;
        }
    };
    let (admission, mut call) = match admit_and_plan(session, &registry, key, &request).await {
        Ok(planned) => planned,
        Err(e) => {
            ctx.observe.named_model(&registry, &request.envelope.model);
            reject(session, &e, protocol).await;
            return Handled::Answered;
        }
    };
    // Counted under the model that serves it (an experiment's arm, when it named one).
    ctx.observe.planned(&call.model);
    // Held until the request ends: its concurrency slots, and the settling of its tokens.
    ctx.admission = admission;
    if cache_hook::answer_from_cache(session, &registry, &request, &mut call).await {
        return Handled::Answered;
    }
    let call = Arc::new(call);
    // The planned body is a buffer of its own (spliced or translated), held as long as the call.
    if let Err(e) = ctx.held.grow(call.body.len()) {
        reject(session, &overloaded(e), protocol).await;
        return Handled::Answered;
    }
    ctx.call = Some(call.clone());
    let replayable = !body.is_empty() && !session.as_downstream().retry_buffer_truncated();
    // Hedging applies to streams only (upstream::retry::hedge_for).
    let hedged = retry::hedge_for(call.model.hedge, call.stream).is_some();
    if replayable && call.model.fallbacks.is_empty() && !hedged {
        ctx.is_upstream_leg = true;
        return Handled::ProxyHere;
    }
    let (accounting, variant) = (call.accounting.clone(), call.variant.clone());
    // A fallback's answer says what the cache did for the client's model; it is not stored.
    let cache_status = call.cache.as_ref().map(|fill| fill.status);
    let replan = |model: &str| {
        let model = registry
            .models
            .get(model)
            .ok_or_else(|| GatewayError::model_not_found(model))?;
        PlannedCall::plan_for(&registry, &request, model, accounting.as_ref()).map(|c| {
            let mut c = c.in_variant(variant.clone());
            c.cache = cache_status.map(CacheFill::for_fallback);
            c
        })
    };
    dispatch::run(session, call, &replan, &mut ctx.observe.legs).await;
    Handled::Answered
}

/// Checks the model the request names against its key, assigns an experiment's arm, admits the
/// request under its limits and plans its upstream call.
pub(super) async fn admit_and_plan(
    session: &Session,
    registry: &Arc<Registry>,
    key: Option<&access::GatewayKey>,
    request: &ClientRequest<'_>,
) -> Result<(Option<limits::Admission>, PlannedCall), GatewayError> {
    if let Some(key) = key.filter(|k| !k.may_use(&request.envelope.model)) {
        return Err(access::model_not_allowed(key, &request.envelope.model));
    }
    // A request for an experiment is served by the arm its user is assigned to.
    let variant = registry.experiments.get(&request.envelope.model).map(|e| {
        let user_field = request.user_id();
        e.assign(&UserIdentity {
            header: e.user_header(session.req_header()),
            user_field: user_field.as_deref(),
            key_name: key.map(|k| k.name.as_str()),
        })
        .clone()
    });
    if let Some(requests) = variant.as_ref().and_then(|arm| arm.requests.as_ref()) {
        requests.inc();
    }
    // The model serving it: the arm's, else the one it named.
    let name = variant
        .as_ref()
        .map_or(&*request.envelope.model, |arm| &arm.model);
    let model = registry
        .models
        .get(name)
        .ok_or_else(|| GatewayError::model_not_found(name))?;
    let admission = admit(registry, key, request, model, request.body.len()).await?;
    let accounting = admission.as_ref().map(|a| a.accounting.clone());
    let call = PlannedCall::plan_for(registry, request, model, accounting.as_ref())?;
    Ok((admission, call.in_variant(variant)))
}

/// Admits the request under the limits of its key, the model serving it, and the model's
/// provider.
async fn admit(
    registry: &Registry,
    key: Option<&access::GatewayKey>,
    request: &ClientRequest<'_>,
    model: &crate::registry::Model,
    body_len: usize,
) -> Result<Option<limits::Admission>, GatewayError> {
    if !registry.has_limits {
        return Ok(None);
    }
    let scopes = [
        key.and_then(|k| k.limits.as_ref()),
        model.limits.as_ref(),
        model.provider.limits.as_ref(),
    ];
    if scopes.iter().all(Option::is_none) {
        return Ok(None);
    }
    let estimate = limits::estimate_tokens(body_len, request.max_output_tokens());
    limits::admit(&registry.limiter, scopes, estimate).await
}

async fn reject(session: &mut Session, error: &GatewayError, protocol: ClientProtocol) {
    // An unread body would be taken for the next request: close the connection instead.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    local_response::write_error(session, error, protocol, None).await;
}

/// Reads the whole request body, refusing more than `limit` bytes, a body not whole by
/// `deadline` (408), and bytes the process-wide buffer budget has no room for (503).
///
/// Memory is taken as bytes arrive: a declared `Content-Length` only refuses early, it reserves
/// nothing.
async fn read_body(
    session: &mut Session,
    limit: usize,
    deadline: std::time::Duration,
    held: &mut Held,
) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            413,
            format!("Request body exceeds the gateway's limit of {limit} bytes"),
        )
        .with_code(ErrorCode::RequestTooLarge)
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let unreadable = |e: Box<pingora_error::Error>| {
        GatewayError::bad_request(format!(
            "Could not read the request body: {}",
            e.etype().as_str()
        ))
    };
    let read = async {
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        while let Some(chunk) = session.read_request_body().await.map_err(unreadable)? {
            let size = joined
                .as_ref()
                .map_or_else(|| first.as_ref().map_or(0, Bytes::len), BytesMut::len)
                + chunk.len();
            if size > limit {
                return Err(too_large());
            }
            held.grow(chunk.len()).map_err(overloaded)?;
            // Most bodies arrive in one chunk: keep it as it is, copy only when a second one
            // comes. The joined buffer grows with what arrived, never to a declared length.
            match (&mut joined, first.take()) {
                (Some(buf), _) => buf.extend_from_slice(&chunk),
                (None, None) => first = Some(chunk),
                (None, Some(head)) => {
                    let mut buf = BytesMut::with_capacity(2 * (head.len() + chunk.len()));
                    buf.extend_from_slice(&head);
                    buf.extend_from_slice(&chunk);
                    joined = Some(buf);
                }
            }
        }
        Ok(match joined {
            Some(buf) => buf.freeze(),
            None => first.unwrap_or_default(),
        })
    };
    // Biased: a body already here is taken without waiting on the drain at all.
    tokio::select! {
        biased;
        read = tokio::time::timeout(deadline, read) => match read {
            Ok(body) => body,
            Err(_) => Err(GatewayError::new(
                408,
                format!("The request body did not arrive within {deadline:?}"),
            )
            .with_code(ErrorCode::RequestTimeout)),
        },
        () = crate::drain::DRAIN.grace_over() => Err(crate::drain::shutting_down()),
    }
}

/// The process-wide buffer budget (`edge.max_buffered_bytes`) has no room for a request.
fn overloaded(e: Exhausted) -> GatewayError {
    GatewayError::new(
        503,
        format!(
            "The gateway is holding its limit of {} bytes of requests and answers; retry later",
            e.limit
        ),
    )
    .with_code(ErrorCode::GatewayOverloaded)
}

/// In the subrequest: the call its parent planned.
pub fn call_of_subrequest(session: &Session) -> Option<Arc<PlannedCall>> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<dispatch::LegStart>()
        .map(|start| start.call.clone())
}
