//! Anthropic Messages SSE events -> OpenAI `chat.completion.chunk` objects.

use crate::error::ErrorCode;
use crate::error::GatewayError;
use crate::ids;
use crate::stream::chunk::{ChunkSource, ChunkStamp, StreamContext, StreamOut, TextField};
use crate::stream::sse::SseEvent;
use crate::wire::anthropic::read::{
    BlockKind, ContentBlockDelta, ContentBlockStart, DeltaKind, ErrorEvent, EventType,
    MessageDelta, MessageStart, Unread,
};
use crate::wire::anthropic::{ErrorType, EventKind, StopReason, Usage};
use crate::wire::lenient::{read_object, Lenient};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Turns one Anthropic Messages SSE stream into OpenAI `chat.completion.chunk` objects.
#[derive(Debug)]
pub struct AnthropicChunkSource {
    /// Id, model and `created` of every chunk; the id and model come from the first event.
    stamp: ChunkStamp,
    /// The latest counts of each kind (every event that carries usage carries running totals).
    usage: Usage,
    /// Anthropic block index -> OpenAI tool call index. Text and thinking blocks take block
    /// indexes too, so the two numberings differ. Few entries: a Vec beats a map.
    tools: Vec<(u64, usize)>,
    next_tool: usize,
    finish_sent: bool,
    /// `Done` or `Error` went out; nothing more may follow.
    finished: bool,
}

impl AnthropicChunkSource {
    pub fn new(ctx: StreamContext) -> Self {
        AnthropicChunkSource {
            stamp: ChunkStamp::new(ctx),
            usage: Usage::default(),
            tools: Vec::new(),
            next_tool: 0,
            finish_sent: false,
            finished: false,
        }
    }

    /// Sends the role chunk once. Content before any `message_start` gets a generated id
    /// rather than being dropped.
    fn start(&mut self, id: Option<String>, model: Option<String>, out: &mut Vec<StreamOut>) {
        if self.stamp.id.is_some() {
            return;
        }
        self.stamp.id = Some(id.unwrap_or_else(|| ids::new_id("chatcmpl-")));
        self.stamp.model = model.unwrap_or_else(|| self.stamp.ctx.upstream_model.clone());
        out.push(self.stamp.role());
    }

    fn fail(&mut self, error: GatewayError, out: &mut Vec<StreamOut>) {
        self.finished = true;
        out.push(StreamOut::Error(error));
    }

    /// The event's data as `T`; a 502 that ends the stream if it is not a JSON object.
    fn read<T: DeserializeOwned + for<'de> Lenient<'de>>(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<StreamOut>,
    ) -> Option<T> {
        match read_object(&event.data) {
            Ok(data) => Some(data),
            Err(_) => {
                let error = GatewayError::bad_upstream("invalid stream event from upstream");
                self.fail(error, out);
                None
            }
        }
    }

    fn message_start(&mut self, data: MessageStart, out: &mut Vec<StreamOut>) {
        // A repeated message_start must not repeat the role chunk nor reset the usage.
        if self.stamp.id.is_some() {
            return;
        }
        let message = data.message.unwrap_or_default();
        if let Some(usage) = &message.usage {
            self.usage.update(usage);
        }
        self.start(message.id, message.model, out);
    }

