//! The upstream's answer on its way to the client: who answered, and translation of what is not
//! already in the client's protocol (translated answers and streams, and every error).

use super::ctx::{RequestCtx, ResponseHandling};
use super::headers::{edit_answer_head, set, strip};
use super::local_response::ServedBy;
use crate::api::anthropic::{self, AnthropicEventSink};
use crate::api::openai::stream::OpenAiEventSink;
use crate::api::{ClientEndpoint, ClientProtocol};
use crate::error::ErrorCode;
use crate::error::{self, GatewayError};
use crate::limits::usage::UsageScan;
use crate::observe::request_id;
use crate::plan::{Operation, PlannedCall, ResponseMode};
use crate::providers::openai::usage_chunk::UsageChunkFilter;
use crate::providers::ResponseContext;
use crate::stream::chunk::{ChunkSource, StreamContext};
use crate::stream::redact::StreamRedactor;
use crate::stream::{self, ClientSink, StreamTranslation, TerminalWatch};
use bytes::Bytes;
use http::{header, HeaderValue};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

/// Upstream headers never shown to clients: cookies and connection hints meant for the
/// gateway, and what reveals the operator's provider account (its organization and project, and
/// its own rate limits, which are the account's, not the client's).
fn is_stripped(name: &str) -> bool {
    matches!(
        name,
        "set-cookie"
            | "alt-svc"
            | "server"
            | "openai-organization"
            | "openai-project"
            | "anthropic-organization-id"
    ) || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

/// The upstream's answer head: who answered and the request's limits and id are added, what
/// the client must not see is removed, and how its body is handled is chosen.
pub fn on_response_header(
    resp: &mut ResponseHeader,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    request_id: Option<&HeaderValue>,
) {
    let status = resp.status.as_u16();
    ctx.upstream_status = status;
    let protocol = call.endpoint.protocol();
    ctx.response = if status >= 400 {
        ResponseHandling::BufferWhole
    } else {
        match call.response_mode {
            // Some kinds (Azure) annotate their streams with events a client must not see. Every
            // other stream in the client's protocol goes on as untouched bytes.
            ResponseMode::PassThrough if call.stream && call.hides_usage_chunk => {
                ResponseHandling::FilterStream(Box::new(UsageChunkFilter::new()))
            }
            ResponseMode::PassThrough if call.stream => {
                match call.model.provider.dialect.native_stream_filter() {
                    Some(filter) => ResponseHandling::FilterStream(filter),
                    None => ResponseHandling::WatchStream(TerminalWatch::new(protocol)),
                }
            }
            ResponseMode::PassThrough => ResponseHandling::PassThrough,
            ResponseMode::TranslateWhole => ResponseHandling::BufferWhole,
            ResponseMode::TranslateStream => ResponseHandling::TranslateStream(Box::new(
                StreamTranslation::new(source(call), sink(call)).redacting(attempt_secret(ctx)),
            )),
        }
    };
    ctx.response_buffer.clear();
    let counts_tokens = call.accounting.as_ref().is_some_and(|a| a.counts_tokens)
        || crate::observe::wants_usage(&call.model);
    ctx.usage_scan = (counts_tokens && status < 400)
        .then(|| UsageScan::new(call.stream && protocol == ClientProtocol::Anthropic));
    // Translated streams redact the errors they write; a stream passed through is redacted as
    // bytes.
    ctx.stream_redactor = match ctx.response {
        ResponseHandling::WatchStream(_) | ResponseHandling::FilterStream(_) => {
            StreamRedactor::new(attempt_secret(ctx))
        }
        _ => None,
    };
    let served_by = ServedBy::of(call, ctx.attempts.max(1));
    // Request id, content type and cache control: three more.
    edit_answer_head(resp, ServedBy::HEADERS + 3, |head| {
        let headers = &mut head.headers;
        strip(headers, is_stripped);
        served_by.write(headers);
        if let Some(id) = request_id {
            request_id::set_on_answer(headers, id);
        }
        match &ctx.response {
            ResponseHandling::BufferWhole => {
                // The translated body has another length; Pingora switches to chunked framing.
                headers.remove(header::CONTENT_LENGTH);
                headers.remove(header::CONTENT_ENCODING);
                set(headers, header::CONTENT_TYPE, JSON);
            }
            ResponseHandling::TranslateStream(_) => {
                headers.remove(header::CONTENT_LENGTH);
                headers.remove(header::CONTENT_ENCODING);
                set(headers, header::CONTENT_TYPE, EVENT_STREAM);
                set(headers, header::CACHE_CONTROL, NO_CACHE);
            }
            ResponseHandling::FilterStream(_) => {
                // Dropped events change the length.
                headers.remove(header::CONTENT_LENGTH);
            }
            ResponseHandling::PassThrough | ResponseHandling::WatchStream(_) => {}
        }
    });
    super::cache_hook::on_response_header(resp, call, ctx);
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

fn source(call: &PlannedCall) -> Box<dyn ChunkSource> {
    call.model.provider.dialect.chunk_source(StreamContext {
        upstream_model: call.model.upstream_model.clone(),
        created: call.created,
        include_usage: call.include_usage,
    })
}

fn sink(call: &PlannedCall) -> ClientSink {
    match call.endpoint.protocol() {
        ClientProtocol::OpenAi => ClientSink::OpenAi(OpenAiEventSink::new()),
        ClientProtocol::Anthropic => ClientSink::Anthropic(Box::new(AnthropicEventSink::new(
            &call.model.name,
            crate::ids::new_id("msg_"),
        ))),
    }
}

pub fn on_response_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if call.stream && !end_of_stream && stream_overran(call, ctx).is_some() {
        // Ends the stream; `fail_to_proxy` sends the terminal event.
        return Error::e_explain(ErrorType::ReadTimedout, "edge.max_stream_duration reached");
    }
    let result = scan_and_forward(body, end_of_stream, call, ctx);
    if let Some(redactor) = ctx.stream_redactor.as_mut() {
        if body.is_some() || end_of_stream {
            *body = Some(redactor.redact(body.take().unwrap_or_default(), end_of_stream));
        }
    }
    if result.is_ok() {
        super::cache_hook::on_response_body(body, end_of_stream, call, ctx);
    } else {
        ctx.cache_collector = None;
    }
    result
}

fn scan_and_forward(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if ctx.usage_scan.is_none() {
        return forward_body(body, end_of_stream, call, ctx);
    }
    // Answers in the client's protocol are read as they come; translated ones as they leave.
    let translated = matches!(
        ctx.response,
        ResponseHandling::BufferWhole | ResponseHandling::TranslateStream(_)
    );
    if let (false, Some(scan), Some(b)) = (translated, ctx.usage_scan.as_mut(), body.as_ref()) {
        scan.observe(b);
    }
    let result = forward_body(body, end_of_stream, call, ctx);
    if let (true, Some(scan), Some(b)) = (translated, ctx.usage_scan.as_mut(), body.as_ref()) {
        scan.observe(b);
    }
    if end_of_stream && result.is_ok() {
        record_usage(call, ctx);
    }
    result
}

/// Notes the usage the answer reported, for the request's rate limits, its metrics and its
/// access log line.
fn record_usage(call: &PlannedCall, ctx: &mut RequestCtx) {
    let Some(scan) = ctx.usage_scan.take() else {
        return;
    };
    let usage = match &ctx.response {
        // An OpenAI client that did not ask for usage gets none: the upstream's events said it.
        ResponseHandling::TranslateStream(t)
            if call.endpoint.protocol() == ClientProtocol::OpenAi =>
        {
            t.usage().or_else(|| scan.usage())
        }
        _ => scan.usage(),
    };
    let Some(usage) = usage else { return };
    if let Some(accounting) = &call.accounting {
        accounting.record_usage(usage);
    }
    crate::observe::usage(call, ctx, usage);
}

fn forward_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    match &mut ctx.response {
        ResponseHandling::PassThrough => Ok(()),
        ResponseHandling::WatchStream(watch) => {
            if let Some(b) = body.as_ref() {
                watch.observe(b);
            }
            if end_of_stream && !watch.ended_properly() {
                let e = GatewayError::new(502, "upstream stream ended before its final event")
                    .with_code(ErrorCode::StreamTruncated);
                let mut out = body.take().map(|b| b.to_vec()).unwrap_or_default();
                out.extend_from_slice(&stream::error_event(call.endpoint.protocol(), &e));
                *body = Some(Bytes::from(out));
            }
            Ok(())
        }
        ResponseHandling::FilterStream(filter) => {
            let protocol = call.endpoint.protocol();
            if let Some(b) = body.as_ref() {
                match filter.filter(b) {
                    Ok(out) => *body = Some(out),
                    // The stream ends here for the client; the filter lets nothing more through.
                    Err(e) => {
                        *body = Some(Bytes::from(stream::error_event(protocol, &e)));
                        return Ok(());
                    }
                }
            }
            if end_of_stream && !filter.ended_properly() && !filter.has_failed() {
                let e = GatewayError::new(502, "upstream stream ended before its final event")
                    .with_code(ErrorCode::StreamTruncated);
                let mut out = body.take().map(|b| b.to_vec()).unwrap_or_default();
                out.extend_from_slice(&stream::error_event(protocol, &e));
                *body = Some(Bytes::from(out));
            }
            Ok(())
        }
        ResponseHandling::TranslateStream(translation) => {
            let mut out = Vec::new();
            if let Some(b) = body.as_ref() {
                translation.feed(b, &mut out);
            }
            if end_of_stream {
                translation.finish(&mut out);
            }
            *body = Some(Bytes::from(out));
            Ok(())
        }
        ResponseHandling::BufferWhole => buffer_and_translate(body, end_of_stream, call, ctx),
    }
}

