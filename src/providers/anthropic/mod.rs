//! Anthropic Messages API <-> OpenAI chat completions.
//!
//! Requests: an OpenAI `chat.completions` body becomes a `/v1/messages` body (`request.rs`).
//! Responses: a Messages `message` object becomes a `chat.completion` (`response.rs`). Streams:
//! Messages SSE events become `chat.completion.chunk` objects ([`AnthropicChunkSource`], in
//! `stream.rs`). Answers and events are read as the typed Anthropic formats of
//! [`crate::wire::anthropic`], whose vocabulary (stop reasons, usage, error types, event names) the
//! front door (`api::anthropic`) shares. Every input is treated as untrusted: malformed client
//! input is a 400 naming the offending field, a malformed upstream body is a 502.

use crate::api::openai::chat::ChatRequest;
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::GatewayError;
use crate::providers::{AuthPlacement, Dialect, RequestContext, ResponseContext, UpstreamPaths};
use crate::stream::chunk::{ChunkSource, StreamContext};
use http::{HeaderName, HeaderValue};
use serde_json::Value;

/// Helpers shared by the unit tests of this module's files.
#[cfg(test)]
#[macro_use]
mod test_helpers {
    use crate::providers::{RequestContext, ResponseContext};
    use serde_json::{json, Value};

    pub const REQ_CTX: RequestContext = RequestContext {
        upstream_model: "claude-sonnet-4-5-20250929",
        default_max_tokens: 4096,
    };
    pub const RESP_CTX: ResponseContext = ResponseContext {
        upstream_model: "claude-sonnet-4-5",
        created: 1_748_779_200,
    };

    macro_rules! fixture {
        ($name:literal) => {
            serde_json::from_str::<serde_json::Value>(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/anthropic/",
                $name
            )))
            .expect(concat!("fixture ", $name, " is valid JSON"))
        };
    }

    /// Values of every JSON type, including the awkward ones.
    pub fn odd_values() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!("data:,"),
            json!([]),
            json!([null]),
            json!({}),
            json!({"type": null}),
        ]
    }
}

mod request;
mod response;
mod stream;

pub use request::chat_request;
pub use response::chat_response;
pub use stream::AnthropicChunkSource;

/// Anthropic's Messages API.
pub struct Anthropic;

impl Dialect for Anthropic {
    fn default_endpoint(&self) -> Option<&'static str> {
        Some("https://api.anthropic.com")
    }

    fn default_auth(&self) -> AuthPlacement {
        AuthPlacement::Header {
            name: "x-api-key".into(),
            prefix: String::new(),
        }
    }

    fn fixed_headers(&self, settings: &ProviderSettings) -> Vec<(HeaderName, HeaderValue)> {
        // Validated as a header value when the configuration was loaded.
        HeaderValue::try_from(settings.anthropic_version.as_str())
            .map(|version| vec![(HeaderName::from_static("anthropic-version"), version)])
            .unwrap_or_default()
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        Some(ClientProtocol::Anthropic)
    }

    fn paths(&self, _upstream_model: &str, _settings: &ProviderSettings) -> UpstreamPaths {
        UpstreamPaths {
            chat: "/v1/messages".into(),
            count_tokens: Some("/v1/messages/count_tokens".into()),
            ..UpstreamPaths::default()
        }
    }

    fn chat_request(
        &self,
        chat: &ChatRequest,
        ctx: &RequestContext,
    ) -> Result<Vec<u8>, GatewayError> {
        chat_request(chat, ctx)
    }

    fn chat_response(&self, body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
        chat_response(body, ctx)
    }

    fn chunk_source(&self, ctx: StreamContext) -> Box<dyn ChunkSource> {
        Box::new(AnthropicChunkSource::new(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::test_helpers::{odd_values, REQ_CTX, RESP_CTX};
    use super::*;
    use crate::test_support::mutations;

    #[test]
    fn no_input_panics() {
        let odd = odd_values();
        let requests = [
            fixture!("request_text_system.openai.json"),
            fixture!("request_system_cache_control.openai.json"),
            fixture!("request_images.openai.json"),
            fixture!("request_tools.openai.json"),
            fixture!("request_assistant_text_and_tool.openai.json"),
        ];
        let mut count = 0;
        for req in &requests {
            for variant in mutations(req, &odd) {
                let _ = ChatRequest::with_tree(&variant, |r| chat_request(r, &REQ_CTX));
                count += 1;
            }
        }
        let responses = [
            fixture!("response_text.anthropic.json"),
            fixture!("response_tool_use.anthropic.json"),
            fixture!("response_thinking.anthropic.json"),
            fixture!("response_refusal_empty.anthropic.json"),
        ];
        for resp in &responses {
            for variant in mutations(resp, &odd) {
                let _ = chat_response(variant.to_string().as_bytes(), &RESP_CTX);
                count += 1;
            }
        }
        for raw in [
            &b"\xff\xfe"[..],
            b"{",
            b"null",
            b"1e999",
            b"{\"content\":[]}",
        ] {
            let _ = chat_response(raw, &RESP_CTX);
        }
        assert!(count > 1000, "only {count} variants");
    }
}
