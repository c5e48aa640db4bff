//! A whole Gemini generateContent answer -> an OpenAI `chat.completion`. Each candidate becomes a
//! choice; Gemini sends no tool-call ids, so fresh ones are generated.

use crate::error::GatewayError;
use crate::ids::new_id;
use crate::providers::ResponseContext;
use serde_json::{json, Map, Value};

/// Gemini generateContent response body -> OpenAI `chat.completion` object.
pub fn chat_response(body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_upstream(format!("Gemini returned a body that is not JSON: {e}"))
    })?;
    let resp = value.as_object().ok_or_else(|| {
        GatewayError::bad_upstream("Gemini returned a body that is not an object")
    })?;

    let id = match resp.get("responseId").and_then(Value::as_str) {
        Some(response_id) if !response_id.is_empty() => format!("chatcmpl-{response_id}"),
        _ => new_id("chatcmpl-"),
    };
    let model = resp
        .get("modelVersion")
        .and_then(Value::as_str)
        .unwrap_or(ctx.upstream_model);
    Ok(json!({
        "id": id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": choices(resp)?,
        "usage": usage(resp.get("usageMetadata")),
    }))
}

// ---------------------------------------------------------------------------------------------
// Response

fn choices(resp: &Map<String, Value>) -> Result<Vec<Value>, GatewayError> {
    let candidates = match resp.get("candidates") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(candidates)) => candidates.as_slice(),
        Some(_) => {
            return Err(GatewayError::bad_upstream(
                "Gemini `candidates` is not an array",
            ))
        }
    };
    if candidates.is_empty() {
        // A blocked prompt comes back without candidates. Clients index `choices[0]`, so answer
        // with one empty choice either way.
        let blocked = resp
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some_and(|r| !r.is_null());
        let finish_reason = if blocked { "content_filter" } else { "stop" };
        return Ok(vec![choice(0, Value::Null, None, None, finish_reason)]);
    }
    candidates
        .iter()
        .enumerate()
        .map(|(position, candidate)| translate_candidate(position, candidate))
        .collect()
}

fn translate_candidate(position: usize, candidate: &Value) -> Result<Value, GatewayError> {
    let candidate = candidate
        .as_object()
        .ok_or_else(|| GatewayError::bad_upstream("a Gemini candidate is not an object"))?;
    // Gemini omits `index` for a lone candidate.
    let index = candidate
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64);
    let parts = candidate_parts(candidate)?;

    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for part in parts {
        if let Some(call) = part.get("functionCall") {
            tool_calls.push(tool_call(call)?);
        } else if let Some(t) = part.get("text").and_then(Value::as_str) {
            let is_thought = part.get("thought").and_then(Value::as_bool) == Some(true);
            let target = if is_thought {
                &mut reasoning
            } else {
                &mut text
            };
            target.get_or_insert_with(String::new).push_str(t);
        }
        // Other parts (inlineData, executableCode, ...) have no chat.completion equivalent.
    }
    let finish_reason = finish_reason(
        candidate.get("finishReason").and_then(Value::as_str),
        !tool_calls.is_empty(),
    );
    let content = text.map_or(Value::Null, Value::String);
    let tool_calls = (!tool_calls.is_empty()).then_some(tool_calls);
    Ok(choice(index, content, tool_calls, reasoning, finish_reason))
}

/// `content.parts`, or none when the candidate has no content (e.g. stopped by a safety filter).
pub(super) fn candidate_parts(candidate: &Map<String, Value>) -> Result<&[Value], GatewayError> {
    let parts = match candidate.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::Object(content)) => content.get("parts"),
        Some(_) => {
            return Err(GatewayError::bad_upstream(
                "a Gemini candidate's `content` is not an object",
            ))
        }
    };
    match parts {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(parts)) => Ok(parts),
        Some(_) => Err(GatewayError::bad_upstream(
            "a Gemini candidate's `content.parts` is not an array",
        )),
    }
}

