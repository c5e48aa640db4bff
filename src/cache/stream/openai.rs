//! Cached answers and OpenAI chat streams, both ways: a whole `chat.completion` written as the
//! `chat.completion.chunk` events of a stream (for a streamed request answered from the cache),
//! and the chunks of a streamed answer gathered into a whole `chat.completion` (to store it).

use super::Gatherer;
use crate::stream::sse::SseEvent;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The members a completion and each of its stream's chunks share.
const HEAD_FIELDS: [&str; 5] = [
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

/// The events of a stream carrying `whole` (a `chat.completion`), ending with `data: [DONE]`;
/// with `include_usage`, a usage chunk (`choices: []`) before it, as OpenAI sends it. `None` when
/// `whole` is not a chat completion.
pub fn completion_to_sse(whole: &[u8], include_usage: bool) -> Option<Bytes> {
    let completion: Value = serde_json::from_slice(whole).ok()?;
    let choices = completion.get("choices")?.as_array()?;
    let mut head = Map::new();
    for name in HEAD_FIELDS {
        if let Some(v) = completion.get(name) {
            head.insert(name.into(), v.clone());
        }
    }
    head.insert("object".into(), json!("chat.completion.chunk"));
    let mut out = Vec::with_capacity(whole.len() + 512);
    let mut event = |choices: Value, usage: Option<&Value>| {
        let mut chunk = head.clone();
        chunk.insert("choices".into(), choices);
        if let Some(usage) = usage {
            chunk.insert("usage".into(), usage.clone());
        }
        out.extend_from_slice(b"data: ");
        // Writing a `Value` to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &Value::Object(chunk));
        out.extend_from_slice(b"\n\n");
    };
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or_else(|| json!(i));
        let message = choice.get("message").and_then(Value::as_object);
        let mut delta = Map::new();
        delta.insert("role".into(), json!("assistant"));
        for (name, value) in message.into_iter().flatten() {
            match name.as_str() {
                "role" => {}
                // Each call carries its position, as stream deltas do.
                "tool_calls" => {
                    let calls = value.as_array().map(|calls| {
                        calls
                            .iter()
                            .enumerate()
                            .map(|(n, call)| {
                                let mut call = call.clone();
                                if let Some(call) = call.as_object_mut() {
                                    call.insert("index".into(), json!(n));
                                }
                                call
                            })
                            .collect::<Vec<_>>()
                    });
                    delta.insert(name.clone(), calls.map_or(Value::Null, Value::Array));
                }
                _ if !value.is_null() => {
                    delta.insert(name.clone(), value.clone());
                }
                _ => {}
            }
        }
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        event(
            json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null}]),
            None,
        );
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        event(
            json!([{"index": index, "delta": {}, "finish_reason": finish}]),
            None,
        );
    }
    if include_usage {
        if let Some(usage) = completion.get("usage").filter(|u| !u.is_null()) {
            event(json!([]), Some(usage));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(Bytes::from(out))
}

/// Whether an OpenAI chat request asks for the usage chunk (`stream_options.include_usage`).
pub fn asks_for_usage(request_body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Request {
        stream_options: Option<StreamOptions>,
    }
    #[derive(serde::Deserialize)]
    struct StreamOptions {
        include_usage: Option<bool>,
    }
    serde_json::from_slice::<Request>(request_body)
        .ok()
        .and_then(|r| r.stream_options?.include_usage)
        .unwrap_or(false)
}

/// One choice, gathered.
#[derive(Default)]
struct ChoiceParts {
    content: Option<String>,
    refusal: Option<String>,
    /// By the calls' `index`.
    tool_calls: Vec<Value>,
    finish_reason: Value,
}

/// Gathers an OpenAI chat stream's chunks into the whole answer they carried.
#[derive(Default)]
pub struct ChunkGather {
    head: Map<String, Value>,
    choices: Vec<ChoiceParts>,
    usage: Option<Value>,
    done: bool,
}

/// The most choices gathered (`n` is far smaller in practice); more fail the gathering.
const MAX_CHOICES: usize = 128;

impl Gatherer for ChunkGather {
    fn event(&mut self, event: &SseEvent) -> bool {
        if self.done {
            return false;
        }
        if event.data == "[DONE]" {
            self.done = true;
            return true;
        }
        let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(&event.data) else {
            return false;
        };
        if chunk.contains_key("error") {
            return false;
        }
        for name in HEAD_FIELDS {
            if let (false, Some(v)) = (self.head.contains_key(name), chunk.get(name)) {
                self.head.insert(name.into(), v.clone());
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            let Some(index) = choice.get("index").and_then(Value::as_u64) else {
                return false;
            };
            let Some(index) = usize::try_from(index).ok().filter(|i| *i < MAX_CHOICES) else {
                return false;
            };
            if self.choices.len() <= index {
                self.choices.resize_with(index + 1, ChoiceParts::default);
            }
            let parts = &mut self.choices[index];
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                parts.finish_reason = reason.clone();
            }
            let Some(delta) = choice.get("delta") else {
                continue;
            };
            for (field, slot) in [
                ("content", &mut parts.content),
                ("refusal", &mut parts.refusal),
            ] {
                if let Some(text) = delta.get(field).and_then(Value::as_str) {
                    slot.get_or_insert_with(String::new).push_str(text);
                }
            }
            let calls = delta.get("tool_calls").and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                if !merge_tool_call(&mut parts.tool_calls, call) {
                    return false;
                }
            }
        }
        true
    }

    /// The whole answer, when the stream ended properly (`data: [DONE]`, no error).
    fn finish(self, limit: usize) -> Option<Bytes> {
        if !self.done || self.choices.is_empty() {
            return None;
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .enumerate()
            .map(|(index, parts)| {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                message.insert(
                    "content".into(),
                    parts.content.map_or(Value::Null, Value::String),
                );
                if let Some(refusal) = parts.refusal {
                    message.insert("refusal".into(), Value::String(refusal));
                }
                if !parts.tool_calls.is_empty() {
                    message.insert("tool_calls".into(), Value::Array(parts.tool_calls));
                }
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": parts.finish_reason,
                })
            })
            .collect();
        let mut whole = self.head;
        whole.insert("object".into(), json!("chat.completion"));
        whole.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            whole.insert("usage".into(), usage);
        }
        let bytes = serde_json::to_vec(&Value::Object(whole)).ok()?;
        (bytes.len() <= limit).then(|| Bytes::from(bytes))
    }
}

