//! Anthropic Messages answer -> OpenAI `chat.completion`.

use crate::error::GatewayError;
use crate::ids;
use crate::providers::ResponseContext;
use crate::wire::anthropic::read::{BlockKind, ContentBlock, Message, MessageKind};
use crate::wire::anthropic::StopReason;
use crate::wire::lenient::{read_object_bytes, ReadError};
use serde_json::{json, Value};

/// Anthropic Messages response body -> OpenAI `chat.completion` object.
pub fn chat_response(body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
    let message = read_object_bytes::<Message>(body).map_err(|e| match e {
        ReadError::Syntax(e) => {
            GatewayError::bad_upstream(format!("Anthropic response is not valid JSON: {e}"))
        }
        ReadError::NotAnObject => {
            GatewayError::bad_upstream("Anthropic response is not a JSON object")
        }
    })?;
    let blocks = as_message(&message)?;
    Ok(completion(&message, blocks, ctx))
}

/// The content blocks of a Messages `message`, or a 502 saying what the body was instead.
fn as_message(message: &Message) -> Result<&[ContentBlock], GatewayError> {
    match message.kind {
        Some(MessageKind::Message) => {}
        Some(MessageKind::Error) => {
            let detail = message
                .error
                .as_ref()
                .and_then(|e| e.message.as_deref())
                .unwrap_or("no message");
            return Err(GatewayError::bad_upstream(format!(
                "Anthropic answered with an error: {detail}"
            )));
        }
        Some(MessageKind::Other) | None => {
            return Err(GatewayError::bad_upstream(
                "Anthropic response is not a message (`type` is not \"message\")",
            ))
        }
    }
    message
        .content
        .as_deref()
        .ok_or_else(|| GatewayError::bad_upstream("Anthropic message has no `content` list"))
}

fn completion(msg: &Message, blocks: &[ContentBlock], ctx: &ResponseContext) -> Value {
    let id = msg.id.clone().unwrap_or_else(|| ids::new_id("chatcmpl-"));
    let model = msg.model.as_deref().unwrap_or(ctx.upstream_model);
    json!({
        "id": id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": assistant_message(blocks),
            "finish_reason": StopReason::to_finish_reason(msg.stop_reason),
            "logprobs": null,
        }],
        "usage": msg.usage.unwrap_or_default().to_openai(),
    })
}

fn assistant_message(blocks: &[ContentBlock]) -> Value {
    let mut text: Option<String> = None;
    let mut thinking: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in blocks {
        let append = |to: &mut Option<String>, part: &Option<String>| {
            to.get_or_insert_with(String::new)
                .push_str(part.as_deref().unwrap_or(""))
        };
        match block.kind {
            Some(BlockKind::Text) => append(&mut text, &block.text),
            Some(BlockKind::Thinking) => append(&mut thinking, &block.thinking),
            Some(BlockKind::ToolUse) => tool_calls.push(tool_call(block)),
            // redacted_thinking, server tool blocks and future types have no OpenAI counterpart.
            Some(BlockKind::Other) | None => {}
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

fn tool_call(block: &ContentBlock) -> Value {
    let id = block.id.clone().unwrap_or_else(|| ids::new_id("call_"));
    let name = block.name.as_deref().unwrap_or("");
    let arguments = match &block.input {
        None => "{}".to_string(),
        Some(input) => input.to_string(),
    };
    json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": arguments },
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

    /// Read as typed structs, the answer keeps what reading it as a tree gave: a field of the
    /// wrong type counts as absent, a key given twice takes its last value, a syntax error is
    /// worded as the tree parser words it.
    #[test]
    fn typed_reading_keeps_the_tree_lookups_outcomes() {
        let out = respond(&json!({
            "type": "message", "id": 7, "model": null, "stop_reason": 5,
            "content": [{"type": "text", "text": 1}, "stray", {"type": 3}, {"type": "thinking"}],
            "usage": {"input_tokens": "3", "output_tokens": 2.0, "cache_read_input_tokens": -1},
        }));
        assert!(out["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")));
        assert_eq!(out["model"], RESP_CTX.upstream_model);
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["choices"][0]["message"]["content"], "");
        assert_eq!(out["choices"][0]["message"]["reasoning_content"], "");
        assert_eq!(out["usage"]["total_tokens"], 0);

        let body = br#"{"type":"message","content":[],"stop_reason":"end_turn","stop_reason":"max_tokens","content":[{"type":"text","text":"a","text":"b"}]}"#;
        let out = chat_response(body, &RESP_CTX).expect("translates");
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(out["choices"][0]["message"]["content"], "b");

        for body in [&b"{\"type\":"[..], b"\xff", b"{} {}"] {
            let tree = serde_json::from_slice::<Value>(body).expect_err("not JSON");
            let err = chat_response(body, &RESP_CTX).expect_err("rejected");
            assert_eq!(
                err.message,
                format!("Anthropic response is not valid JSON: {tree}")
            );
        }
    }
}
