//! `/v1/complete`: `{"text", "model_type"}` -> `{"data", "model_used"}`, served as a chat request.

use crate::error::GatewayError;
use serde::Deserialize;
use serde_json::{json, Value};

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

#[cfg(test)]
mod tests {
    use super::*;

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
