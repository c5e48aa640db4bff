//! What clients speak: which endpoint a request is for, the fields read to route it, and each
//! client protocol's own module (`openai`, `anthropic`).

pub mod anthropic;
pub mod fanout;
pub mod openai;

use crate::error::ErrorCode;
use crate::error::GatewayError;
use openai::chat::{ChatRequest, RawChatRequest};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::ops::Range;

/// A client endpoint that the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEndpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/complete`: `{"text", "model_type"}` -> `{"data", "model_used"}`
    Complete,
    /// `GET /v1/models`
    Models,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/messages`: Anthropic's Messages API, over any provider.
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic upstreams only).
    CountTokens,
    /// `POST /v1/compare`: one chat request to several models at once.
    Compare,
    /// `POST /v1/batch`: several chat requests at once.
    Batch,
}

/// The protocol a client speaks, which decides the shape of its errors and streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    OpenAi,
    Anthropic,
}

impl ClientEndpoint {
    pub fn protocol(self) -> ClientProtocol {
        match self {
            ClientEndpoint::Messages | ClientEndpoint::CountTokens => ClientProtocol::Anthropic,
            _ => ClientProtocol::OpenAi,
        }
    }
}

impl ClientProtocol {
    /// An error body in this protocol's shape.
    pub fn error_body(self, e: &GatewayError) -> bytes::Bytes {
        match self {
            ClientProtocol::OpenAi => e.to_openai_body(),
            ClientProtocol::Anthropic => crate::api::anthropic::error_body(e),
        }
    }
}

/// Matches method and path (query ignored; `/v1` prefix optional, as OpenAI SDKs allow).
pub fn endpoint_for(method: &http::Method, path: &str) -> Result<ClientEndpoint, GatewayError> {
    let path = path.split('?').next().unwrap_or("");
    let path = path.strip_suffix('/').unwrap_or(path);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let (endpoint, allowed) = match path {
        "/chat/completions" => (ClientEndpoint::ChatCompletions, http::Method::POST),
        "/complete" => (ClientEndpoint::Complete, http::Method::POST),
        "/models" => (ClientEndpoint::Models, http::Method::GET),
        "/embeddings" => (ClientEndpoint::Embeddings, http::Method::POST),
        "/messages" => (ClientEndpoint::Messages, http::Method::POST),
        "/messages/count_tokens" => (ClientEndpoint::CountTokens, http::Method::POST),
        "/compare" => (ClientEndpoint::Compare, http::Method::POST),
        "/batch" => (ClientEndpoint::Batch, http::Method::POST),
        _ => {
            return Err(GatewayError::new(404, format!("Unknown endpoint: {path}"))
                .with_code(ErrorCode::UnknownUrl))
        }
    };
    if *method != allowed {
        return Err(GatewayError::new(
            405,
            format!("Method {method} is not allowed here; use {allowed}"),
        )
        .with_kind("invalid_request_error")
        .with_code(ErrorCode::UnknownUrl));
    }
    Ok(endpoint)
}

/// The protocol a request's path speaks, whatever its method: an answer to a request for no
/// endpoint (a wrong method, an Anthropic path the gateway does not serve) is still written in
/// the shape the client's SDK reads.
pub fn protocol_of_path(path: &str) -> ClientProtocol {
    let path = path.split('?').next().unwrap_or("");
    let path = path.strip_prefix("/v1").unwrap_or(path);
    if path == "/messages" || path.starts_with("/messages/") {
        ClientProtocol::Anthropic
    } else {
        ClientProtocol::OpenAi
    }
}

/// A client's request, read once from its body: what the planner needs to route it and, for
/// each model that may serve it (the first and every fallback), to write the upstream body.
pub struct ClientRequest<'a> {
    pub endpoint: ClientEndpoint,
    /// The body as the client sent it, for upstreams that speak the client's protocol.
    pub body: &'a [u8],
    /// `model`, where it is in the body, and `stream`.
    pub envelope: ChatEnvelope,
    form: RequestForm<'a>,
}

enum RequestForm<'a> {
    /// A JSON object's top-level members, each kept raw (chat, messages, embeddings).
    Members(RawChatRequest<'a>),
    /// `/v1/complete`, already adapted into an OpenAI chat request.
    Chat(Value),
}

impl<'a> ClientRequest<'a> {
    /// Reads a request for `endpoint` (not [`ClientEndpoint::Models`], which has no body).
    pub fn read(endpoint: ClientEndpoint, body: &'a [u8]) -> Result<Self, GatewayError> {
        let (envelope, form) = match endpoint {
            ClientEndpoint::Complete => {
                let (model, chat) = openai::complete::complete_to_chat(body)?;
                let envelope = ChatEnvelope {
                    model,
                    model_span: 0..0,
                    stream: false,
                };
                (envelope, RequestForm::Chat(chat))
            }
            _ => {
                let members = RawChatRequest::parse(body)?;
                (members.envelope()?, RequestForm::Members(members))
            }
        };
        Ok(ClientRequest {
            endpoint,
            body,
            envelope,
            form,
        })
    }

    /// The request as an OpenAI chat request, as the translators read it.
    pub fn openai_chat(&self) -> Result<ChatRequest<'a>, GatewayError> {
        match (&self.form, self.endpoint) {
            (RequestForm::Members(members), ClientEndpoint::ChatCompletions) => {
                members.to_request()
            }
            _ => ChatRequest::from_tree(self.openai_chat_tree()?),
        }
    }

    /// The request as an OpenAI chat request tree, for adapted requests (Anthropic's Messages,
    /// `/v1/complete`).
    pub fn openai_chat_tree(&self) -> Result<Value, GatewayError> {
        match &self.form {
            RequestForm::Chat(chat) => Ok(chat.clone()),
            RequestForm::Members(members) if self.endpoint == ClientEndpoint::Messages => {
                anthropic::request_to_openai(&members.to_tree()?)
            }
            RequestForm::Members(members) => members.to_tree(),
        }
    }

    /// One top-level member of the client's body, as raw JSON.
    pub fn member(&self, name: &str) -> Option<&'a RawValue> {
        match &self.form {
            RequestForm::Members(members) => members.member(name),
            RequestForm::Chat(_) => None,
        }
    }

    /// Who the request says it is for: OpenAI's `user`, Anthropic's `metadata.user_id`.
    pub fn user_id(&self) -> Option<Cow<'a, str>> {
        let user = match self.endpoint.protocol() {
            ClientProtocol::OpenAi => self.member("user")?,
            ClientProtocol::Anthropic => {
                #[derive(Deserialize)]
                struct Metadata<'m> {
                    #[serde(borrow)]
                    user_id: Option<&'m RawValue>,
                }
                serde_json::from_str::<Metadata>(self.member("metadata")?.get())
                    .ok()?
                    .user_id?
            }
        };
        serde_json::from_str::<Cow<str>>(user.get())
            .ok()
            .filter(|u| !u.is_empty())
    }

    /// The most output tokens the client asked for (`max_tokens`, `max_completion_tokens`), for
    /// estimating a request's tokens before it runs.
    pub fn max_output_tokens(&self) -> Option<u64> {
        let RequestForm::Members(members) = &self.form else {
            return None;
        };
        ["max_completion_tokens", "max_tokens"]
            .into_iter()
            .find_map(|name| members.member(name)?.get().trim().parse::<u64>().ok())
    }

    /// The whole request as a tree.
    pub fn tree(&self) -> Result<Value, GatewayError> {
        match &self.form {
            RequestForm::Chat(chat) => Ok(chat.clone()),
            RequestForm::Members(members) => members.to_tree(),
        }
    }
}

/// What the gateway reads of an OpenAI chat request before routing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatEnvelope {
    pub model: String,
    /// Byte range of the `model` value (a JSON string) in the body, for splicing in the upstream id.
    pub model_span: Range<usize>,
    pub stream: bool,
}

/// Reads `model` and `stream` from a chat request without building a tree of the rest.
/// The whole body is still validated as JSON.
pub fn parse_chat_envelope(body: &[u8]) -> Result<ChatEnvelope, GatewayError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        model: Option<&'a RawValue>,
        #[serde(default)]
        stream: Option<bool>,
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| GatewayError::bad_request("The request body is not valid UTF-8"))?;
    // Serde also reads structs from arrays; a chat request is an object.
    if !text.trim_start().starts_with('{') {
        return Err(GatewayError::bad_request(
            "The request body is not a valid request: expected a JSON object",
        ));
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
        GatewayError::bad_request(format!("The request body is not a valid request: {e}"))
    })?;
    envelope_of(text, envelope.model, envelope.stream)
}

/// The envelope from a request's `model` and `stream` members; `text` is the body the model's
/// raw value borrows from.
pub fn envelope_of(
    text: &str,
    model: Option<&RawValue>,
    stream: Option<bool>,
) -> Result<ChatEnvelope, GatewayError> {
    let raw = model.ok_or_else(|| {
        GatewayError::bad_request("Missing required parameter: 'model'").with_param("model")
    })?;
    let model: String = serde_json::from_str(raw.get()).map_err(|_| {
        GatewayError::bad_request("Invalid type for 'model': expected a string").with_param("model")
    })?;
    if model.is_empty() {
        return Err(GatewayError::bad_request("'model' must not be empty").with_param("model"));
    }
    // The raw value borrows from `text`, so its offset in the body is a pointer difference.
    let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
    Ok(ChatEnvelope {
        model,
        model_span: start..start + raw.get().len(),
        stream: stream.unwrap_or(false),
    })
}

/// Parses a chat request into a tree, for the providers that need it translated.
pub fn parse_chat_tree(body: &[u8]) -> Result<Value, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_request(format!("The request body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(GatewayError::bad_request(
            "The request body must be a JSON object",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_finds_the_model_span() {
        let body = br#" { "messages": [], "model" : "gpt-4o", "stream": true } "#;
        let env = parse_chat_envelope(body).unwrap();
        assert_eq!(env.model, "gpt-4o");
        assert_eq!(&body[env.model_span.clone()], br#""gpt-4o""#);
        assert!(env.stream);
        // Escapes are decoded for routing but the span covers the raw string.
        let body = br#"{"model":"gpt\u002d4o"}"#;
        let env = parse_chat_envelope(body).unwrap();
        assert_eq!(env.model, "gpt-4o");
        assert_eq!(&body[env.model_span], br#""gpt\u002d4o""#);
    }

    #[test]
    fn envelope_rejects_bad_input() {
        for (body, needle) in [
            (&b"{not json"[..], "not a valid"),
            (b"[1,2]", "not a valid"),
            (b"{}", "Missing required parameter: 'model'"),
            (br#"{"model": 42}"#, "expected a string"),
            (br#"{"model": ""}"#, "must not be empty"),
            (br#"{"model": "a", "stream": "yes"}"#, "not a valid"),
            (br#"{"model": "a", "model": "b"}"#, "duplicate field"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let e = parse_chat_envelope(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{body:?}: {}", e.message);
        }
    }

    #[test]
    fn endpoints() {
        use http::Method;
        assert_eq!(
            endpoint_for(&Method::POST, "/v1/chat/completions?x=1").unwrap(),
            ClientEndpoint::ChatCompletions
        );
        assert_eq!(
            endpoint_for(&Method::POST, "/chat/completions").unwrap(),
            ClientEndpoint::ChatCompletions
        );
        assert_eq!(
            endpoint_for(&Method::GET, "/v1/models").unwrap(),
            ClientEndpoint::Models
        );
        assert_eq!(
            endpoint_for(&Method::POST, "/v1/complete").unwrap(),
            ClientEndpoint::Complete
        );
        assert_eq!(
            endpoint_for(&Method::GET, "/v1/chat/completions")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(
            endpoint_for(&Method::GET, "/admin").unwrap_err().status,
            404
        );
        // Both carry the code the README's error table gives them.
        for (method, path) in [(Method::GET, "/v1/messages"), (Method::PUT, "/nowhere")] {
            let e = endpoint_for(&method, path).unwrap_err();
            assert_eq!(e.code.as_deref(), Some("unknown_url"), "{method} {path}");
        }
        assert_eq!(
            protocol_of_path("/v1/messages?beta=true"),
            ClientProtocol::Anthropic
        );
        assert_eq!(
            protocol_of_path("/messages/batches"),
            ClientProtocol::Anthropic
        );
        assert_eq!(protocol_of_path("/v1/messagesx"), ClientProtocol::OpenAi);
        assert_eq!(
            protocol_of_path("/v1/chat/completions"),
            ClientProtocol::OpenAi
        );
    }
}
