//! Provider kinds: each module holds one provider's request, response and error translation
//! side by side, tested together. This file holds what they share.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use serde::Deserialize;

/// The protocol an upstream speaks.
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

    /// The public base URL, as the provider's official SDK names it, used when `endpoints` is omitted.
    pub fn default_endpoint(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            // Every Azure resource has its own host.
            ProviderKind::AzureOpenai => None,
        }
    }

    /// Where this kind wants its key by default.
    pub fn default_auth(self) -> AuthPlacement {
        match self {
            ProviderKind::Openai => AuthPlacement::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into(),
            },
            ProviderKind::AzureOpenai => AuthPlacement::Header {
                name: "api-key".into(),
                prefix: String::new(),
            },
            ProviderKind::Anthropic => AuthPlacement::Header {
                name: "x-api-key".into(),
                prefix: String::new(),
            },
            // The header, not `?key=`: query strings end up in access logs.
            ProviderKind::Gemini => AuthPlacement::Header {
                name: "x-goog-api-key".into(),
                prefix: String::new(),
            },
        }
    }

    /// Whether the upstream speaks OpenAI's chat format, so bodies pass through with only `model`
    /// rewritten.
    pub fn speaks_openai(self) -> bool {
        matches!(self, ProviderKind::Openai | ProviderKind::AzureOpenai)
    }
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

/// One step of a translated stream, in OpenAI's terms (the gateway's common stream form).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOut {
    /// A `chat.completion.chunk` object.
    Chunk(serde_json::Value),
    /// The upstream failed mid-stream (an error event, or a stream cut without its terminal
    /// event). Nothing follows it.
    Error(crate::error::GatewayError),
    /// The stream ended normally. Nothing follows it.
    Done,
}

/// Turns one upstream's stream events into OpenAI chunks, one event at a time.
pub trait ChunkSource: Send + Sync {
    /// One upstream SSE event; appends zero or more outputs.
    fn on_event(&mut self, event: &crate::sse::SseEvent, out: &mut Vec<StreamOut>);
    /// The upstream's bytes ended. Appends `Done` if the stream had ended properly, or an
    /// `Error` if its terminal event never came. Must append nothing if `Done` or `Error` was
    /// already emitted.
    fn on_end(&mut self, out: &mut Vec<StreamOut>);
}

/// What a stream translator needs to know of the request.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The upstream model id, for providers whose events do not name it.
    pub upstream_model: String,
    /// `created` for every chunk.
    pub created: u64,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
}

/// What every `chat.completion.chunk` of one translated stream carries: the same id, model and
/// `created`. The stream sources set `id` and `model` from the upstream's first event.
#[derive(Debug)]
pub struct ChunkStamp {
    pub ctx: StreamContext,
    /// `None` until the role chunk went out.
    pub id: Option<String>,
    pub model: String,
}

impl ChunkStamp {
    pub fn new(ctx: StreamContext) -> Self {
        ChunkStamp {
            ctx,
            id: None,
            model: String::new(),
        }
    }

    /// A chunk around `choices`.
    pub fn envelope(
        &self,
        choices: serde_json::Value,
    ) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut chunk = serde_json::Map::new();
        chunk.insert(
            "id".into(),
            Value::String(self.id.clone().unwrap_or_default()),
        );
        chunk.insert("object".into(), Value::from("chat.completion.chunk"));
        chunk.insert("created".into(), Value::from(self.ctx.created));
        chunk.insert("model".into(), Value::String(self.model.clone()));
        chunk.insert("choices".into(), choices);
        chunk
    }

    /// A chunk with one choice carrying `delta` (and `usage: null` when usage was asked for, as
    /// OpenAI sends it on every chunk but the last).
    pub fn delta(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> StreamOut {
        let choices = serde_json::json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }]);
        let mut chunk = self.envelope(choices);
        if self.ctx.include_usage {
            chunk.insert("usage".into(), serde_json::Value::Null);
        }
        StreamOut::Chunk(serde_json::Value::Object(chunk))
    }
}
