//! The client-facing APIs: which endpoint a request is for, the few fields the gateway reads to
//! route it, and the `/v1/complete` adapter.

use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::ops::Range;

/// A client endpoint that the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
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
}

/// The protocol a client speaks, which decides the shape of its errors and streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    OpenAi,
    Anthropic,
}

impl Endpoint {
    pub fn protocol(self) -> ClientProtocol {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => ClientProtocol::Anthropic,
            _ => ClientProtocol::OpenAi,
        }
    }
}

impl ClientProtocol {
    /// An error body in this protocol's shape.
    pub fn error_body(self, e: &GatewayError) -> bytes::Bytes {
        match self {
            ClientProtocol::OpenAi => e.to_openai_body(),
            ClientProtocol::Anthropic => crate::anthropic_api::error_body(e),
        }
    }
}

/// Matches method and path (query ignored; `/v1` prefix optional, as OpenAI SDKs allow).
pub fn endpoint_for(method: &http::Method, path: &str) -> Result<Endpoint, GatewayError> {
    let path = path.split('?').next().unwrap_or("");
    let path = path.strip_suffix('/').unwrap_or(path);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let (endpoint, allowed) = match path {
        "/chat/completions" => (Endpoint::ChatCompletions, http::Method::POST),
        "/complete" => (Endpoint::Complete, http::Method::POST),
        "/models" => (Endpoint::Models, http::Method::GET),
        "/embeddings" => (Endpoint::Embeddings, http::Method::POST),
        "/messages" => (Endpoint::Messages, http::Method::POST),
        "/messages/count_tokens" => (Endpoint::CountTokens, http::Method::POST),
        _ => {
            return Err(GatewayError::new(404, format!("Unknown endpoint: {path}"))
                .with_code("unknown_url"))
        }
    };
    if *method != allowed {
        return Err(GatewayError::new(
            405,
            format!("Method {method} is not allowed here; use {allowed}"),
        )
        .with_kind("invalid_request_error"));
    }
    Ok(endpoint)
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

/// `/v1/complete` request -> (model name, OpenAI chat request).
pub fn complete_to_chat(body: &[u8]) -> Result<(String, Value), GatewayError> {
    #[derive(Deserialize)]
    struct CompleteRequest {
        text: Option<String>,
        model_type: Option<String>,
        max_tokens: Option<u32>,
        temperature: Option<f64>,
        #[serde(default)]
        stream: bool,
    }
    let req: CompleteRequest = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_request(format!(
            "The request body is not a valid complete request: {e}"
        ))
    })?;
    let text = req.text.ok_or_else(|| {
        GatewayError::bad_request("Missing required parameter: 'text'").with_param("text")
    })?;
    let model = req.model_type.filter(|m| !m.is_empty()).ok_or_else(|| {
        GatewayError::bad_request("Missing required parameter: 'model_type'")
            .with_param("model_type")
    })?;
    if req.stream {
        return Err(GatewayError::bad_request(
            "/v1/complete does not stream; use /v1/chat/completions",
        )
        .with_param("stream"));
    }
    let mut chat = json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
    });
    if let Some(max) = req.max_tokens {
        chat["max_tokens"] = json!(max);
    }
    if let Some(t) = req.temperature {
        chat["temperature"] = json!(t);
    }
    Ok((model, chat))
}

/// OpenAI `chat.completion` -> `/v1/complete` response.
pub fn chat_to_complete(completion: &Value, model_name: &str) -> Value {
    let text = completion
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    json!({ "data": text, "model_used": model_name })
}

/// Writes the common stream form as OpenAI's SSE: `data: {chunk}` events, `data: [DONE]` at a
/// normal end, and at a failure an error event with no `[DONE]`, so the stream never ends looking
/// like a success.
#[derive(Debug, Default)]
pub struct OpenAiEventSink {
    ended: bool,
}

impl OpenAiEventSink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, item: &crate::providers::StreamOut, out: &mut Vec<u8>) {
        use crate::providers::StreamOut;
        if self.ended {
            return;
        }
        match item {
            StreamOut::Chunk(chunk) => {
                out.extend_from_slice(b"data: ");
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, chunk);
                out.extend_from_slice(b"\n\n");
            }
            StreamOut::Text(text) => {
                out.extend_from_slice(b"data: ");
                text.write_json(out);
                out.extend_from_slice(b"\n\n");
            }
            StreamOut::Done => {
                self.ended = true;
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            StreamOut::Error(e) => {
                self.ended = true;
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&e.to_openai_body());
                out.extend_from_slice(b"\n\n");
            }
        }
    }
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
            Endpoint::ChatCompletions
        );
        assert_eq!(
            endpoint_for(&Method::POST, "/chat/completions").unwrap(),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            endpoint_for(&Method::GET, "/v1/models").unwrap(),
            Endpoint::Models
        );
        assert_eq!(
            endpoint_for(&Method::POST, "/v1/complete").unwrap(),
            Endpoint::Complete
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
    }

    #[test]
    fn openai_sink_frames_chunks_and_ends() {
        use crate::providers::StreamOut;
        let mut sink = OpenAiEventSink::new();
        let mut out = Vec::new();
        sink.write(&StreamOut::Chunk(json!({"id": "c"})), &mut out);
        sink.write(&StreamOut::Done, &mut out);
        sink.write(&StreamOut::Chunk(json!({"id": "late"})), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"id\":\"c\"}\n\ndata: [DONE]\n\n"
        );
        let mut sink = OpenAiEventSink::new();
        let mut out = Vec::new();
        sink.write(
            &StreamOut::Error(GatewayError::new(529, "Overloaded")),
            &mut out,
        );
        sink.write(&StreamOut::Done, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("data: {\"error\":"), "{text}");
        assert!(!text.contains("[DONE]"));
    }

    #[test]
    fn complete_adapter() {
        let (model, chat) =
            complete_to_chat(br#"{"text":"hi","model_type":"m","max_tokens":5}"#).unwrap();
        assert_eq!(model, "m");
        assert_eq!(
            chat,
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5})
        );
        assert_eq!(
            complete_to_chat(br#"{"text":"hi"}"#).unwrap_err().status,
            400
        );
        assert_eq!(
            complete_to_chat(br#"{"model_type":"m"}"#)
                .unwrap_err()
                .status,
            400
        );
        let out = chat_to_complete(
            &json!({"choices":[{"message":{"role":"assistant","content":"yo"}}]}),
            "m",
        );
        assert_eq!(out, json!({"data":"yo","model_used":"m"}));
    }
}
