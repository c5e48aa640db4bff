//! Gemini generateContent (AI Studio, v1beta) <-> OpenAI chat completions.
//!
//! Requests: OpenAI messages become `contents` turns (`user`/`model`), system and developer messages
//! become `systemInstruction`, sampling options become `generationConfig`, and tools become
//! `functionDeclarations`. Responses: each candidate becomes a choice; Gemini sends no tool-call ids,
//! so fresh ones are generated. Streams: `streamGenerateContent?alt=sse` events become
//! `chat.completion.chunk` objects ([`GeminiChunkSource`]).
//!
//! One module per concern, each with its tests: `request` (chat requests), `response` (whole
//! answers), `stream` (streamed answers), `embeddings`, and `wire` (Gemini's answers as typed
//! structs, which `response`, `stream` and `embeddings` read); this module is the [`Dialect`].

mod embeddings;
mod request;
mod response;
mod stream;
mod wire;

pub use embeddings::{embed_request, embed_response};
pub use request::chat_request;
pub use response::chat_response;
pub use stream::GeminiChunkSource;

use crate::api::openai::chat::ChatRequest;
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::GatewayError;
use crate::providers::openai::encode_component;
use crate::providers::{
    AuthPlacement, Dialect, EmbeddingsRequest, RequestContext, ResponseContext, UpstreamPaths,
};
use crate::stream::chunk::{ChunkSource, StreamContext};
use serde_json::Value;

/// Gemini's generateContent API (AI Studio, v1beta).
pub struct Gemini;

impl Dialect for Gemini {
    fn default_endpoint(&self) -> Option<&'static str> {
        Some("https://generativelanguage.googleapis.com")
    }

    fn default_auth(&self) -> AuthPlacement {
        // The header, not `?key=`: query strings end up in access logs.
        AuthPlacement::Header {
            name: "x-goog-api-key".into(),
            prefix: String::new(),
        }
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        None
    }

    fn paths(&self, upstream_model: &str, _settings: &ProviderSettings) -> UpstreamPaths {
        let id = encode_component(upstream_model);
        UpstreamPaths {
            chat: format!("/v1beta/models/{id}:generateContent"),
            chat_stream: Some(format!("/v1beta/models/{id}:streamGenerateContent?alt=sse")),
            embeddings: Some(format!("/v1beta/models/{id}:embedContent")),
            embeddings_batch: Some(format!("/v1beta/models/{id}:batchEmbedContents")),
            count_tokens: None,
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
        Box::new(GeminiChunkSource::new(ctx))
    }

    fn embeddings_request(
        &self,
        request: &Value,
        upstream_model: &str,
    ) -> Result<EmbeddingsRequest, GatewayError> {
        embed_request(request, upstream_model)
    }

    fn embeddings_response(
        &self,
        body: &[u8],
        model: &str,
        base64: bool,
    ) -> Result<Value, GatewayError> {
        embed_response(body, model, base64)
    }
}

/// Helpers shared by the unit tests of the translators.
#[cfg(test)]
mod testing {
    use serde_json::Value;

    /// Stands in for generated ids in expected fixtures.
    pub const GENERATED: &str = "<generated>";

    /// Every Gemini `finishReason` and the OpenAI `finish_reason` it becomes, for the whole-answer
    /// and the stream translators alike.
    pub const FINISH_REASONS: [(&str, &str); 12] = [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("RECITATION", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("LANGUAGE", "stop"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ];

    /// Loads an (input, expected) fixture pair from tests/fixtures/gemini/.
    macro_rules! fixture {
        ($name:literal, $from:literal, $to:literal) => {
            (
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gemini/",
                    $name,
                    ".",
                    $from,
                    ".json"
                )),
                $crate::providers::gemini::testing::parse(include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gemini/",
                    $name,
                    ".",
                    $to,
                    ".json"
                ))),
            )
        };
    }

    pub fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("fixture is valid JSON")
    }

    pub(crate) use fixture;
}
