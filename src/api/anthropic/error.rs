//! Errors in Anthropic's shape, for clients of the front door.

use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::Value;

/// Anthropic's error type names.
const ANTHROPIC_ERROR_TYPES: [&str; 10] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

fn error_type(e: &GatewayError) -> &str {
    if let Some(kind) = e.kind.as_deref() {
        if ANTHROPIC_ERROR_TYPES.contains(&kind) {
            return kind;
        }
    }
    match e.status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// GatewayError -> Anthropic error body `{"type":"error","error":{"type":..,"message":..}}`.
pub fn error_body(e: &GatewayError) -> Bytes {
    Bytes::from(error_json(e))
}

/// The error body with Anthropic's key order.
pub(super) fn error_json(e: &GatewayError) -> String {
    let kind = Value::String(error_type(e).to_string());
    let message = Value::String(e.message.clone());
    format!(r#"{{"type":"error","error":{{"type":{kind},"message":{message}}}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // --- errors ---

    #[test]
    fn error_bodies() {
        let cases = [
            (GatewayError::bad_request("bad"), "invalid_request_error"),
            (GatewayError::new(401, "x"), "authentication_error"),
            (GatewayError::new(402, "x"), "billing_error"),
            (GatewayError::new(403, "x"), "permission_error"),
            (GatewayError::model_not_found("m"), "not_found_error"),
            (
                GatewayError::new(405, "x").with_kind("invalid_request_error"),
                "invalid_request_error",
            ),
            (GatewayError::new(413, "x"), "request_too_large"),
            (GatewayError::new(422, "x"), "invalid_request_error"),
            (
                GatewayError::new(429, "x").with_kind("requests"),
                "rate_limit_error",
            ),
            (
                GatewayError::new(500, "x").with_kind("server_error"),
                "api_error",
            ),
            (GatewayError::bad_upstream("x"), "api_error"),
            (GatewayError::new(503, "x"), "api_error"),
            (
                GatewayError::new(503, "x").with_kind("overloaded_error"),
                "overloaded_error",
            ),
            (GatewayError::new(504, "x"), "timeout_error"),
            (GatewayError::new(529, "x"), "overloaded_error"),
        ];
        for (e, kind) in cases {
            let body: Value = serde_json::from_slice(&error_body(&e)).expect("JSON");
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": kind, "message": e.message}}),
                "status {}",
                e.status
            );
        }
        assert_eq!(
            &error_body(&GatewayError::new(529, "Over \"loaded\""))[..],
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Over \"loaded\""}}"#
        );
    }
}
