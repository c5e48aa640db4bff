//! An upstream call: what the gateway sends for one client request (path, body) and how it must
//! treat the answer. Built once from the client's body; every attempt re-sends the same bytes.

use crate::anthropic_api;
use crate::chat_request::{ChatRequest, RawChatRequest};
use crate::error::GatewayError;
use crate::frontend::{self, ChatEnvelope, Endpoint};
use crate::ids::unix_now;
use crate::providers::{self, gemini, openai, AuthPlacement, ProviderKind, RequestContext};
use crate::registry::{Model, Registry};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Bytes pass through untouched: the upstream already speaks the client's protocol.
    PassThrough,
    /// Buffered and translated when complete.
    Translate,
    /// A stream, translated event by event.
    Stream,
}

/// What the upstream is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    CountTokens,
    /// Embeddings; `batch` when Gemini gets several inputs in one call.
    Embed {
        batch: bool,
        base64: bool,
    },
}

pub struct UpstreamCall {
    /// Keeps the configuration the request started with alive until it ends.
    pub registry: Arc<Registry>,
    pub model: Arc<Model>,
    pub endpoint: Endpoint,
    pub operation: Operation,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of an OpenAI stream.
    pub include_usage: bool,
    /// Path (and query) after the endpoint's base path.
    pub path: String,
    pub body: Bytes,
    pub response_mode: ResponseMode,
    /// OpenAI's `created` for translated responses.
    pub created: u64,
    /// Instances already serving this call, which a hedged leg avoids.
    pub instances_in_use: std::sync::Mutex<Vec<pingora_core::protocols::l4::socket::SocketAddr>>,
    /// What the client's request may spend upstream, shared by all the calls planned for it
    /// (fallbacks get the first call's: see [`UpstreamCall::sharing_budget`]).
    pub budget: Arc<RequestBudget>,
}

/// What one client request may spend upstream, shared by every leg (hedges, fallbacks) and every
/// attempt made for it: its deadline and its number of upstream calls, set by the client's
/// model's `total_timeout` and `max_upstream_calls`.
#[derive(Debug)]
pub struct RequestBudget {
    /// When the whole request runs out of time.
    pub deadline: Instant,
    pub max_calls: u32,
    calls_left: AtomicU32,
}

impl RequestBudget {
    pub fn new(total_timeout: Duration, max_calls: u32, now: Instant) -> RequestBudget {
        RequestBudget {
            max_calls,
            calls_left: AtomicU32::new(max_calls),
            // A timeout too large to add is no deadline at all: a century stands in for it.
            deadline: now
                .checked_add(total_timeout)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
                .unwrap_or(now),
        }
    }

    /// Takes one upstream call from the budget; false (and nothing taken) when none is left.
    pub fn take_call(&self) -> bool {
        self.calls_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Gives back a call taken for an attempt that never reached an upstream.
    pub fn return_call(&self) {
        let _ = self
            .calls_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_calls).then_some(n + 1)
            });
    }

    pub fn calls_left(&self) -> u32 {
        self.calls_left.load(Ordering::Acquire)
    }

    /// Upstream calls made so far, over every leg.
    pub fn calls_made(&self) -> u32 {
        self.max_calls.saturating_sub(self.calls_left())
    }
}

/// The parts of a plan that depend on the endpoint.
struct Planned {
    model: Arc<Model>,
    operation: Operation,
    stream: bool,
    include_usage: bool,
    body: Vec<u8>,
    mode: ResponseMode,
}

impl UpstreamCall {
    /// Plans the call for a client request to `endpoint` with `body`.
    pub fn plan(
        registry: &Arc<Registry>,
        endpoint: Endpoint,
        body: &Bytes,
    ) -> Result<UpstreamCall, GatewayError> {
        Self::plan_for(registry, endpoint, body, None)
    }

    /// Plans the same client request for another model (`model` overrides the one the client
    /// named), as fallbacks need.
    pub fn plan_for(
        registry: &Arc<Registry>,
        endpoint: Endpoint,
        body: &Bytes,
        model: Option<&str>,
    ) -> Result<UpstreamCall, GatewayError> {
        let planned = match endpoint {
            Endpoint::ChatCompletions => plan_chat(registry, body, model)?,
            Endpoint::Complete => plan_complete(registry, body, model)?,
            Endpoint::Messages => plan_messages(registry, body, model)?,
            Endpoint::CountTokens => plan_count_tokens(registry, body, model)?,
            Endpoint::Embeddings => plan_embeddings(registry, body, model)?,
            Endpoint::Models => {
                return Err(GatewayError::new(500, "models are listed, not proxied"));
            }
        };
        let Planned {
            model,
            operation,
            stream,
            include_usage,
            body,
            mode,
        } = planned;
        let provider = &model.provider;
        let body = match &provider.auth {
            AuthPlacement::Body { field } => {
                insert_field(&body, field, provider.credential.expose())
            }
            _ => body,
        };
        Ok(UpstreamCall {
            path: upstream_path(&model, operation, stream),
            registry: registry.clone(),
            endpoint,
            operation,
            stream,
            include_usage,
            body: Bytes::from(body),
            response_mode: mode,
            created: unix_now(),
            instances_in_use: Default::default(),
            budget: Arc::new(RequestBudget::new(
                model.total_timeout,
                model.max_upstream_calls,
                Instant::now(),
            )),
            model,
        })
    }

