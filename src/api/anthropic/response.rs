//! OpenAI `chat.completion` -> Anthropic Messages answer.

use crate::error::GatewayError;
use crate::ids;
use crate::wire::anthropic::write::{ContentBlock, Message};
use crate::wire::anthropic::{StopReason, Usage};
use serde_json::{json, Value};

/// OpenAI `chat.completion` object -> Anthropic Message object. `model` is the model name to report.
pub fn response_from_openai(completion: &Value, model: &str) -> Result<Value, GatewayError> {
    let obj = completion
        .as_object()
        .ok_or_else(|| GatewayError::bad_upstream("chat completion is not a JSON object"))?;
    let choice = obj
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .filter(|c| c.is_object())
        .ok_or_else(|| GatewayError::bad_upstream("chat completion has no choices"))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| GatewayError::bad_upstream("chat completion choice has no message"))?;

    let text = message_text(message);
    let tool_uses: Vec<ToolUse> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .filter(|c| c.is_object())
                .map(tool_use)
                .collect()
        })
        .unwrap_or_default();
    let mut content = Vec::with_capacity(2 + tool_uses.len());
    if let Some(thinking) = reasoning_text(message) {
        content.push(ContentBlock::Thinking {
            thinking,
            signature: "",
        });
    }
    if !text.is_empty() {
        content.push(ContentBlock::Text { text: &text });
    }
    content.extend(tool_uses.iter().map(|t| ContentBlock::ToolUse {
        id: &t.id,
        name: t.name,
        input: &t.input,
    }));
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    let stop_reason = StopReason::from_finish_reason(finish, !tool_uses.is_empty());
    let id = message_id(obj.get("id").and_then(Value::as_str));
    let usage = Usage::from_openai(obj.get("usage"));
    serde_json::to_value(Message::new(&id, model, &content, Some(stop_reason), usage))
        .map_err(|e| GatewayError::new(500, format!("could not write the message: {e}")))
}

/// `msg_` + the completion id without OpenAI's `chatcmpl-` prefix; a fresh id when there is none.
fn message_id(completion_id: Option<&str>) -> String {
    match completion_id.filter(|id| !id.is_empty()) {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) => format!("msg_{}", id.strip_prefix("chatcmpl-").unwrap_or(id)),
        None => ids::new_id("msg_"),
    }
}

/// `reasoning_content` (DeepSeek, vLLM, this gateway's own providers) or `reasoning` (OpenRouter,
/// Ollama), when non-empty.
pub(super) fn reasoning_text(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"].iter().find_map(|key| {
        message
            .get(*key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    })
}

/// `content` as text: a string, or text parts concatenated; a refusal when there is no content.
fn message_text(message: &Value) -> String {
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if text.is_empty() {
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            return refusal.to_string();
        }
    }
    text
}

/// A tool call as a `tool_use` block's fields.
struct ToolUse<'a> {
    id: String,
    name: &'a str,
    input: Value,
}

fn tool_use(call: &Value) -> ToolUse<'_> {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| ids::new_id("toolu_"));
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let input = match function.and_then(|f| f.get("arguments")) {
        Some(Value::String(args)) => match serde_json::from_str::<Value>(args) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => json!({}),
        },
        // Some servers send the object itself.
        Some(obj @ Value::Object(_)) => obj.clone(),
        _ => json!({}),
    };
    ToolUse { id, name, input }
}

#[cfg(test)]
mod tests {
    use super::super::test_helpers::fixture;
    use super::*;

    // --- responses ---

    #[test]
    fn response_fixtures() {
        for name in ["response_text", "response_thinking", "response_tool_calls"] {
            let got = response_from_openai(
                &fixture(&format!("{name}.openai.json")),
                "claude-sonnet-4-5",
            )
            .expect("response translates");
            let want = fixture(&format!("{name}.anthropic.json"));
            assert_eq!(got, want, "fixture {name}:\n{got:#}");
        }
    }

    #[test]
    fn every_finish_reason() {
        let cases = [
            (json!("stop"), "end_turn"),
            (json!("length"), "max_tokens"),
            (json!("tool_calls"), "tool_use"),
            (json!("function_call"), "tool_use"),
            (json!("content_filter"), "refusal"),
            (json!(null), "end_turn"),
            (json!(""), "end_turn"),
            (json!("something_new"), "end_turn"),
        ];
        let mut body = fixture("response_text.openai.json");
        for (reason, expected) in cases {
            body["choices"][0]["finish_reason"] = reason.clone();
            let out = response_from_openai(&body, "m").expect("translates");
            assert_eq!(out["stop_reason"], expected, "finish_reason {reason}");
        }
        // Tool calls answered with `stop` (Ollama, some vLLM versions) are still `tool_use`.
        let mut body = fixture("response_tool_calls.openai.json");
        body["choices"][0]["finish_reason"] = json!("stop");
        let out = response_from_openai(&body, "m").expect("translates");
        assert_eq!(out["stop_reason"], "tool_use");
    }

    #[test]
    fn response_ids_usage_and_refusal() {
        let body = json!({
            "choices": [{"message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}],
        });
        let out = response_from_openai(&body, "m").expect("translates");
        assert!(out["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
        assert_eq!(
            out["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        assert_eq!(out["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        // Empty content gives an empty content list, and an id that is already a message id is kept.
        let body = json!({"id": "msg_x", "choices": [{"message": {"content": ""}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 9}}});
        let out = response_from_openai(&body, "m").expect("translates");
        assert_eq!(out["id"], "msg_x");
        assert_eq!(out["content"], json!([]));
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 9})
        );
    }

    #[test]
    fn invalid_completions_are_502() {
        for body in [
            json!(null),
            json!([]),
            json!({}),
            json!({"choices": []}),
            json!({"choices": [1]}),
            json!({"choices": [{"message": "hi"}]}),
        ] {
            let err = response_from_openai(&body, "m").expect_err("rejected");
            assert_eq!(err.status, 502, "body {body}");
        }
    }
}