fn buffer_and_translate(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &PlannedCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if let Some(chunk) = body.take() {
        if ctx.response_buffer.len() + chunk.len() > call.registry.max_response_bytes {
            return Error::e_explain(ErrorType::InternalError, "upstream response too large");
        }
        if ctx.held.grow(chunk.len()).is_err() {
            return Error::e_explain(
                ErrorType::InternalError,
                "the gateway's buffers are full (edge.max_buffered_bytes)",
            );
        }
        ctx.response_buffer.extend_from_slice(&chunk);
    }
    if !end_of_stream {
        // Nothing to send until the whole body is here.
        *body = Some(Bytes::new());
        return Ok(());
    }
    let upstream = ctx.response_buffer.split().freeze();
    match finish(ctx.upstream_status, &upstream, call, attempt_secret(ctx)) {
        Ok(out) => {
            *body = Some(out);
            Ok(())
        }
        Err(e) => {
            // The success status already went out: end the response broken rather than looking
            // like a success.
            log::warn!(
                "model {}: untranslatable response from provider {}: {}",
                call.model.name,
                call.model.provider.name,
                e.message
            );
            Error::e_explain(ErrorType::InternalError, "untranslatable upstream response")
        }
    }
}

/// The key the current attempt sent, which an upstream error may echo.
fn attempt_secret(ctx: &RequestCtx) -> &str {
    ctx.key.as_ref().map_or("", |k| k.key.secret())
}