    /// This call, spending `budget` (the client's request's) instead of its own: fallbacks are
    /// planned as calls of their own, but the request's limits span the whole chain.
    pub fn sharing_budget(mut self, budget: Arc<RequestBudget>) -> UpstreamCall {
        self.budget = budget;
        self
    }
}

impl Planned {
    /// A call whose body and answer pass through (the upstream speaks the client's protocol).
    fn passthrough(model: Arc<Model>, body: Vec<u8>, operation: Operation, stream: bool) -> Self {
        Planned {
            model,
            operation,
            stream,
            include_usage: false,
            body,
            mode: ResponseMode::PassThrough,
        }
    }
}

fn lookup(registry: &Registry, name: &str) -> Result<Arc<Model>, GatewayError> {
    registry
        .models
        .get(name)
        .cloned()
        .ok_or_else(|| GatewayError::model_not_found(name))
}

/// The client's body with the upstream model id spliced in.
fn spliced(body: &[u8], envelope: &ChatEnvelope, model: &Model) -> Vec<u8> {
    openai::splice_model(
        body,
        envelope.model_span.clone(),
        &model.upstream_model_json,
    )
}

fn stream_mode(stream: bool) -> ResponseMode {
    if stream {
        ResponseMode::Stream
    } else {
        ResponseMode::Translate
    }
}

fn plan_chat(
    registry: &Registry,
    body: &Bytes,
    model: Option<&str>,
) -> Result<Planned, GatewayError> {
    // One pass over the body serves both: the envelope to route, and the raw members a
    // translated request is read from.
    let request = RawChatRequest::parse(body)?;
    let envelope = request.envelope()?;
    let model = lookup(registry, model.unwrap_or(&envelope.model))?;
    if model.provider.kind.speaks_openai() {
        let body = spliced(body, &envelope, &model);
        return Ok(Planned::passthrough(
            model,
            body,
            Operation::Chat,
            envelope.stream,
        ));
    }
    let chat = request.into_request()?;
    Ok(Planned {
        body: translate_chat(&model, &chat)?,
        include_usage: chat
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        model,
        operation: Operation::Chat,
        stream: envelope.stream,
        mode: stream_mode(envelope.stream),
    })
}

fn plan_complete(
    registry: &Registry,
    body: &Bytes,
    model: Option<&str>,
) -> Result<Planned, GatewayError> {
    let (name, mut chat) = frontend::complete_to_chat(body)?;
    let model = lookup(registry, model.unwrap_or(&name))?;
    let body = if model.provider.kind.speaks_openai() {
        chat["model"] = model.upstream_model.as_str().into();
        chat.to_string().into_bytes()
    } else {
        ChatRequest::with_tree(&chat, |chat| translate_chat(&model, chat))?
    };
    Ok(Planned {
        model,
        operation: Operation::Chat,
        stream: false,
        include_usage: false,
        body,
        mode: ResponseMode::Translate,
    })
}

fn plan_messages(
    registry: &Registry,
    body: &Bytes,
    model: Option<&str>,
) -> Result<Planned, GatewayError> {
    let envelope = frontend::parse_chat_envelope(body)?;
    let model = lookup(registry, model.unwrap_or(&envelope.model))?;
    if model.provider.kind == ProviderKind::Anthropic {
        let body = spliced(body, &envelope, &model);
        return Ok(Planned::passthrough(
            model,
            body,
            Operation::Chat,
            envelope.stream,
        ));
    }
    let mut chat = anthropic_api::request_to_openai(&frontend::parse_chat_tree(body)?)?;
    let body = if model.provider.kind.speaks_openai() {
        chat["model"] = model.upstream_model.as_str().into();
        // OpenAI's own API rejects `top_k`, which Anthropic clients may send.
        if let Some(obj) = chat.as_object_mut() {
            obj.remove("top_k");
        }
        chat.to_string().into_bytes()
    } else {
        ChatRequest::with_tree(&chat, |chat| translate_chat(&model, chat))?
    };
    Ok(Planned {
        model,
        operation: Operation::Chat,
        stream: envelope.stream,
        // The Anthropic stream reports usage in `message_delta`.
        include_usage: true,
        body,
        mode: stream_mode(envelope.stream),
    })
}

fn plan_count_tokens(
    registry: &Registry,
    body: &Bytes,
    model: Option<&str>,
) -> Result<Planned, GatewayError> {
    let envelope = frontend::parse_chat_envelope(body)?;
    let model = lookup(registry, model.unwrap_or(&envelope.model))?;
    if model.provider.kind != ProviderKind::Anthropic {
        return Err(GatewayError::bad_request(format!(
            "count_tokens is served for Anthropic models only; `{}` is served by a {} provider",
            model.name,
            model.provider.kind.as_str()
        ))
        .with_param("model"));
    }
    let body = spliced(body, &envelope, &model);
    Ok(Planned::passthrough(
        model,
        body,
        Operation::CountTokens,
        false,
    ))
}