    fn block_start(&mut self, data: ContentBlockStart, out: &mut Vec<StreamOut>) {
        let index = data.index;
        let Some(block) = data.content_block else {
            return;
        };
        match block.kind {
            Some(BlockKind::ToolUse) => {
                if index.is_some_and(|i| self.tool_index(i).is_some()) {
                    return; // the same block started twice
                }
                let t = self.next_tool;
                self.next_tool += 1;
                if let Some(i) = index {
                    self.tools.push((i, t));
                }
                let id = block.id.unwrap_or_else(|| ids::new_id("call_"));
                let name = block.name.unwrap_or_default();
                self.start(None, None, out);
                let call = json!({
                    "index": t,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                });
                out.push(self.stamp.delta(json!({ "tool_calls": [call] }), None));
            }
            Some(BlockKind::Text) => {
                // Anthropic starts text blocks empty; only a non-empty start carries content.
                if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                    self.start(None, None, out);
                    out.push(self.stamp.text(TextField::Content, text));
                }
            }
            // thinking, redacted_thinking, server tool blocks: nothing until their deltas.
            Some(BlockKind::Thinking | BlockKind::Other) | None => {}
        }
    }

    fn block_delta(&mut self, data: ContentBlockDelta, out: &mut Vec<StreamOut>) {
        let Some(delta) = data.delta else {
            return;
        };
        let (field, text) = match delta.kind {
            Some(DeltaKind::TextDelta) => (TextField::Content, delta.text),
            Some(DeltaKind::ThinkingDelta) => (TextField::Reasoning, delta.thinking),
            Some(DeltaKind::InputJsonDelta) => {
                // Input of a block that is not a client tool call (server tools) is dropped.
                let (Some(arguments), Some(t)) = (
                    delta.partial_json,
                    data.index.and_then(|i| self.tool_index(i)),
                ) else {
                    return;
                };
                self.start(None, None, out);
                let call = json!({ "index": t, "function": { "arguments": arguments } });
                out.push(self.stamp.delta(json!({ "tool_calls": [call] }), None));
                return;
            }
            // signature_delta, citations_delta and future deltas have no OpenAI counterpart.
            Some(DeltaKind::Other) | None => return,
        };
        if let Some(text) = text {
            self.start(None, None, out);
            out.push(self.stamp.text(field, text));
        }
    }

    fn message_delta(&mut self, data: MessageDelta, out: &mut Vec<StreamOut>) {
        if let Some(usage) = &data.usage {
            self.usage.update(usage);
        }
        if self.finish_sent {
            return;
        }
        self.finish_sent = true;
        let reason = data.delta.and_then(|d| d.stop_reason);
        self.start(None, None, out);
        let finish = StopReason::to_finish_reason(reason);
        out.push(self.stamp.delta(json!({}), Some(finish)));
    }

    fn message_stop(&mut self, out: &mut Vec<StreamOut>) {
        if self.stamp.ctx.include_usage {
            self.start(None, None, out);
            let mut chunk = self.stamp.envelope(json!([]));
            chunk.insert("usage".into(), self.usage.to_openai());
            out.push(StreamOut::Chunk(serde_json::Value::Object(chunk)));
        }
        self.finished = true;
        out.push(StreamOut::Done);
    }

    fn error_event(&mut self, data: ErrorEvent, raw: &str, out: &mut Vec<StreamOut>) {
        let status = ErrorType::mid_stream_status(data.error.and_then(|e| e.kind));
        let error = crate::error::from_upstream(status, raw.as_bytes(), "");
        self.fail(error, out);
    }

    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tools
            .iter()
            .find(|(b, _)| *b == block)
            .map(|(_, t)| *t)
    }
}

