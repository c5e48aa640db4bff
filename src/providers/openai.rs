//! OpenAI and OpenAI-compatible upstreams (and Azure OpenAI, which shares the bodies): the request
//! passes through with only `model` rewritten, spliced into the client's bytes without re-serialising.

use super::{AuthPlacement, Dialect, ResponseContext, UpstreamPaths};
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::{self, GatewayError};
use crate::stream::chunk::{ChunkSource, StreamContext, StreamOut};
use crate::stream::sse::SseEvent;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::ops::Range;

/// OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Mistral, DeepSeek...).
pub struct OpenAi;

/// Azure OpenAI: OpenAI's bodies, the deployment and `api-version` in the path, an `api-key`
/// header.
pub struct AzureOpenAi;

impl Dialect for OpenAi {
    fn default_endpoint(&self) -> Option<&'static str> {
        Some("https://api.openai.com/v1")
    }

    fn default_auth(&self) -> AuthPlacement {
        AuthPlacement::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        Some(ClientProtocol::OpenAi)
    }

    fn paths(&self, _upstream_model: &str, _settings: &ProviderSettings) -> UpstreamPaths {
        UpstreamPaths {
            chat: "/chat/completions".into(),
            embeddings: Some("/embeddings".into()),
            ..UpstreamPaths::default()
        }
    }

    fn chat_response(&self, body: &[u8], _ctx: &ResponseContext) -> Result<Value, GatewayError> {
        parse_completion(body)
    }

    fn chunk_source(&self, _ctx: StreamContext) -> Box<dyn ChunkSource> {
        Box::new(OpenAiChunkSource::new())
    }
}

impl Dialect for AzureOpenAi {
    fn default_endpoint(&self) -> Option<&'static str> {
        // Every Azure resource has its own host.
        None
    }

    fn default_auth(&self) -> AuthPlacement {
        AuthPlacement::Header {
            name: "api-key".into(),
            prefix: String::new(),
        }
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        Some(ClientProtocol::OpenAi)
    }

    fn paths(&self, upstream_model: &str, settings: &ProviderSettings) -> UpstreamPaths {
        let deployment = encode_component(upstream_model);
        let version = encode_component(settings.api_version.as_deref().unwrap_or_default());
        let path =
            |what: &str| format!("/openai/deployments/{deployment}/{what}?api-version={version}");
        UpstreamPaths {
            chat: path("chat/completions"),
            embeddings: Some(path("embeddings")),
            ..UpstreamPaths::default()
        }
    }

    fn chat_response(&self, body: &[u8], _ctx: &ResponseContext) -> Result<Value, GatewayError> {
        parse_completion(body)
    }

    fn chunk_source(&self, _ctx: StreamContext) -> Box<dyn ChunkSource> {
        Box::new(OpenAiChunkSource::new())
    }
}

/// A `chat.completion` read as a tree, for clients of another protocol.
fn parse_completion(body: &[u8]) -> Result<Value, GatewayError> {
    serde_json::from_slice::<Value>(body)
        .map_err(|e| GatewayError::bad_upstream(format!("invalid JSON from upstream: {e}")))
}

/// Characters left as they are in a path segment or query value: RFC 3986 unreserved.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` percent-encoded for a URL path segment or query value.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The client's body with the bytes at `model_span` (the JSON value of the top-level `model` field)
/// replaced by `model_json` (an encoded JSON string). Everything else, unknown fields included,
/// is kept byte for byte.
pub fn splice_model(body: &[u8], model_span: Range<usize>, model_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() - model_span.len() + model_json.len());
    out.extend_from_slice(&body[..model_span.start]);
    out.extend_from_slice(model_json);
    out.extend_from_slice(&body[model_span.end..]);
    out
}

/// An OpenAI-style upstream stream read as chunks (for clients of another protocol).
#[derive(Debug, Default)]
pub struct OpenAiChunkSource {
    ended: bool,
}

impl OpenAiChunkSource {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ChunkSource for OpenAiChunkSource {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) {
        if self.ended {
            return;
        }
        if event.data == "[DONE]" {
            self.ended = true;
            out.push(StreamOut::Done);
            return;
        }
        match serde_json::from_str::<serde_json::Value>(&event.data) {
            Ok(v) if v.get("error").is_some() => {
                self.ended = true;
                out.push(StreamOut::Error(error::from_upstream(
                    500,
                    event.data.as_bytes(),
                    "",
                )));
            }
            Ok(v) => out.push(StreamOut::Chunk(v)),
            Err(_) => {
                self.ended = true;
                out.push(StreamOut::Error(GatewayError::bad_upstream(
                    "invalid stream event from upstream",
                )));
            }
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamOut>) {
        if !self.ended {
            self.ended = true;
            out.push(StreamOut::Error(
                GatewayError::new(502, "upstream stream ended before its final event")
                    .with_code(crate::error::ErrorCode::StreamTruncated),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_source_reads_chunks_done_errors_and_truncation() {
        let ev = |d: &str| SseEvent {
            event: None,
            data: d.to_string(),
        };
        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        src.on_event(&ev(r#"{"id":"c","choices":[]}"#), &mut out);
        src.on_event(&ev("[DONE]"), &mut out);
        src.on_event(&ev(r#"{"id":"late"}"#), &mut out);
        src.on_end(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], StreamOut::Chunk(v) if v["id"] == "c"));
        assert_eq!(out[1], StreamOut::Done);

        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        src.on_event(
            &ev(r#"{"error":{"message":"boom","type":"server_error"}}"#),
            &mut out,
        );
        assert!(matches!(&out[0], StreamOut::Error(e) if e.message == "boom"));

        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        src.on_event(&ev(r#"{"id":"c"}"#), &mut out);
        src.on_end(&mut out);
        assert!(
            matches!(&out[1], StreamOut::Error(e) if e.has_code(crate::error::ErrorCode::StreamTruncated))
        );
    }

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode_component("gpt-4o_mini.v1~x"), "gpt-4o_mini.v1~x");
        assert_eq!(encode_component("a/b?c&d=e f"), "a%2Fb%3Fc%26d%3De%20f");
    }

    #[test]
    fn splices_only_the_model_value() {
        let body = br#"{"model":"alias","messages":[],"x_unknown":{"a":[1,2]}}"#;
        let start = body.windows(7).position(|w| w == b"\"alias\"").unwrap();
        let out = splice_model(body, start..start + 7, br#""meta/llama-3""#);
        assert_eq!(
            out,
            br#"{"model":"meta/llama-3","messages":[],"x_unknown":{"a":[1,2]}}"#
        );
    }
}
