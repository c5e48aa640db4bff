//! What upstreams speak. Each provider kind is one [`Dialect`]: its public endpoint, where its key
//! goes, its version headers, its URL paths, and its translators (requests, whole answers,
//! streams, embeddings), each in its own module with its tests. The planner and the proxy hooks
//! only ever call a dialect; they never match on a kind.
//!
//! A new kind implements [`Dialect`] in a module here and is registered in two places: a variant
//! of [`ProviderKind`] (its name in the config's `kind`) and its arm in [`ProviderKind::dialect`].

pub mod anthropic;
pub mod gemini;
pub mod json_out;
pub mod openai;

use crate::api::openai::chat::ChatRequest;
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::GatewayError;
use crate::stream::chunk::{ChunkSource, StreamContext};
use crate::stream::NativeStreamFilter;
use serde::Deserialize;
use serde_json::Value;

/// The protocol an upstream speaks: the config's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Mistral, DeepSeek...).
    Openai,
    /// Azure OpenAI: OpenAI's bodies, deployment in the path, `api-key` header.
    AzureOpenai,
    Anthropic,
    Gemini,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure-openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
        }
    }

    /// The kind's dialect: where every kind is registered.
    pub fn dialect(self) -> &'static dyn Dialect {
        match self {
            ProviderKind::Openai => &openai::OpenAi,
            ProviderKind::AzureOpenai => &openai::AzureOpenAi,
            ProviderKind::Anthropic => &anthropic::Anthropic,
            ProviderKind::Gemini => &gemini::Gemini,
        }
    }
}

/// Everything the gateway knows of one provider kind's protocol.
pub trait Dialect: Send + Sync {
    /// The public base URL, as the provider's official SDK names it, used when `endpoints` is
    /// omitted; `None` when every account has its own host (Azure).
    fn default_endpoint(&self) -> Option<&'static str>;

    /// Where the key goes unless the config says otherwise.
    fn default_auth(&self) -> AuthPlacement;

    /// Headers every request carries besides auth (API version headers).
    fn fixed_headers(
        &self,
        _settings: &ProviderSettings,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        Vec::new()
    }

    /// The client protocol this kind speaks as it is: requests in it pass through with only
    /// `model` rewritten, and so do their answers.
    fn native_protocol(&self) -> Option<ClientProtocol>;

    /// The paths (after the endpoint's base path) of one model's operations.
    fn paths(&self, upstream_model: &str, settings: &ProviderSettings) -> UpstreamPaths;

    /// An OpenAI chat request in this kind's format. Kinds whose native protocol is OpenAI's are
    /// never asked.
    fn chat_request(
        &self,
        _chat: &ChatRequest,
        _ctx: &RequestContext,
    ) -> Result<Vec<u8>, GatewayError> {
        Err(GatewayError::new(
            500,
            "an OpenAI request needs no translation",
        ))
    }

    /// This kind's whole chat answer as an OpenAI `chat.completion`.
    fn chat_response(&self, body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError>;

    /// A filter for this kind's streams when they pass through to a client of its native
    /// protocol, for kinds that add events such a client must not see.
    fn native_stream_filter(&self) -> Option<Box<dyn NativeStreamFilter>> {
        None
    }

    /// Whether a stream request of this kind in the client's own protocol may be given
    /// `stream_options.include_usage` so that its tokens can be counted (the extra usage chunk
    /// is then kept from a client that did not ask). Azure's older API versions reject it.
    fn asks_stream_usage(&self) -> bool {
        false
    }

    /// Reads this kind's chat stream as the common chunk form.
    fn chunk_source(&self, ctx: StreamContext) -> Box<dyn ChunkSource>;

    /// An OpenAI embeddings request (a parsed tree) in this kind's format. Asked only of kinds
    /// with an embeddings path whose native protocol is not OpenAI's.
    fn embeddings_request(
        &self,
        _request: &Value,
        _upstream_model: &str,
    ) -> Result<EmbeddingsRequest, GatewayError> {
        Err(GatewayError::new(500, "no embeddings translation"))
    }

    /// This kind's embeddings answer as OpenAI's embedding list.
    fn embeddings_response(
        &self,
        _body: &[u8],
        _model: &str,
        _base64: bool,
    ) -> Result<Value, GatewayError> {
        Err(GatewayError::new(500, "no embeddings translation"))
    }
}

/// Where each operation of one model goes, rendered once when the configuration is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamPaths {
    pub chat: String,
    /// Streamed chat, where the kind has another path for it.
    pub chat_stream: Option<String>,
    pub embeddings: Option<String>,
    /// Several embedding inputs in one call, where the kind has another path for it.
    pub embeddings_batch: Option<String>,
    pub count_tokens: Option<String>,
}

/// An embeddings request in a provider's format.
#[derive(Debug)]
pub struct EmbeddingsRequest {
    pub body: Vec<u8>,
    /// Several inputs in one call (a batch path where the kind has one).
    pub batch: bool,
    /// The client asked for `encoding_format: "base64"`, which the answer must be turned into.
    pub base64: bool,
}

/// Where a provider's credential goes on the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPlacement {
    /// A header, value = prefix + key (`Authorization: Bearer KEY`, `x-api-key: KEY`).
    Header { name: String, prefix: String },
    /// A URL query parameter (`?key=KEY`).
    Query { name: String },
    /// A top-level JSON body field (`{"api_key": KEY, ...}`).
    Body { field: String },
    /// No credential (local servers).
    None,
}

/// What a response translator needs besides the body.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    /// The upstream model id, for providers whose responses do not name it.
    pub upstream_model: &'a str,
    /// OpenAI's `created` for providers whose responses carry no timestamp.
    pub created: u64,
}

/// Options for building an upstream request.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub upstream_model: &'a str,
    /// `max_tokens` to send when the client gave none and the provider requires one (Anthropic).
    pub default_max_tokens: u32,
}
