//! An upstream call: what the gateway sends for one client request (path, body) and how it must
//! treat the answer. Built once from the client's body; every attempt re-sends the same bytes.

use crate::api::{ClientEndpoint, ClientProtocol, ClientRequest};
use crate::error::GatewayError;
use crate::experiments::Arm;
use crate::ids::unix_now;
use crate::limits::Accounting;
use crate::providers::openai::usage_chunk;
use crate::providers::{openai, AuthPlacement, RequestContext};
use crate::registry::{Model, Registry};
use crate::upstream::budget::RequestBudget;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// How the upstream's answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Bytes pass through untouched: the upstream already speaks the client's protocol.
    PassThrough,
    /// Buffered and translated when complete.
    TranslateWhole,
    /// A stream, translated event by event.
    TranslateStream,
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

pub struct PlannedCall {
    /// Keeps the configuration the request started with alive until it ends.
    pub registry: Arc<Registry>,
    pub model: Arc<Model>,
    pub endpoint: ClientEndpoint,
    pub operation: Operation,
    pub stream: bool,
    /// The client asked for a usage chunk at the end of an OpenAI stream.
    pub include_usage: bool,
    /// The gateway asked for the usage chunk on the client's behalf (to count tokens): it is
    /// kept from the client.
    pub hides_usage_chunk: bool,
    /// The rate-limit headers and reported usage of the client's request, shared by every call
    /// made for it; `None` when no limit applies.
    pub accounting: Option<Arc<Accounting>>,
    /// Path (and query) after the endpoint's base path.
    pub path: String,
    pub body: Bytes,
    pub response_mode: ResponseMode,
    /// OpenAI's `created` for translated responses.
    pub created: u64,
    /// Instances already serving this call, which a hedged leg avoids.
    pub instances_in_use: std::sync::Mutex<Vec<pingora_core::protocols::l4::socket::SocketAddr>>,
    /// What the client's request may spend upstream, shared by all the calls planned for it
    /// (fallbacks get the first call's: see [`PlannedCall::sharing_budget`]).
    pub budget: Arc<RequestBudget>,
    /// The experiment arm the client's request was assigned to, when it named an experiment.
    pub variant: Option<Arc<Arm>>,
    /// Whether and where its answer is cached (models that cache; set after the lookup).
    pub cache: Option<crate::cache::CacheFill>,
}

/// The parts of a plan that depend on the endpoint and the provider.
struct UpstreamBody {
    operation: Operation,
    include_usage: bool,
    hides_usage_chunk: bool,
    body: Vec<u8>,
    mode: ResponseMode,
}

impl PlannedCall {
    /// Plans the call for a client's request, to the model it named, or to `model` instead (an
    /// experiment's arm, a fallback).
    pub fn plan_for(
        registry: &Arc<Registry>,
        request: &ClientRequest,
        model: &Arc<Model>,
        accounting: Option<&Arc<Accounting>>,
    ) -> Result<PlannedCall, GatewayError> {
        let model = model.clone();
        let planned = match request.endpoint {
            ClientEndpoint::ChatCompletions
            | ClientEndpoint::Complete
            | ClientEndpoint::Messages => {
                // Streams are asked for their usage when something counts it.
                let counts_tokens = accounting.is_some_and(|a| a.counts_tokens)
                    || crate::observe::wants_usage(&model);
                plan_chat(request, &model, counts_tokens)?
            }
            ClientEndpoint::CountTokens => plan_count_tokens(request, &model)?,
            ClientEndpoint::Embeddings => plan_embeddings(request, &model)?,
            ClientEndpoint::Models | ClientEndpoint::Compare | ClientEndpoint::Batch => {
                // Listed, or split into chat requests, each planned on its own.
                return Err(GatewayError::new(500, "not an upstream call"));
            }
        };
        let UpstreamBody {
            operation,
            include_usage,
            hides_usage_chunk,
            body,
            mode,
        } = planned;
        let stream = request.envelope.stream;
        let provider = &model.provider;
        let body = match &provider.auth {
            AuthPlacement::Body { field } => {
                // One key only (the config refuses several with a body placement): the one in
                // use now, read once for this request.
                let key = provider
                    .credentials
                    .current(Instant::now())
                    .ok_or_else(|| {
                        GatewayError::new(
                            503,
                            format!("Provider `{}` has no valid key", provider.name),
                        )
                        .with_code(crate::error::ErrorCode::UpstreamUnavailable)
                    })?;
                insert_field(&body, field, key.secret())
            }
            _ => body,
        };
        Ok(PlannedCall {
            path: upstream_path(&model, operation, stream)?,
            registry: registry.clone(),
            budget: Arc::new(RequestBudget::new(
                model.total_timeout,
                model.max_upstream_calls,
                Instant::now(),
            )),
            model,
            endpoint: request.endpoint,
            operation,
            stream,
            include_usage,
            hides_usage_chunk,
            accounting: accounting.cloned(),
            body: Bytes::from(body),
            response_mode: mode,
            created: unix_now(),
            instances_in_use: Default::default(),
            variant: None,
            cache: None,
        })
    }

