//! The upstream's answer on its way to the client: who answered, and translation of bodies that
//! are not already in the client's protocol (translated successes, and every error).

use super::ctx::RequestCtx;
use crate::call::{ResponseMode, UpstreamCall};
use crate::error::{self, GatewayError};
use crate::frontend::{self, Endpoint};
use crate::providers::{self, ProviderKind, ResponseContext};
use bytes::Bytes;
use http::header;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use serde_json::Value;

/// Upstream headers never shown to clients.
const STRIPPED_HEADERS: &[&str] = &["set-cookie", "alt-svc", "server"];

pub fn on_response_header(
    resp: &mut ResponseHeader,
    call: &UpstreamCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let status = resp.status.as_u16();
    ctx.upstream_status = status;
    for name in STRIPPED_HEADERS {
        resp.remove_header(*name);
    }
    resp.insert_header("x-dragoman-model", call.model.name.as_str())?;
    resp.insert_header("x-dragoman-provider", call.model.provider.name.as_str())?;
    ctx.buffering = status >= 400 || call.response_mode == ResponseMode::Translate;
    ctx.response_buffer.clear();
    if ctx.buffering {
        // The translated body has another length; Pingora switches to chunked framing.
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::CONTENT_ENCODING);
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    }
    Ok(())
}

pub fn on_response_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &UpstreamCall,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if !ctx.buffering {
        return Ok(());
    }
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
    if status >= 400 {
        let e = error::from_upstream(status, upstream, provider.credential.expose());
        return Ok(e.to_openai_body());
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
        Endpoint::ChatCompletions | Endpoint::Models => completion,
    };
    Ok(Bytes::from(out.to_string()))
}