fn plan_embeddings(
    registry: &Registry,
    body: &Bytes,
    model: Option<&str>,
) -> Result<Planned, GatewayError> {
    let envelope = frontend::parse_chat_envelope(body)?;
    let model = lookup(registry, model.unwrap_or(&envelope.model))?;
    match model.provider.kind {
        ProviderKind::Openai | ProviderKind::AzureOpenai => {
            let body = spliced(body, &envelope, &model);
            let embed = Operation::Embed {
                batch: false,
                base64: false,
            };
            Ok(Planned::passthrough(model, body, embed, false))
        }
        ProviderKind::Gemini => {
            let request = frontend::parse_chat_tree(body)?;
            let embed = gemini::embed_request(&request, &model.upstream_model)?;
            Ok(Planned {
                model,
                operation: Operation::Embed {
                    batch: embed.batch,
                    base64: embed.base64,
                },
                stream: false,
                include_usage: false,
                body: embed.body,
                mode: ResponseMode::Translate,
            })
        }
        ProviderKind::Anthropic => Err(GatewayError::bad_request(format!(
            "`{}` is served by Anthropic, which has no embeddings API",
            model.name
        ))
        .with_param("model")),
    }
}

/// An OpenAI chat request in the format of a provider that does not speak OpenAI's.
fn translate_chat(model: &Model, chat: &ChatRequest) -> Result<Vec<u8>, GatewayError> {
    let ctx = RequestContext {
        upstream_model: &model.upstream_model,
        default_max_tokens: model.default_max_tokens,
    };
    match model.provider.kind {
        ProviderKind::Anthropic => providers::anthropic::chat_request(chat, &ctx),
        ProviderKind::Gemini => providers::gemini::chat_request(chat, &ctx),
        // The planners send OpenAI-speaking providers the request itself.
        ProviderKind::Openai | ProviderKind::AzureOpenai => Err(GatewayError::new(
            500,
            "an OpenAI request needs no translation",
        )),
    }
}

/// The path for an operation, after the endpoint's base path.
fn upstream_path(model: &Model, operation: Operation, stream: bool) -> String {
    let provider = &model.provider;
    let id = encode_component(&model.upstream_model);
    let azure = |what: &str| {
        format!(
            "/openai/deployments/{id}/{what}?api-version={}",
            encode_component(provider.api_version.as_deref().unwrap_or_default()),
        )
    };
    match (provider.kind, operation) {
        (ProviderKind::Openai, Operation::Embed { .. }) => "/embeddings".into(),
        (ProviderKind::Openai, _) => "/chat/completions".into(),
        (ProviderKind::AzureOpenai, Operation::Embed { .. }) => azure("embeddings"),
        (ProviderKind::AzureOpenai, _) => azure("chat/completions"),
        (ProviderKind::Anthropic, Operation::CountTokens) => "/v1/messages/count_tokens".into(),
        (ProviderKind::Anthropic, _) => "/v1/messages".into(),
        (ProviderKind::Gemini, Operation::Embed { batch: true, .. }) => {
            format!("/v1beta/models/{id}:batchEmbedContents")
        }
        (ProviderKind::Gemini, Operation::Embed { batch: false, .. }) => {
            format!("/v1beta/models/{id}:embedContent")
        }
        (ProviderKind::Gemini, _) if stream => {
            format!("/v1beta/models/{id}:streamGenerateContent?alt=sse")
        }
        (ProviderKind::Gemini, _) => format!("/v1beta/models/{id}:generateContent"),
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
    fn the_budget_counts_calls_down_to_zero_and_no_further() {
        let budget = RequestBudget::new(Duration::from_secs(1), 2, Instant::now());
        assert_eq!((budget.calls_left(), budget.calls_made()), (2, 0));
        assert!(budget.take_call());
        assert!(budget.take_call());
        assert!(!budget.take_call());
        assert_eq!((budget.calls_left(), budget.calls_made()), (0, 2));
        budget.return_call();
        assert_eq!(budget.calls_made(), 1);
        assert!(budget.take_call());
        // Returning more than was taken never raises the cap.
        for _ in 0..5 {
            budget.return_call();
        }
        assert_eq!(budget.calls_left(), 2);
    }

    #[test]
    fn a_budget_deadline_never_overflows() {
        let now = Instant::now();
        let budget = RequestBudget::new(Duration::MAX, 1, now);
        assert!(budget.deadline > now);
        let budget = RequestBudget::new(Duration::from_secs(3), 1, now);
        assert_eq!(budget.deadline, now + Duration::from_secs(3));
    }

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode_component("gpt-4o_mini.v1~x"), "gpt-4o_mini.v1~x");
        assert_eq!(encode_component("a/b?c&d=e f"), "a%2Fb%3Fc%26d%3De%20f");
    }
}