/// A `functionCall` part -> an OpenAI tool call with a generated id (Gemini sends none).
pub(super) fn tool_call(call: &Value) -> Result<Value, GatewayError> {
    let name = call
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| GatewayError::bad_upstream("a Gemini functionCall has no name"))?;
    let arguments = match call.get("args") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(args) => args.to_string(),
    };
    Ok(json!({
        "id": new_id("call_"),
        "type": "function",
        "function": { "name": name, "arguments": arguments },
    }))
}

/// Gemini's `finishReason` -> OpenAI's. Gemini says STOP after a function call, but clients only
/// run tools on `tool_calls`.
pub(super) fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "RECITATION" | "IMAGE_SAFETY",
        ) => "content_filter",
        Some("STOP") if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

fn choice(
    index: u64,
    content: Value,
    tool_calls: Option<Vec<Value>>,
    reasoning: Option<String>,
    finish_reason: &str,
) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), content);
    if let Some(tool_calls) = tool_calls {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if let Some(reasoning) = reasoning {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    json!({
        "index": index,
        "message": message,
        "finish_reason": finish_reason,
        "logprobs": null,
    })
}

/// `usageMetadata` -> OpenAI usage; thinking tokens are billed as output, so they count as
/// completion tokens.
pub(super) fn usage(meta: Option<&Value>) -> Value {
    let count = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let prompt = count("promptTokenCount");
    let thoughts = count("thoughtsTokenCount");
    let completion = count("candidatesTokenCount").saturating_add(thoughts);
    let total = meta
        .and_then(|m| m.get("totalTokenCount"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| prompt.saturating_add(completion));
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": { "cached_tokens": count("cachedContentTokenCount") },
        "completion_tokens_details": { "reasoning_tokens": thoughts },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::gemini::testing::{fixture, GENERATED};
    use std::collections::HashSet;

    const RESP_CTX: ResponseContext<'static> = ResponseContext {
        upstream_model: "gemini-2.5-flash",
        created: 1_750_000_000,
    };

    fn response(body: &str) -> Value {
        chat_response(body.as_bytes(), &RESP_CTX).expect("response translates")
    }

    /// Checks the prefix and uniqueness of generated ids (the response id when it is generated,
    /// every tool call id) and swaps them for placeholders so the rest compares exactly.
    fn normalize_ids(mut out: Value, response_id_generated: bool) -> Value {
        if response_id_generated {
            let id = out["id"].as_str().unwrap();
            assert!(
                id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len(),
                "{id}"
            );
            out["id"] = json!(format!("chatcmpl-{GENERATED}"));
        }
        let mut seen = HashSet::new();
        for choice in out["choices"].as_array_mut().unwrap() {
            let Some(Value::Array(calls)) = choice["message"].get_mut("tool_calls") else {
                continue;
            };
            for call in calls {
                let id = call["id"].as_str().unwrap().to_string();
                assert!(id.starts_with("call_") && id.len() > "call_".len(), "{id}");
                assert!(seen.insert(id), "tool call ids must be unique");
                call["id"] = json!(format!("call_{GENERATED}"));
            }
        }
        out
    }

    // --- response fixtures ------------------------------------------------------------------

    #[test]
    fn text_response() {
        let (input, expected) = fixture!("response_text", "gemini", "openai");
        assert_eq!(response(input), expected);
    }

    #[test]
    fn two_function_calls_with_stop_become_tool_calls() {
        let (input, expected) = fixture!("response_function_call", "gemini", "openai");
        let first = response(input);
        let second = response(input);
        assert_ne!(first["id"], second["id"], "generated response ids repeat");
        assert_ne!(
            first["choices"][0]["message"]["tool_calls"][0]["id"],
            second["choices"][0]["message"]["tool_calls"][0]["id"],
            "generated call ids repeat across responses"
        );
        assert_eq!(normalize_ids(first, true), expected);
    }

    #[test]
    fn thought_parts_and_cached_usage() {
        let (input, expected) = fixture!("response_thinking", "gemini", "openai");
        assert_eq!(response(input), expected);
    }

    #[test]
    fn blocked_prompt() {
        let (input, expected) = fixture!("response_blocked", "gemini", "openai");
        assert_eq!(response(input), expected);
    }

    #[test]
    fn multiple_candidates_without_content() {
        let (input, expected) = fixture!("response_multiple_candidates", "gemini", "openai");
        assert_eq!(normalize_ids(response(input), true), expected);
    }

    // --- response details -------------------------------------------------------------------

    #[test]
    fn every_finish_reason() {
        let cases = [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("RECITATION", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("LANGUAGE", "stop"),
            ("OTHER", "stop"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
            ("FINISH_REASON_UNSPECIFIED", "stop"),
        ];
        for (gemini, openai) in cases {
            let body = json!({ "candidates": [{
                "content": { "role": "model", "parts": [{ "text": "x" }] },
                "finishReason": gemini,
            }]});
            let out = response(&body.to_string());
            assert_eq!(out["choices"][0]["finish_reason"], openai, "{gemini}");
        }
        let absent = response(r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}]}"#);
        assert_eq!(absent["choices"][0]["finish_reason"], "stop");
        // Only STOP is upgraded to `tool_calls`; other reasons keep their own mapping.
        let other = response(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]},"finishReason":"OTHER"}]}"#,
        );
        assert_eq!(other["choices"][0]["finish_reason"], "stop");
        // A call cut off by the token limit is incomplete: it stays `length`, not `tool_calls`.
        let cut = response(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]},"finishReason":"MAX_TOKENS"}]}"#,
        );
        assert_eq!(cut["choices"][0]["finish_reason"], "length");
        assert_eq!(
            cut["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
    }

    #[test]
    fn usage_defaults_and_fallback_total() {
        let out = response(
            r#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,"thoughtsTokenCount":2}}"#,
        );
        assert_eq!(out["usage"]["completion_tokens"], 5);
        assert_eq!(out["usage"]["total_tokens"], 10);
        assert_eq!(
            out["usage"]["completion_tokens_details"]["reasoning_tokens"],
            2
        );
        // No candidates and no block reason: still one (empty) choice for clients to read.
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["model"], "gemini-2.5-flash");
        let out = response("{}");
        assert_eq!(out["usage"]["total_tokens"], 0);
    }

    #[test]
    fn bad_upstream_bodies() {
        for body in [
            &b"not json"[..],
            b"",
            b"[]",
            b"\"text\"",
            b"null",
            br#"{"candidates":5}"#,
        ] {
            let err = chat_response(body, &RESP_CTX).expect_err("rejected");
            assert_eq!(err.status, 502);
            assert_eq!(err.code.as_deref(), Some("bad_upstream_response"));
        }
    }

    // --- robustness -------------------------------------------------------------------------

    #[test]
    fn odd_responses_never_panic() {
        let deep = "[".repeat(10_000);
        let inputs: Vec<&[u8]> = vec![
            b"",
            b"\xff\xfe",
            b"{",
            deep.as_bytes(),
            b"null",
            b"{}",
            br#"{"candidates":null}"#,
            br#"{"candidates":[null]}"#,
            br#"{"candidates":[{}]}"#,
            br#"{"candidates":[{"content":5}]}"#,
            br#"{"candidates":[{"content":{"parts":5}}]}"#,
            br#"{"candidates":[{"content":{"parts":[null,1,"x",[]]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":5}]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":5}}]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":[1]}}]}}]}"#,
            br#"{"candidates":[{"content":{"parts":[{"text":5,"thought":"yes"}]}}]}"#,
            br#"{"candidates":[{"index":-1,"finishReason":5}]}"#,
            br#"{"candidates":[],"promptFeedback":5}"#,
            br#"{"usageMetadata":"x"}"#,
            br#"{"usageMetadata":{"promptTokenCount":-1,"candidatesTokenCount":1.5}}"#,
            br#"{"usageMetadata":{"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":9}}"#,
            br#"{"modelVersion":5,"responseId":[]}"#,
        ];
        for input in inputs {
            let _ = chat_response(input, &RESP_CTX);
        }
    }
}