impl ChunkSource for AnthropicChunkSource {
    fn usage(&self) -> Option<crate::limits::usage::TokenUsage> {
        Some(self.usage.tokens())
    }

    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        // The `event:` name and the data's `type` agree on Anthropic; the name wins, the type
        // serves streams relayed without names. Events named as none this translator knows
        // (added after it was written) are skipped without reading their data.
        let kind = match event.event.as_deref() {
            Some(name) => EventKind::from_name(name),
            None => match self.read::<EventType>(event, out) {
                Some(data) => data.kind.unwrap_or(EventKind::Other),
                None => return,
            },
        };
        match kind {
            EventKind::MessageStart => {
                if let Some(data) = self.read(event, out) {
                    self.message_start(data, out);
                }
            }
            EventKind::ContentBlockStart => {
                if let Some(data) = self.read(event, out) {
                    self.block_start(data, out);
                }
            }
            EventKind::ContentBlockDelta => {
                if let Some(data) = self.read(event, out) {
                    self.block_delta(data, out);
                }
            }
            EventKind::MessageDelta => {
                if let Some(data) = self.read(event, out) {
                    self.message_delta(data, out);
                }
            }
            EventKind::MessageStop => {
                if self.read::<Unread>(event, out).is_some() {
                    self.message_stop(out);
                }
            }
            EventKind::Error => {
                if let Some(data) = self.read(event, out) {
                    self.error_event(data, &event.data, out);
                }
            }
            // Nothing to translate, but the data must still be an event.
            EventKind::ContentBlockStop | EventKind::Ping => {
                let _ = self.read::<Unread>(event, out);
            }
            EventKind::Other => {}
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        let error = GatewayError::new(502, "upstream stream ended before its final event")
            .with_code(ErrorCode::StreamTruncated);
        self.fail(error, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_helpers::odd_values;
    use super::*;
    use crate::test_support::{mutations, normalize_jsonl, render, splits};
    use serde_json::Value;

    const CREATED: u64 = 1_748_779_200;

    fn stream_ctx(include_usage: bool) -> StreamContext {
        StreamContext {
            upstream_model: "claude-sonnet-4-5".into(),
            created: CREATED,
            include_usage,
        }
    }

    macro_rules! stream_fixture {
        ($sse:literal, $expected:literal, $include_usage:expr) => {
            (
                $sse,
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/anthropic/",
                    $sse
                ))
                .as_slice(),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/anthropic/",
                    $expected
                )),
                $include_usage,
            )
        };
    }

    /// (name, upstream bytes, expected jsonl, include_usage).
    fn stream_fixtures() -> Vec<(&'static str, &'static [u8], &'static str, bool)> {
        vec![
            stream_fixture!("stream_text.sse", "stream_text.openai.jsonl", false),
            stream_fixture!(
                "stream_text.sse",
                "stream_text.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_parallel_tools.sse",
                "stream_parallel_tools.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!("stream_thinking.sse", "stream_thinking.openai.jsonl", false),
            stream_fixture!(
                "stream_cache_usage.sse",
                "stream_cache_usage.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_cache_usage.sse",
                "stream_cache_usage.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!("stream_error.sse", "stream_error.openai.jsonl", false),
            stream_fixture!(
                "stream_duplicate_start.sse",
                "stream_duplicate_start.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_truncated.sse",
                "stream_truncated.openai.jsonl",
                false
            ),
        ]
    }

    /// Runs upstream bytes, delivered in `pieces`, through the SSE parser and the translator.
    fn run_pieces(pieces: &[&[u8]], include_usage: bool) -> Vec<StreamOut> {
        let mut source = AnthropicChunkSource::new(stream_ctx(include_usage));
        crate::test_support::run_pieces(&mut source, pieces)
    }

    fn run_stream(bytes: &[u8], include_usage: bool) -> Vec<StreamOut> {
        run_pieces(&[bytes], include_usage)
    }

    fn chunks(outs: &[StreamOut]) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| o.chunk().map(std::borrow::Cow::into_owned))
            .collect()
    }

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn feed(source: &mut AnthropicChunkSource, events: &[(&str, &str)]) -> Vec<StreamOut> {
        let mut out = Vec::new();
        for (name, data) in events {
            source.on_event(&event(Some(name), data), &mut out);
        }
        out
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":5,"output_tokens":1}}}"#;

    #[test]
    fn stream_golden_fixtures() {
        for (name, bytes, expected, include_usage) in stream_fixtures() {
            assert_eq!(
                render(&run_stream(bytes, include_usage)),
                normalize_jsonl(expected),
                "fixture {name}, include_usage {include_usage}"
            );
        }
    }

    #[test]
    fn stream_chunks_share_id_model_created_and_follow_openai_shape() {
        for (name, bytes, _, include_usage) in stream_fixtures() {
            let outs = run_stream(bytes, include_usage);
            let chunks = chunks(&outs);
            let first = chunks.first().expect("a first chunk");
            assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{name}");
            for c in &chunks {
                assert_eq!(c["id"], first["id"], "{name}");
                assert_eq!(c["model"], first["model"], "{name}");
                assert_eq!(c["created"], CREATED, "{name}");
                assert_eq!(c["object"], "chat.completion.chunk", "{name}");
                let choices = c["choices"].as_array().expect("choices is a list");
                if let Some(choice) = choices.first() {
                    assert_eq!(choice["index"], 0);
                    assert!(choice["delta"].is_object());
                    assert!(choice["logprobs"].is_null());
                    assert!(choice.get("finish_reason").is_some());
                    assert_eq!(c.get("usage").is_some(), include_usage, "{name}");
                } else {
                    assert!(c["usage"].is_object(), "{name}: empty choices carry usage");
                }
            }
            let roles = chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"].get("role").is_some())
                .count();
            assert_eq!(roles, 1, "{name}: one role chunk");
            let terminals = outs.iter().filter(|o| o.is_terminal()).count();
            assert_eq!(terminals, 1, "{name}: one terminal output");
            assert!(outs.last().is_some_and(|o| o.is_terminal()), "{name}");
        }
    }

    #[test]
    fn parallel_tool_calls_count_from_zero_not_block_index() {
        let (_, bytes, _, _) = stream_fixtures()[2];
        let outs = run_stream(bytes, false);
        let starts: Vec<(Value, Value)> = chunks(&outs)
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0].as_object())
            .filter(|call| call.contains_key("id"))
            .map(|call| (call["index"].clone(), call["id"].clone()))
            .collect();
        assert_eq!(
            starts,
            vec![
                (json!(0), json!("toolu_01T1x1fJ34qAmk2tNTrN7Up6")),
                (json!(1), json!("toolu_01B7kXq2cZpJ3vWn8sTyRmLd")),
            ]
        );
        // Arguments reassemble per call index.
        let mut args = [String::new(), String::new()];
        for c in chunks(&outs) {
            let call = &c["choices"][0]["delta"]["tool_calls"][0];
            if let (Some(i), Some(a)) = (
                call["index"].as_u64(),
                call["function"]["arguments"].as_str(),
            ) {
                args[i as usize].push_str(a);
            }
        }
        assert_eq!(args[0], r#"{"location": "Paris, France"}"#);
        assert_eq!(args[1], r#"{"location": "Tokyo, Japan"}"#);
    }

    #[test]
    fn stream_every_stop_reason() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/anthropic/stream_text.sse"
        ));
        let cases = [
            ("\"end_turn\"", json!("stop")),
            ("\"stop_sequence\"", json!("stop")),
            ("\"pause_turn\"", json!("stop")),
            ("\"max_tokens\"", json!("length")),
            ("\"tool_use\"", json!("tool_calls")),
            ("\"refusal\"", json!("content_filter")),
            ("\"model_context_window_exceeded\"", json!("stop")),
            ("null", json!("stop")),
        ];
        assert!(text.contains(r#""stop_reason":"end_turn""#));
        for (reason, expected) in cases {
            let stream = text.replace(
                r#""stop_reason":"end_turn""#,
                &format!(r#""stop_reason":{reason}"#),
            );
            let outs = run_stream(stream.as_bytes(), false);
            let finishes: Vec<Value> = chunks(&outs)
                .into_iter()
                .map(|c| c["choices"][0]["finish_reason"].clone())
                .filter(|f| !f.is_null())
                .collect();
            assert_eq!(finishes, vec![expected], "stop_reason {reason}");
            assert_eq!(outs.last(), Some(&StreamOut::Done));
        }
    }

    #[test]
    fn usage_is_set_not_added_and_message_delta_input_counts_override() {
        let mut source = AnthropicChunkSource::new(stream_ctx(true));
        let out = feed(
            &mut source,
            &[
                ("message_start", START),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":6,"cache_read_input_tokens":10,"output_tokens":9}}"#,
                ),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
        );
        let finishes = chunks(&out)
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .count();
        assert_eq!(finishes, 1, "one finish chunk");
        let last = chunks(&out).last().map(|c| c["usage"].clone());
        assert_eq!(
            last,
            Some(json!({
                "prompt_tokens": 16,
                "completion_tokens": 9,
                "total_tokens": 25,
                "prompt_tokens_details": {"cached_tokens": 10},
            }))
        );
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn error_events_map_status_kind_and_message() {
        let cases = [
            ("overloaded_error", 529, "overloaded_error"),
            ("rate_limit_error", 429, "rate_limit_error"),
            ("invalid_request_error", 400, "invalid_request_error"),
            ("api_error", 500, "api_error"),
            ("brand_new_error", 500, "brand_new_error"),
        ];
        for (kind, status, openai_kind) in cases {
            let mut source = AnthropicChunkSource::new(stream_ctx(false));
            let data = format!(
                r#"{{"type":"error","error":{{"type":"{kind}","message":"Boom {kind}"}}}}"#
            );
            let mut out = feed(&mut source, &[("message_start", START), ("error", &data)]);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("{kind}: no error, got {out:?}");
            };
            assert_eq!(e.status, status, "{kind}");
            assert_eq!(e.kind(), openai_kind, "{kind}");
            assert_eq!(e.message, format!("Boom {kind}"));
            // Nothing after the error, not even at the end of the bytes.
            let n = out.len();
            source.on_event(
                &event(Some("message_stop"), r#"{"type":"message_stop"}"#),
                &mut out,
            );
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "{kind}: output after the error");
        }
    }

    #[test]
    fn unparseable_event_data_is_a_502_and_ends_the_stream() {
        for data in [
            "{\"type\":",
            "[DONE]",
            "",
            "null",
            "[1]",
            "\"message_start\"",
        ] {
            let mut source = AnthropicChunkSource::new(stream_ctx(false));
            let mut out = feed(&mut source, &[("message_start", START)]);
            source.on_event(&event(Some("content_block_delta"), data), &mut out);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("data {data:?}: no error, got {out:?}");
            };
            assert_eq!(e.status, 502);
            assert_eq!(e.message, "invalid stream event from upstream");
            let n = out.len();
            feed(
                &mut source,
                &[("message_stop", r#"{"type":"message_stop"}"#)],
            );
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "data {data:?}: output after the error");
        }
    }

    /// Named `content_block_delta` events are read as their name says; unnamed ones are read for
    /// their data's `type` first. Both must give the same chunks for every payload.
    #[test]
    fn typed_text_deltas_match_the_general_path() {
        let payloads = [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"q \" \\ \u00e9 \n"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":null}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","text":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","text":"b"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","extra":[1]},"more":{}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":null}"#,
            r#"{"type":"content_block_delta","index":0}"#,
            r#"[1]"#,
            r#"not json"#,
        ];
        for payload in payloads {
            let run = |name: Option<&str>| {
                let mut source = AnthropicChunkSource::new(stream_ctx(true));
                let mut out = Vec::new();
                source.on_event(&event(Some("message_start"), START), &mut out);
                source.on_event(&event(name, payload), &mut out);
                render(&out)
            };
            assert_eq!(run(Some("content_block_delta")), run(None), "{payload}");
        }
    }

    #[test]
    fn truncated_stream_is_an_error_once_and_a_finished_one_is_not() {
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let mut out = Vec::new();
        source.on_end(&mut out);
        source.on_end(&mut out);
        assert_eq!(
            out,
            vec![StreamOut::Error(
                GatewayError::new(502, "upstream stream ended before its final event")
                    .with_code(ErrorCode::StreamTruncated)
            )]
        );
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[
                ("message_start", START),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
        );
        source.on_end(&mut out);
        assert_eq!(out.last(), Some(&StreamOut::Done));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn unknown_events_pings_and_unnamed_events() {
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[
                ("message_start", START),
                ("ping", r#"{"type":"ping"}"#),
                ("future_event", "not even json"),
                (
                    "content_block_stop",
                    r#"{"type":"content_block_stop","index":0}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
                ),
            ],
        );
        assert_eq!(out.len(), 1, "only the role chunk: {out:?}");
        // Without `event:` names, the data's `type` decides.
        let text =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#;
        source.on_event(&event(None, text), &mut out);
        source.on_event(&event(None, r#"{"type":"future"}"#), &mut out);
        source.on_event(&event(None, r#"{"type":"message_stop"}"#), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(chunks(&out)[1]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn content_without_message_start_still_gets_a_role_chunk_and_an_id() {
        let mut source = AnthropicChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            )],
        );
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["model"], "claude-sonnet-4-5");
        assert!(chunks[1]["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(chunks[0]["id"], chunks[1]["id"]);
    }

    #[test]
    fn any_byte_split_gives_the_same_output() {
        for (name, bytes, _, include_usage) in stream_fixtures() {
            let whole = run_stream(bytes, include_usage);
            for (n, pieces) in splits(bytes, 0x5eed, 300).iter().enumerate() {
                let got = run_pieces(pieces, include_usage);
                assert_eq!(
                    got,
                    whole,
                    "{name}: split {n}: {:?}",
                    pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn odd_stream_payloads_do_not_panic() {
        let odd = odd_values();
        let templates = [
            (
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"usage":{"input_tokens":5,"cache_read_input_tokens":2,"cache_creation_input_tokens":1,"output_tokens":1}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}),
            ),
            (
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":"pre"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}),
            ),
            (
                "content_block_delta",
                json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"t"}}),
            ),
            (
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":3,"input_tokens":4}}),
            ),
            ("message_stop", json!({"type":"message_stop"})),
            (
                "error",
                json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
            ),
        ];
        let mut count = 0;
        for (name, template) in &templates {
            for variant in mutations(template, &odd) {
                let data = variant.to_string();
                for (started, include_usage) in [(false, false), (true, true)] {
                    for named in [Some(*name), None] {
                        let mut source = AnthropicChunkSource::new(stream_ctx(include_usage));
                        let mut out = Vec::new();
                        if started {
                            source.on_event(&event(Some("message_start"), START), &mut out);
                            source.on_event(&event(Some("content_block_start"), r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#), &mut out);
                        }
                        source.on_event(&event(named, &data), &mut out);
                        source.on_event(&event(named, &data), &mut out);
                        source.on_end(&mut out);
                        let terminal = out.iter().position(|o| o.is_terminal());
                        assert_eq!(terminal, Some(out.len() - 1), "{name} {data}");
                        count += 1;
                    }
                }
            }
        }
        assert!(count > 1000, "only {count} variants");
    }
}
