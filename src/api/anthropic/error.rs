//! Errors in Anthropic's shape, for clients of the front door.

use crate::error::GatewayError;
use crate::wire::anthropic::{write, ErrorType};
use bytes::Bytes;

/// GatewayError -> Anthropic error body `{"type":"error","error":{"type":..,"message":..}}`.
pub fn error_body(e: &GatewayError) -> Bytes {
    Bytes::from(write::error_body(ErrorType::for_error(e), &e.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
