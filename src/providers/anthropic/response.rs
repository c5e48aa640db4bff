//! Anthropic Messages answer -> OpenAI `chat.completion`.

use crate::error::GatewayError;
use crate::ids;
use crate::providers::ResponseContext;
use serde_json::{json, Map, Value};

/// Anthropic Messages response body -> OpenAI `chat.completion` object.
pub fn chat_response(body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
    let message: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_upstream(format!("Anthropic response is not valid JSON: {e}"))
    })?;
    let message = as_message(&message)?;
    Ok(completion(message, ctx))
}

// ---------------------------------------------------------------------------------------------
// Response: Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------------

/// The body as a Messages `message`, or a 502 saying what it was instead.
fn as_message(value: &Value) -> Result<&Map<String, Value>, GatewayError> {
    let obj = value
        .as_object()
        .ok_or_else(|| GatewayError::bad_upstream("Anthropic response is not a JSON object"))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("message") => {}
        Some("error") => {
            let detail = obj
                .get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(GatewayError::bad_upstream(format!(
                "Anthropic answered with an error: {detail}"
            )));
        }
        _ => {
            return Err(GatewayError::bad_upstream(
                "Anthropic response is not a message (`type` is not \"message\")",
            ))
        }
    }
    if !obj.get("content").is_some_and(Value::is_array) {
        return Err(GatewayError::bad_upstream(
            "Anthropic message has no `content` list",
        ));
    }
    Ok(obj)
}

fn completion(msg: &Map<String, Value>, ctx: &ResponseContext) -> Value {
    let id = msg
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| ids::new_id("chatcmpl-"));
    let model = msg
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(ctx.upstream_model);
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let stop_reason = msg.get("stop_reason").and_then(Value::as_str);
    json!({
        "id": id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": assistant_message(blocks),
            "finish_reason": finish_reason(stop_reason),
            "logprobs": null,
        }],
        "usage": usage(msg.get("usage")),
    })
}

fn assistant_message(blocks: &[Value]) -> Value {
    let mut text: Option<String> = None;
    let mut thinking: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in blocks {
        let str_field = |key: &str| block.get(key).and_then(Value::as_str).unwrap_or("");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(str_field("text")),
            Some("thinking") => thinking
                .get_or_insert_with(String::new)
                .push_str(str_field("thinking")),
            Some("tool_use") => tool_calls.push(tool_call(block)),
            // redacted_thinking, server tool blocks and future types have no OpenAI counterpart.
            _ => {}
        }
    }
    let mut message = json!({ "role": "assistant", "content": text });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if let Some(thinking) = thinking {
        message["reasoning_content"] = json!(thinking);
    }
    message
}

fn tool_call(block: &Value) -> Value {
    let id = block
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| ids::new_id("call_"));
    let name = block.get("name").and_then(Value::as_str).unwrap_or("");
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(input) => input.to_string(),
    };
    json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    })
}

pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, null and reasons added after this was written.
        _ => "stop",
    }
}

/// Anthropic counts cached prompt tokens apart from `input_tokens`; OpenAI counts them inside
/// `prompt_tokens`, so they are folded back in.
fn usage(usage: Option<&Value>) -> Value {
    let count = |key: &str| {
        usage
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    usage_value(
        count("input_tokens"),
        count("cache_read_input_tokens"),
        count("cache_creation_input_tokens"),
        count("output_tokens"),
    )
}

pub(super) fn usage_value(
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    completion: u64,
) -> Value {
    let prompt = input
        .saturating_add(cache_read)
        .saturating_add(cache_creation);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": { "cached_tokens": cache_read },
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_helpers::RESP_CTX;
    use super::*;

    fn respond(body: &Value) -> Value {
        chat_response(body.to_string().as_bytes(), &RESP_CTX).expect("response translates")
    }

    // --- response golden fixtures ---

    #[test]
    fn response_text() {
        assert_eq!(
            respond(&fixture!("response_text.anthropic.json")),
            fixture!("response_text.openai.json")
        );
    }

    #[test]
    fn response_multiple_tool_use_with_cache_usage() {
        assert_eq!(
            respond(&fixture!("response_tool_use.anthropic.json")),
            fixture!("response_tool_use.openai.json")
        );
    }

    #[test]
    fn response_thinking() {
        assert_eq!(
            respond(&fixture!("response_thinking.anthropic.json")),
            fixture!("response_thinking.openai.json")
        );
    }

    #[test]
    fn response_refusal_without_content_or_model() {
        assert_eq!(
            respond(&fixture!("response_refusal_empty.anthropic.json")),
            fixture!("response_refusal_empty.openai.json")
        );
    }

    #[test]
    fn every_stop_reason() {
        let cases = [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("pause_turn"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("model_context_window_exceeded"), "stop"),
            (json!(null), "stop"),
        ];
        let mut body = fixture!("response_text.anthropic.json");
        for (reason, expected) in cases {
            body["stop_reason"] = reason.clone();
            let out = respond(&body);
            assert_eq!(
                out["choices"][0]["finish_reason"], expected,
                "stop_reason {reason}"
            );
        }
    }

    #[test]
    fn invalid_upstream_bodies_are_502() {
        let bodies: [&[u8]; 7] = [
            b"",
            b"<html>502 Bad Gateway</html>",
            b"[]",
            b"\"message\"",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            br#"{"type":"completion","completion":"hi"}"#,
            br#"{"type":"message","content":"hi"}"#,
        ];
        for body in bodies {
            let err = chat_response(body, &RESP_CTX).expect_err("body is rejected");
            assert_eq!(err.status, 502, "body {}", String::from_utf8_lossy(body));
            assert_eq!(err.code.as_deref(), Some("bad_upstream_response"));
        }
    }
}
