//! Provider kinds: each module holds one provider's request, response and error translation
//! side by side, tested together. This file holds what they share.

pub mod anthropic;
pub mod gemini;
pub mod json_out;
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
