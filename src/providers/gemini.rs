//! Gemini generateContent <-> OpenAI chat completions.
use crate::error::GatewayError;
use crate::providers::{RequestContext, ResponseContext};
use serde_json::Value;

/// OpenAI chat request (a JSON object) -> Gemini generateContent request body.
pub fn chat_request(_req: &Value, _ctx: &RequestContext) -> Result<Vec<u8>, GatewayError> {
    Err(GatewayError::new(501, "gemini translation not written yet"))
}

/// Gemini generateContent response body -> OpenAI `chat.completion` object.
pub fn chat_response(_body: &[u8], _ctx: &ResponseContext) -> Result<Value, GatewayError> {
    Err(GatewayError::new(501, "gemini translation not written yet"))
}