    /// This call, for a request assigned to an experiment's arm.
    pub fn in_variant(mut self, variant: Option<Arc<Arm>>) -> PlannedCall {
        self.variant = variant;
        self
    }

    /// This call, spending `budget` (the client's request's) instead of its own: fallbacks are
    /// planned as calls of their own, but the request's limits span the whole chain.
    pub fn sharing_budget(mut self, budget: Arc<RequestBudget>) -> PlannedCall {
        self.budget = budget;
        self
    }
}

impl UpstreamBody {
    /// A call whose body and answer pass through (the upstream speaks the client's protocol):
    /// the client's bytes with the upstream model id spliced in.
    fn passthrough(request: &ClientRequest, model: &Model, operation: Operation) -> Self {
        UpstreamBody {
            operation,
            include_usage: false,
            hides_usage_chunk: false,
            body: openai::splice_model(
                request.body,
                request.envelope.model_span.clone(),
                &model.upstream_model_json,
            ),
            mode: ResponseMode::PassThrough,
        }
    }
}

fn stream_mode(stream: bool) -> ResponseMode {
    if stream {
        ResponseMode::TranslateStream
    } else {
        ResponseMode::TranslateWhole
    }
}

/// Chat in any client protocol (OpenAI's chat completions, Anthropic's Messages, `/v1/complete`)
/// for any provider.
fn plan_chat(
    request: &ClientRequest,
    model: &Model,
    counts_tokens: bool,
) -> Result<UpstreamBody, GatewayError> {
    let client = request.endpoint.protocol();
    let native = model.provider.dialect.native_protocol();
    // `/v1/complete` has its own shape: it passes through nowhere.
    if native == Some(client) && request.endpoint != ClientEndpoint::Complete {
        let mut planned = UpstreamBody::passthrough(request, model, Operation::Chat);
        // Counting a stream's tokens needs its usage: ask for it on the client's behalf, and
        // keep the extra chunk from the client. A client's own `stream_options` is left alone.
        if counts_tokens
            && request.envelope.stream
            && model.provider.dialect.asks_stream_usage()
            && request.member("stream_options").is_none()
        {
            planned.body = insert_member(&planned.body, usage_chunk::INCLUDE_USAGE.as_bytes());
            planned.hides_usage_chunk = true;
        }
        return Ok(planned);
    }
    // The Anthropic stream reports usage in `message_delta`: always ask for it.
    let mut include_usage = request.endpoint == ClientEndpoint::Messages;
    let body = if native == Some(ClientProtocol::OpenAi) {
        // An adapted request (Messages, complete) for an upstream that speaks OpenAI.
        let mut chat = request.openai_chat_tree()?;
        if let Some(fields) = chat.as_object_mut() {
            fields.insert("model".into(), model.upstream_model.as_str().into());
            // OpenAI's own API rejects `top_k`, which Anthropic clients may send.
            fields.remove("top_k");
        }
        serde_json::to_vec(&chat)
            .map_err(|e| GatewayError::new(500, format!("could not encode the request: {e}")))?
    } else {
        let chat = request.openai_chat()?;
        if request.endpoint == ClientEndpoint::ChatCompletions {
            include_usage = chat
                .get("stream_options")
                .and_then(|options| options.get("include_usage"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
        }
        let ctx = RequestContext {
            upstream_model: &model.upstream_model,
            default_max_tokens: model.default_max_tokens,
        };
        model.provider.dialect.chat_request(&chat, &ctx)?
    };
    Ok(UpstreamBody {
        operation: Operation::Chat,
        include_usage,
        hides_usage_chunk: false,
        body,
        mode: stream_mode(request.envelope.stream),
    })
}

fn plan_count_tokens(request: &ClientRequest, model: &Model) -> Result<UpstreamBody, GatewayError> {
    if model.paths.count_tokens.is_none() || !speaks(model, ClientProtocol::Anthropic) {
        return Err(GatewayError::bad_request(format!(
            "count_tokens is served for Anthropic models only; `{}` is served by a {} provider",
            model.name,
            model.provider.kind.as_str()
        ))
        .with_param("model"));
    }
    Ok(UpstreamBody::passthrough(
        request,
        model,
        Operation::CountTokens,
    ))
}

fn plan_embeddings(request: &ClientRequest, model: &Model) -> Result<UpstreamBody, GatewayError> {
    if model.paths.embeddings.is_none() {
        return Err(GatewayError::bad_request(format!(
            "`{}` is served by a {} provider, which has no embeddings API",
            model.name,
            model.provider.kind.as_str()
        ))
        .with_param("model"));
    }
    let embed = Operation::Embed {
        batch: false,
        base64: false,
    };
    if speaks(model, ClientProtocol::OpenAi) {
        return Ok(UpstreamBody::passthrough(request, model, embed));
    }
    let embed = model
        .provider
        .dialect
        .embeddings_request(&request.tree()?, &model.upstream_model)?;
    Ok(UpstreamBody {
        operation: Operation::Embed {
            batch: embed.batch,
            base64: embed.base64,
        },
        include_usage: false,
        hides_usage_chunk: false,
        body: embed.body,
        mode: ResponseMode::TranslateWhole,
    })
}

/// Whether the model's provider speaks `protocol` as it is.
fn speaks(model: &Model, protocol: ClientProtocol) -> bool {
    model.provider.dialect.native_protocol() == Some(protocol)
}

/// The path for an operation, after the endpoint's base path.
fn upstream_path(
    model: &Model,
    operation: Operation,
    stream: bool,
) -> Result<String, GatewayError> {
    let paths = &model.paths;
    let path = match operation {
        Operation::Chat if stream => paths.chat_stream.as_ref().unwrap_or(&paths.chat),
        Operation::Chat => &paths.chat,
        Operation::CountTokens => paths.count_tokens.as_ref().ok_or_else(no_path)?,
        Operation::Embed { batch: true, .. } => paths
            .embeddings_batch
            .as_ref()
            .or(paths.embeddings.as_ref())
            .ok_or_else(no_path)?,
        Operation::Embed { batch: false, .. } => paths.embeddings.as_ref().ok_or_else(no_path)?,
    };
    Ok(path.clone())
}

fn no_path() -> GatewayError {
    GatewayError::new(500, "the provider has no path for this operation")
}

/// Inserts `"field": value` as the first member of the body's top-level object, without
/// re-serialising the rest.
pub fn insert_field(body: &[u8], field: &str, value: &str) -> Vec<u8> {
    let member = format!(
        "{}:{}",
        serde_json::Value::from(field),
        serde_json::Value::from(value)
    );
    insert_member(body, member.as_bytes())
}

/// Inserts `member` (`"name":value`, as JSON) as the first member of the body's top-level
/// object, without re-serialising the rest.
pub fn insert_member(body: &[u8], member: &[u8]) -> Vec<u8> {
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
    out.extend_from_slice(member);
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
}
