//! The upstream's answer on its way to the client: who answered, and translation of what is not
//! already in the client's protocol (translated answers and streams, and every error).

use super::ctx::{RequestCtx, ResponseHandling};
use crate::anthropic_api::{self, AnthropicEventSink};
use crate::call::{Operation, ResponseMode, UpstreamCall};
use crate::error::{self, GatewayError};
use crate::frontend::{self, ClientProtocol, Endpoint, OpenAiEventSink};
use crate::providers::{self, ChunkSource, ProviderKind, ResponseContext, StreamContext};
use crate::stream::{self, AzureChunkFilter, ClientSink, StreamTranslation, TerminalWatch};
use bytes::Bytes;
use http::header;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use serde_json::Value;

/// Upstream headers never shown to clients.
fn is_stripped(name: &str) -> bool {
    matches!(name, "set-cookie" | "alt-svc" | "server")
}

pub fn on_response_header(
    resp: &mut ResponseHeader,
    call: &UpstreamCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let status = resp.status.as_u16();
    ctx.upstream_status = status;
    super::headers::strip(resp, is_stripped);
    resp.insert_header("x-dragoman-model", call.model.name.as_str())?;
    resp.insert_header("x-dragoman-provider", call.model.provider.name.as_str())?;
    resp.insert_header(super::dispatch::ATTEMPTS_HEADER, ctx.attempts.max(1))?;
    let protocol = call.endpoint.protocol();
    ctx.response = if status >= 400 {
        ResponseHandling::Buffer
    } else {
        match call.response_mode {
            // Azure annotates its streams with chunks an OpenAI client must not see. Every other
            // stream in the client's protocol goes on as untouched bytes.
            ResponseMode::PassThrough
                if call.stream
                    && call.model.provider.kind == ProviderKind::AzureOpenai
                    && protocol == ClientProtocol::OpenAi =>
            {
                ResponseHandling::FilterAzureStream(Box::new(AzureChunkFilter::new()))
            }
            ResponseMode::PassThrough if call.stream => {
                ResponseHandling::WatchStream(TerminalWatch::new(protocol))
            }
            ResponseMode::PassThrough => ResponseHandling::PassThrough,
            ResponseMode::Translate => ResponseHandling::Buffer,
            ResponseMode::Stream => ResponseHandling::Translate(Box::new(StreamTranslation::new(
                source(call),
                sink(call),
            ))),
        }
    };
    ctx.response_buffer.clear();
    match &ctx.response {
        ResponseHandling::Buffer => {
            // The translated body has another length; Pingora switches to chunked framing.
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::CONTENT_ENCODING);
            resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        }
        ResponseHandling::Translate(_) => {
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::CONTENT_ENCODING);
            resp.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
            resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
        }
        ResponseHandling::FilterAzureStream(_) => {
            // Dropped events change the length.
            resp.remove_header(&header::CONTENT_LENGTH);
        }
        ResponseHandling::PassThrough | ResponseHandling::WatchStream(_) => {}
    }
    Ok(())
}

fn source(call: &UpstreamCall) -> Box<dyn ChunkSource> {
    let ctx = StreamContext {
        upstream_model: call.model.upstream_model.clone(),
        created: call.created,
        include_usage: call.include_usage,
    };
    match call.model.provider.kind {
        ProviderKind::Anthropic => Box::new(providers::anthropic::AnthropicChunkSource::new(ctx)),
        ProviderKind::Gemini => Box::new(providers::gemini::GeminiChunkSource::new(ctx)),
        ProviderKind::Openai | ProviderKind::AzureOpenai => {
            Box::new(providers::openai::OpenAiChunkSource::new())
        }
    }
}

fn sink(call: &UpstreamCall) -> ClientSink {
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
    call: &UpstreamCall,
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
                    .with_code("stream_truncated");
                let mut out = body.take().map(|b| b.to_vec()).unwrap_or_default();
                out.extend_from_slice(&stream::error_event(call.endpoint.protocol(), &e));
                *body = Some(Bytes::from(out));
            }
            Ok(())
        }
        ResponseHandling::FilterAzureStream(filter) => {
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
                    .with_code("stream_truncated");
                let mut out = body.take().map(|b| b.to_vec()).unwrap_or_default();
                out.extend_from_slice(&stream::error_event(protocol, &e));
                *body = Some(Bytes::from(out));
            }
            Ok(())
        }
        ResponseHandling::Translate(translation) => {
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
        ResponseHandling::Buffer => buffer_and_translate(body, end_of_stream, call, ctx),
    }
}

fn buffer_and_translate(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &UpstreamCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if let Some(chunk) = body.take() {
        if ctx.response_buffer.len() + chunk.len() > call.registry.max_response_bytes {
            return Error::e_explain(ErrorType::InternalError, "upstream response too large");
        }
        ctx.response_buffer.extend_from_slice(&chunk);
    }
    if !end_of_stream {
        // Nothing to send until the whole body is here.
        *body = Some(Bytes::new());
        return Ok(());
    }
    let upstream = ctx.response_buffer.split().freeze();
    match finish(ctx.upstream_status, &upstream, call) {
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

/// The client's body for a complete upstream body.
fn finish(status: u16, upstream: &[u8], call: &UpstreamCall) -> Result<Bytes, GatewayError> {
    let provider = &call.model.provider;
    let protocol = call.endpoint.protocol();
    if status >= 400 {
        let e = error::from_upstream(status, upstream, provider.credential.expose());
        return Ok(protocol.error_body(&e));
    }
    if let Operation::Embed { base64, .. } = call.operation {
        let out = providers::gemini::embed_response(upstream, &call.model.name, base64)?;
        return Ok(Bytes::from(out.to_string()));
    }
    let ctx = ResponseContext {
        upstream_model: &call.model.upstream_model,
        created: call.created,
    };
    let completion = match provider.kind {
        ProviderKind::Anthropic => providers::anthropic::chat_response(upstream, &ctx)?,
        ProviderKind::Gemini => providers::gemini::chat_response(upstream, &ctx)?,
        ProviderKind::Openai | ProviderKind::AzureOpenai => {
            serde_json::from_slice::<Value>(upstream).map_err(|e| {
                GatewayError::bad_upstream(format!("invalid JSON from upstream: {e}"))
            })?
        }
    };
    let out = match call.endpoint {
        Endpoint::Complete => frontend::chat_to_complete(&completion, &call.model.name),
        Endpoint::Messages => anthropic_api::response_from_openai(&completion, &call.model.name)?,
        _ => completion,
    };
    // `to_vec` writes straight into the buffer; `to_string` goes through `fmt` and costs more.
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| GatewayError::new(500, format!("could not encode the response: {e}")))
}

/// The upstream failed after the response started: end a stream with a terminal error event in
/// the client's protocol. Returns the bytes to send, if any.
pub fn on_failure_after_start(
    call: &UpstreamCall,
    ctx: &mut RequestCtx,
    error: GatewayError,
) -> Option<Bytes> {
    let mut out = Vec::new();
    match &mut ctx.response {
        ResponseHandling::Translate(t) => t.fail(error, &mut out),
        ResponseHandling::WatchStream(_) | ResponseHandling::FilterAzureStream(_) => {
            out = stream::error_event(call.endpoint.protocol(), &error);
        }
        ResponseHandling::PassThrough | ResponseHandling::Buffer => return None,
    }
    ctx.response = ResponseHandling::PassThrough;
    Some(Bytes::from(out))
}
