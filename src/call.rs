//! An upstream call: what the gateway sends for one client request (path, body) and how it must
//! treat the answer. Built once from the client's body; every attempt re-sends the same bytes.

use crate::error::GatewayError;
use crate::frontend::{self, Endpoint};
use crate::ids::unix_now;
use crate::providers::{self, openai, AuthPlacement, ProviderKind, RequestContext};
use crate::registry::{Model, Registry};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::sync::Arc;

/// Characters left as they are in a path segment or query value: RFC 3986 unreserved.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// How the upstream's answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Bytes pass through untouched (OpenAI-speaking upstream, OpenAI client, success).
    PassThrough,
    /// Buffered and translated when complete.
    Translate,
}

pub struct UpstreamCall {
    /// Keeps the configuration the request started with alive until it ends.
    pub registry: Arc<Registry>,
    pub model: Arc<Model>,
    pub endpoint: Endpoint,
    pub stream: bool,
    /// Path (and query) after the endpoint's base path.
    pub path: String,
    pub body: Bytes,
    pub response_mode: ResponseMode,
    /// OpenAI's `created` for translated responses.
    pub created: u64,
}

impl UpstreamCall {
    /// Plans the call for a client request to `endpoint` with `body`.
    pub fn plan(
        registry: &Arc<Registry>,
        endpoint: Endpoint,
        body: &Bytes,
    ) -> Result<UpstreamCall, GatewayError> {
        let (model, stream, upstream_body) = match endpoint {
            Endpoint::ChatCompletions => {
                let envelope = frontend::parse_chat_envelope(body)?;
                let model = lookup(registry, &envelope.model)?;
                let kind = model.provider.kind;
                let upstream_body = if kind.speaks_openai() {
                    openai::splice_model(body, envelope.model_span, &model.upstream_model_json)
                } else {
                    if envelope.stream {
                        return Err(streaming_not_supported(kind));
                    }
                    translate_request(&model, &frontend::parse_chat_tree(body)?)?
                };
                (model, envelope.stream, upstream_body)
            }
            Endpoint::Complete => {
                let (name, mut chat) = frontend::complete_to_chat(body)?;
                let model = lookup(registry, &name)?;
                let upstream_body = if model.provider.kind.speaks_openai() {
                    chat["model"] = model.upstream_model.as_str().into();
                    chat.to_string().into_bytes()
                } else {
                    translate_request(&model, &chat)?
                };
                (model, false, upstream_body)
            }
            Endpoint::Models => {
                return Err(GatewayError::new(500, "models are listed, not proxied"));
            }
        };
        let provider = &model.provider;
        let upstream_body = match &provider.auth {
            AuthPlacement::Body { field } => {
                insert_field(&upstream_body, field, provider.credential.expose())
            }
            _ => upstream_body,
        };
        let response_mode =
            if provider.kind.speaks_openai() && endpoint == Endpoint::ChatCompletions {
                ResponseMode::PassThrough
            } else {
                ResponseMode::Translate
            };
        Ok(UpstreamCall {
            path: upstream_path(&model, stream),
            registry: registry.clone(),
            model,
            endpoint,
            stream,
            body: Bytes::from(upstream_body),
            response_mode,
            created: unix_now(),
        })
    }
}

fn lookup(registry: &Registry, name: &str) -> Result<Arc<Model>, GatewayError> {
    registry
        .models
        .get(name)
        .cloned()
        .ok_or_else(|| GatewayError::model_not_found(name))
}

fn streaming_not_supported(kind: ProviderKind) -> GatewayError {
    GatewayError::bad_request(format!(
        "Streaming is not supported yet for models served by a {} provider; send \"stream\": false",
        kind.as_str()
    ))
    .with_param("stream")
    .with_code("streaming_not_supported")
}

fn translate_request(model: &Model, chat: &serde_json::Value) -> Result<Vec<u8>, GatewayError> {
    let ctx = RequestContext {
        upstream_model: &model.upstream_model,
        default_max_tokens: model.default_max_tokens,
    };
    match model.provider.kind {
        ProviderKind::Anthropic => providers::anthropic::chat_request(chat, &ctx),
        ProviderKind::Gemini => providers::gemini::chat_request(chat, &ctx),
        ProviderKind::Openai | ProviderKind::AzureOpenai => Ok(chat.to_string().into_bytes()),
    }
}

/// The chat path for a model, after the endpoint's base path.
fn upstream_path(model: &Model, stream: bool) -> String {
    let provider = &model.provider;
    match provider.kind {
        ProviderKind::Openai => "/chat/completions".into(),
        ProviderKind::AzureOpenai => format!(
            "/openai/deployments/{}/chat/completions?api-version={}",
            encode_component(&model.upstream_model),
            encode_component(provider.api_version.as_deref().unwrap_or_default()),
        ),
        ProviderKind::Anthropic => "/v1/messages".into(),
        ProviderKind::Gemini if stream => format!(
            "/v1beta/models/{}:streamGenerateContent?alt=sse",
            encode_component(&model.upstream_model)
        ),
        ProviderKind::Gemini => format!(
            "/v1beta/models/{}:generateContent",
            encode_component(&model.upstream_model)
        ),
    }
}

/// Inserts `"field": value` as the first member of the body's top-level object, without
/// re-serialising the rest.
pub fn insert_field(body: &[u8], field: &str, value: &str) -> Vec<u8> {
    let member = format!(
        "{}:{}",
        serde_json::Value::from(field),
        serde_json::Value::from(value)
    );
    let Some(open) = body.iter().position(|&b| b == b'{') else {
        return body.to_vec();
    };
    let rest = &body[open + 1..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'}');
    let mut out = Vec::with_capacity(body.len() + member.len() + 1);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(member.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_insertion_keeps_the_rest() {
        assert_eq!(
            insert_field(br#" {"a":1}"#, "api_key", "k\"1"),
            br#" {"api_key":"k\"1","a":1}"#
        );
        assert_eq!(insert_field(b"{ }", "k", "v"), br#"{"k":"v" }"#);
    }

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode_component("gpt-4o_mini.v1~x"), "gpt-4o_mini.v1~x");
        assert_eq!(encode_component("a/b?c&d=e f"), "a%2Fb%3Fc%26d%3De%20f");
    }
}
