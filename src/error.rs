//! Errors as clients see them: one type for every failure, rendered in the client's protocol, and
//! the parser that pulls a message out of whichever error shape an upstream provider uses.

use bytes::Bytes;
use serde_json::{json, Value};

/// The gateway's own error codes (OpenAI's `error.code`), one per way a request can fail here.
/// Upstream errors keep the upstream's own code. A small fixed set: fit for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No route for the method and path.
    UnknownUrl,
    /// No gateway key, or one the gateway does not know.
    InvalidApiKey,
    /// The request names a model that is not configured.
    ModelNotFound,
    /// The gateway key may not use the model the request names.
    ModelNotAllowed,
    /// The body is over `max_request_bytes`.
    RequestTooLarge,
    /// No instance may take the request (all down or circuits open).
    UpstreamUnavailable,
    /// Every instance has set the model aside after its 429s: the provider's quota for it is
    /// used up for a while (OpenAI's own code for it).
    RateLimitExceeded,
    /// The upstream could not be reached (refused, TLS failure).
    UpstreamUnreachable,
    /// The upstream did not connect or answer in time.
    UpstreamTimeout,
    /// The upstream failed mid-response.
    UpstreamError,
    /// The upstream answered something that is not the protocol it promised.
    BadUpstreamResponse,
    /// A stream ended before its final event.
    StreamTruncated,
    /// The gateway's own failure.
    InternalError,
    /// The client did not send its whole request within `edge.header_timeout` / `body_timeout`.
    RequestTimeout,
    /// Request and answer buffers hold `edge.max_buffered_bytes` already.
    GatewayOverloaded,
    /// `edge.max_connections` client connections are open already.
    TooManyConnections,
    /// A stream ran past `edge.max_stream_duration`.
    StreamDurationExceeded,
    /// The process is shutting down and its grace period ended before the answer did.
    GatewayShuttingDown,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownUrl => "unknown_url",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::RateLimitExceeded => "rate_limit_exceeded",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::BadUpstreamResponse => "bad_upstream_response",
            ErrorCode::StreamTruncated => "stream_truncated",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::GatewayOverloaded => "gateway_overloaded",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::StreamDurationExceeded => "stream_duration_exceeded",
            ErrorCode::GatewayShuttingDown => "gateway_shutting_down",
        }
    }
}

/// A failure that ends a request, with the status the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `error.type`; derived from the status when `None`.
    pub kind: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds the client should wait before trying again, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            message: message.into(),
            kind: None,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Replaces `secret` wherever the error's text echoes it.
    pub fn redact(&mut self, secret: &str) {
        self.message = redact(&self.message, secret);
        if let Some(code) = &mut self.code {
            *code = redact(code, secret);
        }
        if let Some(param) = &mut self.param {
            *param = redact(param, secret);
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the client sent something we cannot serve.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// One of the gateway's own codes.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = Some(code.as_str().to_owned());
        self
    }

    /// Whether the error carries the gateway's code `code`.
    pub fn has_code(&self, code: ErrorCode) -> bool {
        self.code.as_deref() == Some(code.as_str())
    }

    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            format!("The model `{model}` does not exist or is not configured on this gateway"),
        )
        .with_param("model")
        .with_code(ErrorCode::ModelNotFound)
    }

    /// The upstream answered something that is not the protocol it promised.
    pub fn bad_upstream(message: impl Into<String>) -> Self {
        Self::new(502, message).with_code(ErrorCode::BadUpstreamResponse)
    }

    /// OpenAI's `error.type` for this error.
    pub fn kind(&self) -> &str {
        if let Some(kind) = &self.kind {
            return kind;
        }
        match self.status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The error as an OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_openai_body(&self) -> Bytes {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.code,
            }
        });
        Bytes::from(body.to_string())
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for GatewayError {}

/// What an upstream said went wrong, whatever its error shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamErrorDetail {
    pub message: String,
    pub kind: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Reads an upstream error body in any of the shapes providers use: OpenAI
/// `{"error":{"message","type","param","code"}}`, Anthropic `{"type":"error","error":{"type","message"}}`,
/// Gemini `{"error":{"code","message","status"}}` (also as a one-element array), FastAPI-style
/// `{"detail": ...}`, `{"message": ...}`, `{"error": "text"}`, or plain text.
pub fn parse_upstream_error(status: u16, body: &[u8]) -> UpstreamErrorDetail {
    let fallback = || UpstreamErrorDetail {
        message: plain_text_message(status, body),
        ..Default::default()
    };
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return fallback();
    };
    // Gemini sometimes wraps the error object in an array.
    let value = match value {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    };
    let detail = match &value {
        Value::Object(map) => match map.get("error") {
            Some(Value::Object(err)) => Some(UpstreamErrorDetail {
                message: text_of(err.get("message")).unwrap_or_default(),
                kind: text_of(err.get("type")).or_else(|| text_of(err.get("status"))),
                param: text_of(err.get("param")),
                code: text_of(err.get("code")),
            }),
            Some(Value::String(text)) => Some(UpstreamErrorDetail {
                message: text.clone(),
                ..Default::default()
            }),
            _ => map
                .get("detail")
                .or_else(|| map.get("message"))
                .and_then(|m| text_of(Some(m)))
                .map(|message| UpstreamErrorDetail {
                    message,
                    ..Default::default()
                }),
        },
        Value::String(text) => Some(UpstreamErrorDetail {
            message: text.clone(),
            ..Default::default()
        }),
        _ => None,
    };
    match detail {
        Some(d) if !d.message.is_empty() => d,
        Some(d) => UpstreamErrorDetail {
            message: plain_text_message(status, body),
            ..d
        },
        None => fallback(),
    }
}

