//! The common stream form (OpenAI chunks) -> Anthropic SSE events.

use super::response::reasoning_text;
use crate::error::GatewayError;
use crate::ids;
use crate::stream::chunk::StreamOut;
use crate::wire::anthropic::write::{
    ContentBlock, Delta, ErrorDetail, Event, Message, MessageDelta,
};
use crate::wire::anthropic::{ErrorType, StopReason, Usage};
use serde_json::{Map, Value};

/// The content block currently open.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call: its OpenAI index (when the backend sent one) and id.
    Tool {
        index: Option<u64>,
        id: String,
    },
}

/// Encodes the common stream (OpenAI chunks) as Anthropic SSE events.
///
/// Event order: `message_start`, `ping`, then per content block `content_block_start`,
/// `content_block_delta`s, `content_block_stop`; finally `message_delta` and `message_stop` (or
/// `error`). The finish reason is held until usage arrives (the usage-only chunk after it) or
/// the stream ends, so `message_delta` can carry the real token counts.
#[derive(Debug)]
pub struct AnthropicEventSink {
    model: String,
    message_id: String,
    started: bool,
    /// `message_stop` or `error` was written: nothing more is.
    ended: bool,
    open: Option<Block>,
    /// The next Anthropic block index.
    next_index: u64,
    /// Tool calls already given a block: (OpenAI index, id).
    tools_seen: Vec<(Option<u64>, String)>,
    stop_reason: Option<StopReason>,
    usage: Option<Usage>,
    /// Usage arrived with or after the finish reason: the message can end.
    usage_final: bool,
}

impl AnthropicEventSink {
    pub fn new(model: &str, message_id: String) -> Self {
        AnthropicEventSink {
            model: model.to_string(),
            message_id,
            started: false,
            ended: false,
            open: None,
            next_index: 0,
            tools_seen: Vec::new(),
            stop_reason: None,
            usage: None,
            usage_final: false,
        }
    }

