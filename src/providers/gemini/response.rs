//! A whole generateContent answer -> an OpenAI `chat.completion`, and what the stream translator
//! reads the same way (candidates, parts, function calls, finish reasons, usage).

use super::wire::{
    Candidate, Field, FinishReason, FunctionCall, GenerateContentResponse, Part, UsageMetadata,
};
use crate::error::GatewayError;
use crate::ids::new_id;
use crate::providers::ResponseContext;
use serde_json::{json, Map, Value};

/// Gemini generateContent response body -> OpenAI `chat.completion` object.
pub fn chat_response(body: &[u8], ctx: &ResponseContext) -> Result<Value, GatewayError> {
    let resp = match serde_json::from_slice::<Field<GenerateContentResponse>>(body) {
        Ok(Field::Present(resp)) => resp,
        Ok(_) => {
            return Err(GatewayError::bad_upstream(
                "Gemini returned a body that is not an object",
            ))
        }
        Err(e) => {
            return Err(GatewayError::bad_upstream(format!(
                "Gemini returned a body that is not JSON: {e}"
            )))
        }
    };

    let id = match resp.response_id.get() {
        Some(response_id) if !response_id.is_empty() => format!("chatcmpl-{response_id}"),
        _ => new_id("chatcmpl-"),
    };
    let model = resp
        .model_version
        .get()
        .map_or(ctx.upstream_model, |model| model.as_ref());
    Ok(json!({
        "id": id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": choices(&resp)?,
        "usage": usage(resp.usage_metadata.get()),
    }))
}

fn choices(resp: &GenerateContentResponse) -> Result<Vec<Value>, GatewayError> {
    let candidates = candidates(&resp.candidates)?;
    if candidates.is_empty() {
        // A blocked prompt comes back without candidates. Clients index `choices[0]`, so answer
        // with one empty choice either way.
        let finish_reason = if resp.prompt_blocked() {
            "content_filter"
        } else {
            "stop"
        };
        return Ok(vec![choice(0, Value::Null, None, None, finish_reason)]);
    }
    candidates
        .iter()
        .enumerate()
        .map(|(position, candidate)| translate_candidate(position, candidate))
        .collect()
}

/// `candidates`, or none when missing or null.
pub(super) fn candidates<'r, 'a>(
    candidates: &'r Field<Vec<Field<Candidate<'a>>>>,
) -> Result<&'r [Field<Candidate<'a>>], GatewayError> {
    match candidates {
        Field::Absent | Field::Null => Ok(&[]),
        Field::Present(candidates) => Ok(candidates),
        Field::Wrong => Err(GatewayError::bad_upstream(
            "Gemini `candidates` is not an array",
        )),
    }
}

/// A candidate's `index`: Gemini omits it for a lone candidate.
pub(super) fn candidate_index(position: usize, candidate: &Field<Candidate>) -> u64 {
    candidate
        .get()
        .and_then(|candidate| candidate.index.ok())
        .unwrap_or(position as u64)
}

/// The candidate itself, which must be an object.
pub(super) fn candidate<'r, 'a>(
    candidate: &'r Field<Candidate<'a>>,
) -> Result<&'r Candidate<'a>, GatewayError> {
    candidate
        .get()
        .ok_or_else(|| GatewayError::bad_upstream("a Gemini candidate is not an object"))
}

fn translate_candidate(
    position: usize,
    candidate: &Field<Candidate>,
) -> Result<Value, GatewayError> {
    let index = candidate_index(position, candidate);
    let candidate = self::candidate(candidate)?;
    let parts = candidate_parts(candidate)?;

    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut tool_calls = Vec::new();
    for part in parts {
        match read_part(part) {
            PartData::FunctionCall(call) => tool_calls.push(tool_call(call)?),
            PartData::Text(t, is_thought) => {
                let target = if is_thought {
                    &mut reasoning
                } else {
                    &mut text
                };
                target.get_or_insert_with(String::new).push_str(t);
            }
            // Other parts (inlineData, executableCode, ...) have no chat.completion equivalent.
            PartData::Other => {}
        }
    }
    let finish_reason = finish_reason(candidate.finish_reason.ok(), !tool_calls.is_empty());
    let content = text.map_or(Value::Null, Value::String);
    let tool_calls = (!tool_calls.is_empty()).then_some(tool_calls);
    Ok(choice(index, content, tool_calls, reasoning, finish_reason))
}