/// A string field, or any other JSON value rendered compactly (FastAPI's `detail` is often a list).
fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn plain_text_message(status: u16, body: &[u8]) -> String {
    const MAX: usize = 2048;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let text = text.trim();
    if text.is_empty() {
        format!("upstream answered with status {status}")
    } else {
        text.to_string()
    }
}

/// Turns an upstream error response into the client's error, keeping its status and message and
/// removing the provider key if the upstream echoed it.
pub fn from_upstream(status: u16, body: &[u8], secret: &str) -> GatewayError {
    let detail = parse_upstream_error(status, body);
    GatewayError {
        status,
        message: redact(&detail.message, secret),
        kind: detail.kind.map(|k| openai_error_type(&k, status)),
        param: detail.param,
        code: detail.code.map(|c| redact(&c, secret)),
        retry_after: None,
    }
}

/// Maps provider error type names (Anthropic's, Gemini's status names) onto OpenAI's vocabulary.
fn openai_error_type(kind: &str, status: u16) -> String {
    match kind {
        "invalid_request_error" | "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => {
            "invalid_request_error".into()
        }
        "authentication_error" | "UNAUTHENTICATED" => "authentication_error".into(),
        "permission_error" | "PERMISSION_DENIED" => "permission_error".into(),
        "not_found_error" | "NOT_FOUND" => "not_found_error".into(),
        "rate_limit_error" | "RESOURCE_EXHAUSTED" => "rate_limit_error".into(),
        "overloaded_error" | "UNAVAILABLE" => "overloaded_error".into(),
        "api_error" | "INTERNAL" | "server_error" => "api_error".into(),
        "DEADLINE_EXCEEDED" => "timeout_error".into(),
        other if !other.is_empty() && other.len() < 64 => other.to_string(),
        _ => GatewayError::new(status, "").kind().to_string(),
    }
}

/// Removes a secret from text meant for a client or a log, along with the partly masked forms
/// some providers echo (`sk-abc...wxyz`, `sk-proj-****wxyz`).
pub fn redact(text: &str, secret: &str) -> String {
    let mut out = if secret.len() >= 4 && text.contains(secret) {
        text.replace(secret, "[redacted]")
    } else {
        text.to_string()
    };
    if out.contains("sk-") {
        out = out
            .split(' ')
            .map(|word| {
                if word.starts_with("sk-") && word.len() > 6 {
                    "[redacted]"
                } else {
                    word
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let e = from_upstream(429, body, "secret-key");
        assert_eq!(e.status, 429);
        assert_eq!(e.message, "Rate limit reached");
        assert_eq!(e.kind(), "requests");
        assert_eq!(e.code.as_deref(), Some("rate_limit_exceeded"));
    }

    #[test]
    fn anthropic_shape() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = from_upstream(529, body, "k");
        assert_eq!(e.status, 529);
        assert_eq!(e.message, "Overloaded");
        assert_eq!(e.kind(), "overloaded_error");
    }

    #[test]
    fn gemini_shape_and_array() {
        let body =
            br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#;
        let e = from_upstream(400, body, "k");
        assert_eq!(e.message, "API key not valid.");
        assert_eq!(e.kind(), "invalid_request_error");
        assert_eq!(e.code.as_deref(), Some("400"));
        let wrapped =
            br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#;
        let e = from_upstream(429, wrapped, "k");
        assert_eq!(e.message, "Quota exceeded");
        assert_eq!(e.kind(), "rate_limit_error");
    }

    #[test]
    fn detail_message_and_plain_text() {
        assert_eq!(
            from_upstream(422, br#"{"detail":"bad input"}"#, "k").message,
            "bad input"
        );
        assert_eq!(
            from_upstream(422, br#"{"detail":[{"loc":["body"],"msg":"x"}]}"#, "k").message,
            r#"[{"loc":["body"],"msg":"x"}]"#
        );
        assert_eq!(
            from_upstream(500, br#"{"message":"boom"}"#, "k").message,
            "boom"
        );
        assert_eq!(
            from_upstream(503, b"Service Unavailable\n", "k").message,
            "Service Unavailable"
        );
        assert_eq!(
            from_upstream(502, b"", "k").message,
            "upstream answered with status 502"
        );
        assert_eq!(
            from_upstream(400, br#"{"error":"model not loaded"}"#, "k").message,
            "model not loaded"
        );
    }

    #[test]
    fn echoed_keys_are_redacted() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-live-123456. Or sk-proj-****abcd is wrong","type":"invalid_request_error"}}"#;
        let e = from_upstream(401, body, "sk-live-123456");
        assert!(!e.message.contains("sk-live-123456"));
        assert!(!e.message.contains("abcd"));
        assert!(e.message.contains("[redacted]"));
        let e = from_upstream(401, b"bad key my-secret-key-42", "my-secret-key-42");
        assert_eq!(e.message, "bad key [redacted]");
    }

    #[test]
    fn openai_body_shape() {
        let e = GatewayError::model_not_found("nope");
        let v: Value = serde_json::from_slice(&e.to_openai_body()).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    }
}