    /// Appends zero or more complete SSE events (`event: NAME\ndata: JSON\n\n`) to `out`.
    pub fn write(&mut self, item: &StreamOut, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        match item {
            StreamOut::Chunk(chunk) => self.chunk(chunk, out),
            StreamOut::Text(text) => self.chunk(&text.to_chunk(), out),
            StreamOut::Done => self.finish(out),
            StreamOut::Error(e) => self.error(e, out),
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        // Some OpenAI-compatible servers report failures as a chunk `{"error": {...}}`.
        if let Some(err) = chunk.get("error").filter(|e| e.is_object()) {
            if chunk.get("choices").is_none() {
                return self.error(&chunk_error(err), out);
            }
        }
        self.start(out);
        let choices = chunk.get("choices").and_then(Value::as_array);
        // With several choices (n > 1), only the first is an Anthropic message.
        let choice = choices.and_then(|c| {
            c.iter()
                .find(|ch| ch.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(delta) = choice.and_then(|c| c.get("delta")) {
            if let Some(thinking) = reasoning_text(delta) {
                self.ensure_open(Block::Thinking, out);
                self.delta(Delta::ThinkingDelta { thinking }, out);
            }
            if let Some(text) = delta
                .get("content")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                self.ensure_open(Block::Text, out);
                self.delta(Delta::TextDelta { text }, out);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls.iter().filter(|c| c.is_object()) {
                    self.tool_delta(call, out);
                }
            }
        }
        let finish = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if let Some(finish) = finish {
            let has_tool_use = !self.tools_seen.is_empty();
            self.stop_reason = Some(StopReason::from_finish_reason(Some(finish), has_tool_use));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage::from_openai(Some(usage)));
            let usage_only = choices.is_none_or(|c| c.is_empty());
            if usage_only || finish.is_some() || self.stop_reason.is_some() {
                self.usage_final = true;
            }
        }
        if self.stop_reason.is_some() && self.usage_final {
            self.end_message(out);
        }
    }

    fn tool_delta(&mut self, call: &Value, out: &mut Vec<u8>) {
        let index = call.get("index").and_then(Value::as_u64);
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let continues_open = match &self.open {
            Some(Block::Tool {
                index: open_index,
                id: open_id,
            }) => match index {
                Some(_) => index == *open_index,
                // Without an index, a new id is a new call.
                None => id.is_none_or(|id| id == open_id),
            },
            _ => false,
        };
        if !continues_open {
            let seen = self
                .tools_seen
                .iter()
                .any(|(seen_index, seen_id)| match index {
                    Some(_) => index == *seen_index,
                    None => id.is_some_and(|id| id == seen_id),
                });
            if seen {
                // A late fragment of a call whose block is closed: Anthropic cannot reopen it.
                return;
            }
            let id = id
                .map(str::to_string)
                .unwrap_or_else(|| ids::new_id("toolu_"));
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            self.tools_seen.push((index, id.clone()));
            let input = Value::Object(Map::new());
            let start = ContentBlock::ToolUse {
                id: &id,
                name,
                input: &input,
            };
            self.open_block(
                Block::Tool {
                    index,
                    id: id.clone(),
                },
                start,
                out,
            );
        }
        if let Some(args) = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.delta(Delta::InputJsonDelta { partial_json: args }, out);
        }
    }

    /// `message_start` and `ping`, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = Usage {
            input_tokens: Some(0),
            output_tokens: Some(0),
            ..Usage::default()
        };
        let message = Message::new(&self.message_id, &self.model, &[], None, usage);
        Event::MessageStart { message }.write_sse(out);
        Event::Ping.write_sse(out);
    }

    fn ensure_open(&mut self, block: Block, out: &mut Vec<u8>) {
        if self.open.as_ref() == Some(&block) {
            return;
        }
        let start = match block {
            Block::Text => ContentBlock::Text { text: "" },
            Block::Thinking => ContentBlock::Thinking {
                thinking: "",
                signature: "",
            },
            Block::Tool { .. } => return,
        };
        self.open_block(block, start, out);
    }

    fn open_block(&mut self, block: Block, start: ContentBlock, out: &mut Vec<u8>) {
        self.close_block(out);
        let index = self.next_index;
        Event::ContentBlockStart {
            index,
            content_block: start,
        }
        .write_sse(out);
        self.open = Some(block);
        self.next_index += 1;
    }

    fn delta(&mut self, delta: Delta, out: &mut Vec<u8>) {
        let index = self.next_index.saturating_sub(1);
        Event::ContentBlockDelta { index, delta }.write_sse(out);
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open.take().is_some() {
            let index = self.next_index.saturating_sub(1);
            Event::ContentBlockStop { index }.write_sse(out);
        }
    }

    /// Closes the open block, then `message_delta` and `message_stop`.
    fn end_message(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close_block(out);
        let has_tool_use = !self.tools_seen.is_empty();
        let reason = self
            .stop_reason
            .unwrap_or_else(|| StopReason::from_finish_reason(None, has_tool_use));
        // Without usage from the backend, only the count Anthropic always sends.
        let usage = self.usage.unwrap_or(Usage {
            output_tokens: Some(0),
            ..Usage::default()
        });
        Event::MessageDelta {
            delta: MessageDelta::new(reason),
            usage,
        }
        .write_sse(out);
        Event::MessageStop.write_sse(out);
        self.ended = true;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.end_message(out);
    }

    fn error(&mut self, e: &GatewayError, out: &mut Vec<u8>) {
        self.close_block(out);
        let error = ErrorDetail {
            kind: ErrorType::for_error(e),
            message: &e.message,
        };
        Event::Error { error }.write_sse(out);
        self.ended = true;
    }
}