/// Adds one tool call delta to the calls gathered so far (by its `index`): the first delta of a
/// call brings its id, type and name, the later ones pieces of its arguments.
fn merge_tool_call(calls: &mut Vec<Value>, delta: &Value) -> bool {
    let Some(index) = delta.get("index").and_then(Value::as_u64) else {
        return false;
    };
    let Some(index) = usize::try_from(index).ok().filter(|i| *i < MAX_CHOICES) else {
        return false;
    };
    if calls.len() <= index {
        calls.resize_with(
            index + 1,
            || json!({"id": null, "type": "function", "function": {"name": null, "arguments": ""}}),
        );
    }
    let call = &mut calls[index];
    for field in ["id", "type"] {
        if let Some(v) = delta.get(field).filter(|v| !v.is_null()) {
            call[field] = v.clone();
        }
    }
    if let Some(function) = delta.get("function") {
        if let Some(name) = function.get("name").filter(|v| !v.is_null()) {
            call["function"]["name"] = name.clone();
        }
        if let Some(piece) = function.get("arguments").and_then(Value::as_str) {
            let mut arguments = call["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            arguments.push_str(piece);
            call["function"]["arguments"] = Value::String(arguments);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::stream::Gathering;

    fn whole() -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                "message": {"role": "assistant", "content": "Hello there",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        })
    }

    #[test]
    fn a_whole_answer_streams_and_gathers_back() {
        let body = serde_json::to_vec(&whole()).unwrap_or_default();
        let sse = completion_to_sse(&body, true).unwrap_or_default();
        let text = String::from_utf8_lossy(&sse);
        assert!(
            text.contains("\"object\":\"chat.completion.chunk\""),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        // Fed back in pieces of any size, the stream is the same answer.
        let mut gather = Gathering::new(1 << 20, ChunkGather::default());
        for piece in sse.chunks(7) {
            assert!(gather.push(piece));
        }
        let back: Value = gather
            .finish()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert_eq!(back, whole());
    }

    #[test]
    fn the_usage_chunk_is_asked_for_in_stream_options() {
        assert!(asks_for_usage(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#
        ));
        assert!(!asks_for_usage(br#"{"stream":true}"#));
        assert!(!asks_for_usage(
            br#"{"stream_options":{"include_usage":false}}"#
        ));
    }

    #[test]
    fn usage_only_when_asked() {
        let body = serde_json::to_vec(&whole()).unwrap_or_default();
        let sse = completion_to_sse(&body, false).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&sse).contains("prompt_tokens"));
    }

    #[test]
    fn arguments_in_pieces_are_joined() {
        let mut gather = Gathering::new(1 << 20, ChunkGather::default());
        let events = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
        ];
        for e in events {
            assert!(gather.push(format!("data: {e}\n\n").as_bytes()));
        }
        assert!(gather.push(b"data: [DONE]\n\n"));
        let back: Value = gather
            .finish()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let call = &back["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(call["id"], "call_1");
        assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(back["choices"][0]["message"]["content"], Value::Null);
    }

    #[test]
    fn a_stream_that_did_not_end_properly_is_not_kept() {
        let chunk = r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
        let mut cut = Gathering::new(1 << 20, ChunkGather::default());
        cut.push(format!("{chunk}\n\n").as_bytes());
        assert!(cut.finish().is_none());
        let mut failed = Gathering::new(1 << 20, ChunkGather::default());
        failed.push(format!("{chunk}\n\ndata: {{\"error\":{{\"message\":\"x\"}}}}\n\n").as_bytes());
        failed.push(b"data: [DONE]\n\n");
        assert!(failed.finish().is_none());
    }
}