/// The client's body for a complete upstream body.
fn finish(
    status: u16,
    upstream: &[u8],
    call: &PlannedCall,
    secret: &str,
) -> Result<Bytes, GatewayError> {
    let provider = &call.model.provider;
    let protocol = call.endpoint.protocol();
    if status >= 400 {
        let e = error::from_upstream(status, upstream, secret);
        return Ok(protocol.error_body(&e));
    }
    let dialect = provider.dialect;
    if let Operation::Embed { base64, .. } = call.operation {
        let out = dialect.embeddings_response(upstream, &call.model.name, base64)?;
        return Ok(Bytes::from(out.to_string()));
    }
    let ctx = ResponseContext {
        upstream_model: &call.model.upstream_model,
        created: call.created,
    };
    let completion = dialect.chat_response(upstream, &ctx)?;
    let out = match call.endpoint {
        ClientEndpoint::Complete => {
            crate::api::openai::complete::chat_to_complete(&completion, &call.model.name)
        }
        ClientEndpoint::Messages => anthropic::response_from_openai(&completion, &call.model.name)?,
        _ => completion,
    };
    // `to_vec` writes straight into the buffer; `to_string` goes through `fmt` and costs more.
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| GatewayError::new(500, format!("could not encode the response: {e}")))
}

/// The error a stream gets once it has run past `edge.max_stream_duration` (counted from the
/// start of its request, or of the leg that serves it).
pub fn stream_overran(call: &PlannedCall, ctx: &RequestCtx) -> Option<GatewayError> {
    let limit = call.registry.edge.max_stream_duration;
    let started = ctx.started?;
    (started.elapsed() >= limit).then(|| {
        GatewayError::new(
            504,
            format!("The stream ran past the gateway's limit of {limit:?}"),
        )
        .with_code(ErrorCode::StreamDurationExceeded)
    })
}

/// The upstream failed after the response started: end a stream with a terminal error event in
/// the client's protocol. Returns the bytes to send, if any.
pub fn on_failure_after_start(
    call: &PlannedCall,
    ctx: &mut RequestCtx,
    error: GatewayError,
) -> Option<Bytes> {
    let mut out = Vec::new();
    match &mut ctx.response {
        ResponseHandling::TranslateStream(t) => t.fail(error, &mut out),
        ResponseHandling::WatchStream(_) | ResponseHandling::FilterStream(_) => {
            out = stream::error_event(call.endpoint.protocol(), &error);
        }
        ResponseHandling::PassThrough | ResponseHandling::BufferWhole => return None,
    }
    ctx.response = ResponseHandling::PassThrough;
    Some(Bytes::from(out))
}