/// An error carried inside a chunk (`{"error": {"message", "type", "code"}}`).
fn chunk_error(err: &Value) -> GatewayError {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the upstream reported an error mid-stream");
    let status = err
        .get("code")
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c))
        .unwrap_or(500);
    let mut e = GatewayError::new(status, message);
    if let Some(kind) = err.get("type").and_then(Value::as_str) {
        e = e.with_kind(kind);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::super::test_helpers::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn stream_fixtures() {
        let bless = std::env::var_os("BLESS_FIXTURES").is_some();
        for name in [
            "stream_text",
            "stream_parallel_tools",
            "stream_reasoning_text",
            "stream_finish_no_usage",
            "stream_error",
            "stream_empty",
        ] {
            let items = stream_items(&fixture_text(&format!("{name}.chunks.jsonl")));
            let got = run_sink(&items);
            check_event_grammar(&got);
            let path = format!("{FIXTURES}/{name}.sse");
            if bless {
                std::fs::write(&path, &got).expect("write fixture");
                continue;
            }
            assert_eq!(got, fixture_text(&format!("{name}.sse")), "fixture {name}");
        }
    }

    #[test]
    fn message_ends_when_usage_arrives_and_nothing_follows() {
        let items = stream_items(&fixture_text("stream_text.chunks.jsonl"));
        let mut sink = AnthropicEventSink::new("m", "msg_1".into());
        let mut out = Vec::new();
        // Up to and including the finish chunk: no message_delta yet.
        for item in &items[..4] {
            sink.write(item, &mut out);
        }
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(!text.contains("message_delta"), "{text}");
        assert!(!text.contains("content_block_stop"), "{text}");
        // The usage chunk ends the message.
        sink.write(&items[4], &mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        let len = out.len();
        sink.write(&StreamOut::Done, &mut out);
        sink.write(&items[1], &mut out);
        sink.write(&StreamOut::Error(GatewayError::new(500, "late")), &mut out);
        assert_eq!(out.len(), len, "nothing after message_stop");
    }

    #[test]
    fn error_before_anything_and_after_error() {
        let got = run_sink(&[
            StreamOut::Error(GatewayError::new(429, "slow down")),
            StreamOut::Done,
        ]);
        assert_eq!(
            got,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}\n\n"
        );
    }

    #[test]
    fn error_object_in_a_chunk_is_an_error_event() {
        let got = run_sink(&[
            StreamOut::Chunk(json!({"choices": [{"index": 0, "delta": {"content": "a"}}]})),
            StreamOut::Chunk(
                json!({"error": {"message": "model crashed", "type": "server_error", "code": 503}}),
            ),
            StreamOut::Done,
        ]);
        check_event_grammar(&got);
        assert!(got.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"model crashed\"}}\n\n"
        ), "{got}");
    }

    #[test]
    fn tool_calls_without_index_and_late_fragments() {
        let chunk = |calls: Value| {
            StreamOut::Chunk(json!({"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}))
        };
        let got = run_sink(&[
            chunk(json!([{"id": "a", "function": {"name": "f", "arguments": "{}"}}])),
            chunk(json!([{"id": "b", "function": {"name": "g", "arguments": "{"}}])),
            chunk(json!([{"function": {"arguments": "}"}}])),
            // A fragment for a closed call is dropped rather than sent to a closed block.
            chunk(json!([{"id": "a", "function": {"arguments": "x"}}])),
            StreamOut::Chunk(
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            ),
            StreamOut::Done,
        ]);
        check_event_grammar(&got);
        assert_eq!(
            got.matches("event: content_block_start").count(),
            2,
            "{got}"
        );
        assert!(got.contains(r#""partial_json":"}""#), "{got}");
        assert!(!got.contains(r#""partial_json":"x""#), "{got}");
        // `stop` with tool calls is still `tool_use`.
        assert!(got.contains(r#""stop_reason":"tool_use""#), "{got}");
    }

    #[test]
    fn other_choices_are_ignored() {
        let got = run_sink(&[
            StreamOut::Chunk(json!({"choices": [
                {"index": 1, "delta": {"content": "second"}},
                {"index": 0, "delta": {"content": "first"}},
            ]})),
            StreamOut::Done,
        ]);
        check_event_grammar(&got);
        assert!(got.contains("first") && !got.contains("second"), "{got}");
    }
}