/// What one part holds, for the translators.
pub(super) enum PartData<'r, 'a> {
    /// A `functionCall` member, of any type: one that is not a call with a name is an error.
    FunctionCall(&'r Field<FunctionCall<'a>>),
    /// Text, and whether it is thinking (`thought: true`).
    Text(&'r str, bool),
    Other,
}

pub(super) fn read_part<'r, 'a>(part: &'r Field<Part<'a>>) -> PartData<'r, 'a> {
    let Some(part) = part.get() else {
        return PartData::Other;
    };
    if !part.function_call.is_absent() {
        return PartData::FunctionCall(&part.function_call);
    }
    match part.text.get() {
        Some(text) => PartData::Text(text, part.thought.ok() == Some(true)),
        None => PartData::Other,
    }
}

/// `content.parts`, or none when the candidate has no content (e.g. stopped by a safety filter).
pub(super) fn candidate_parts<'r, 'a>(
    candidate: &'r Candidate<'a>,
) -> Result<&'r [Field<Part<'a>>], GatewayError> {
    let parts = match &candidate.content {
        Field::Absent | Field::Null => return Ok(&[]),
        Field::Present(content) => &content.parts,
        Field::Wrong => {
            return Err(GatewayError::bad_upstream(
                "a Gemini candidate's `content` is not an object",
            ))
        }
    };
    match parts {
        Field::Absent | Field::Null => Ok(&[]),
        Field::Present(parts) => Ok(parts),
        Field::Wrong => Err(GatewayError::bad_upstream(
            "a Gemini candidate's `content.parts` is not an array",
        )),
    }
}

/// A `functionCall` part -> an OpenAI tool call with a generated id (Gemini sends none).
pub(super) fn tool_call(call: &Field<FunctionCall>) -> Result<Value, GatewayError> {
    let call = call.get();
    let name = call
        .and_then(|call| call.name.get())
        .ok_or_else(|| GatewayError::bad_upstream("a Gemini functionCall has no name"))?;
    let arguments = match call.and_then(|call| call.args.as_ref()) {
        None => "{}".to_string(),
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
pub(super) fn finish_reason(reason: Option<FinishReason>, has_tool_calls: bool) -> &'static str {
    use FinishReason::*;
    match reason {
        Some(MaxTokens) => "length",
        Some(Safety | Blocklist | ProhibitedContent | Spii | Recitation | ImageSafety) => {
            "content_filter"
        }
        Some(Stop) if has_tool_calls => "tool_calls",
        Some(
            Stop
            | Unspecified
            | Language
            | Other
            | MalformedFunctionCall
            | UnexpectedToolCall
            | TooManyToolCalls
            | Unknown,
        )
        | None => "stop",
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
pub(super) fn usage(meta: Option<&UsageMetadata>) -> Value {
    let meta = meta.copied().unwrap_or_default();
    let count = |count: Field<u64>| count.ok().unwrap_or(0);
    let prompt = count(meta.prompt_token_count);
    let thoughts = count(meta.thoughts_token_count);
    let completion = count(meta.candidates_token_count).saturating_add(thoughts);
    let total = meta
        .total_token_count
        .ok()
        .unwrap_or_else(|| prompt.saturating_add(completion));
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": { "cached_tokens": count(meta.cached_content_token_count) },
        "completion_tokens_details": { "reasoning_tokens": thoughts },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::gemini::testing::{fixture, FINISH_REASONS, GENERATED};
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
        let cases = FINISH_REASONS;
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
    fn bodies_that_are_not_json_are_refused_as_a_json_parser_refuses_them() {
        // Skipped members are checked too: strings' escapes and UTF-8, numbers' range, depth.
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        for body in [
            &b"{\"candidates\":[]} x"[..],
            br#"{"candidates":[{"content":{"parts":[{"text":"\x"}]}}]}"#,
            br#"{"unknown":"\ud800"}"#,
            br#"{"unknown":1e999}"#,
            b"{\"unknown\":\"\xff\"}",
            deep.as_bytes(),
        ] {
            let err = chat_response(body, &RESP_CTX).expect_err("rejected");
            let parser = serde_json::from_slice::<Value>(body).expect_err("not JSON");
            assert_eq!(
                err.message,
                format!("Gemini returned a body that is not JSON: {parser}")
            );
            assert_eq!(err.code.as_deref(), Some("bad_upstream_response"));
        }
    }

    #[test]
    fn members_of_another_type_or_repeated_read_as_before() {
        // A repeated member counts once, the last one, as in a parsed JSON object.
        let out = response(
            r#"{"candidates":5,"candidates":[{"content":{"parts":[{"text":"a","text":"b"}]},"finishReason":"S\u0054OP"}],"responseId":7,"modelVersion":"m"}"#,
        );
        assert_eq!(out["choices"][0]["message"]["content"], "b");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["model"], "m");
        assert!(out["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")));
        // A functionCall of any type but a named call is an error, even null.
        let err = chat_response(
            br#"{"candidates":[{"content":{"parts":[{"functionCall":null}]}}]}"#,
            &RESP_CTX,
        )
        .expect_err("rejected");
        assert_eq!(err.message, "a Gemini functionCall has no name");
        // A block reason of any type blocks; a text or thought of the wrong type is skipped.
        let out = response(r#"{"candidates":[],"promptFeedback":{"blockReason":0}}"#);
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        let out = response(
            r#"{"candidates":[{"content":{"parts":[{"text":1},{"text":"t","thought":"true"}]},"index":1.0}]}"#,
        );
        assert_eq!(out["choices"][0]["message"]["content"], "t");
        assert_eq!(out["choices"][0]["index"], 0);
    }

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
