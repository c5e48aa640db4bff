//! The response cache's hooks: the lookup once a request is planned, and the collection of its
//! answer as it leaves (`crate::cache` decides; this only reads and writes the session).

use super::ctx::RequestCtx;
use super::headers::edit_answer_head;
use super::local_response::ServedBy;
use crate::api::ClientRequest;
use crate::cache::{self, CacheFill, CacheStatus, Gather, Lookup};
use crate::plan::PlannedCall;
use crate::registry::Registry;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// For a model that caches: answers the request from the cache (true), or notes on `call`
/// whether its answer is to be stored.
///
/// Runs after admission: a hit counts against the request's rate limits like any request
/// (a gateway key's `rpm` sees every request it makes), though it makes no upstream call.
pub(super) async fn answer_from_cache(
    session: &mut Session,
    registry: &Registry,
    request: &ClientRequest<'_>,
    call: &mut PlannedCall,
) -> bool {
    let Some(model_cache) = call.model.cache.as_ref() else {
        return false;
    };
    let lookup = cache::lookup(
        &registry.cache,
        model_cache,
        &cache::Request {
            model: [
                &call.model.name,
                &call.model.provider.name,
                &call.model.upstream_model,
            ],
            endpoint: request.endpoint,
            stream: call.stream,
            body: request.body,
            directive: cache::Directive::of(&session.req_header().headers),
            wait: call.model.timeout,
        },
    )
    .await;
    match lookup {
        Lookup::Hit(whole) => {
            let (body, content_type) = if call.stream {
                // The stream writer of the client's protocol.
                match cache::stream::whole_to_sse(request.endpoint, &whole, request.body) {
                    Some(events) => (events, "text/event-stream"),
                    // Not an answer of that endpoint after all: ask the upstream.
                    None => {
                        call.cache = Some(CacheFill {
                            status: CacheStatus::Bypass,
                            target: None,
                        });
                        return false;
                    }
                }
            } else {
                (whole, "application/json")
            };
            if let Err(e) = write_hit(session, call, body, content_type).await {
                log::debug!("could not send a cached answer: {e}");
            }
            true
        }
        Lookup::Upstream(fill) => {
            call.cache = Some(fill);
            false
        }
    }
}

async fn write_hit(
    session: &mut Session,
    call: &PlannedCall,
    body: Bytes,
    content_type: &'static str,
) -> pingora_error::Result<()> {
    let mut resp = ResponseHeader::build(200, Some(8))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    if call.stream {
        resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if let Some(id) = session
        .req_header()
        .headers
        .get(crate::observe::request_id::HEADER)
    {
        resp.insert_header(crate::observe::request_id::HEADER, id.clone())?;
    }
    let served_by = ServedBy {
        cache: Some(CacheStatus::Hit),
        ..ServedBy::of(call, 0)
    };
    edit_answer_head(&mut resp, ServedBy::HEADERS, |head| {
        served_by.write(&mut head.headers)
    });
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The answer's header: starts collecting a storable answer (`ServedBy` says what the cache
/// did).
pub(super) fn on_response_header(
    resp: &mut ResponseHeader,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
) {
    let Some(fill) = &call.cache else {
        return;
    };
    ctx.cache_collector = match &fill.target {
        Some(target) if resp.status.is_success() => Gather::new(
            call.endpoint,
            call.stream,
            target.cache.settings.max_entry_bytes,
        ),
        _ => None,
    };
}

/// The answer's bytes as the client gets them; stores the answer when it is whole.
pub(super) fn on_response_body(
    body: &Option<Bytes>,
    end_of_stream: bool,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
) {
    let Some(collector) = ctx.cache_collector.as_mut() else {
        return;
    };
    if let Some(chunk) = body {
        // The gathered copy counts in `edge.max_buffered_bytes` too; no room: not stored.
        if !collector.push(chunk) || ctx.held.grow(chunk.len()).is_err() {
            ctx.cache_collector = None;
            return;
        }
    }
    if !end_of_stream {
        return;
    }
    let whole = ctx.cache_collector.take().and_then(Gather::finish);
    if let (Some(whole), Some(target)) =
        (whole, call.cache.as_ref().and_then(|f| f.target.as_ref()))
    {
        target.store(whole);
    }
}
