//! A `streamGenerateContent?alt=sse` stream -> OpenAI `chat.completion.chunk` objects.

use super::response::{
    candidate, candidate_index, candidate_parts, candidates, finish_reason, read_part, tool_call,
    usage, PartData,
};
use super::wire::{Field, GenerateContentResponse, Part, StreamError, UsageMetadata};
use crate::error::ErrorCode;
use crate::error::GatewayError;
use crate::ids::new_id;
use crate::stream::chunk::{ChunkSource, ChunkStamp, StreamContext, StreamOut, TextField};
use crate::stream::sse::SseEvent;
use serde_json::{json, Value};

/// Turns one Gemini `streamGenerateContent?alt=sse` stream into OpenAI `chat.completion.chunk`
/// objects.
///
/// Every event's data is a whole `GenerateContentResponse`. Gemini sends each function call whole
/// in one part, sends no call ids, and has no terminal event: the stream is complete once a
/// `finishReason` was seen and the bytes end. Only candidate 0 is translated.
#[derive(Debug)]
pub struct GeminiChunkSource {
    /// Id, model and `created` of every chunk; the id and model come from the first event.
    stamp: ChunkStamp,
    /// The latest `usageMetadata`: Gemini's counts are cumulative, so it replaces, never adds.
    usage: Option<UsageMetadata>,
    /// OpenAI tool call index of the next function call, counted across the whole stream.
    next_tool: usize,
    /// A functionCall appeared somewhere in the stream: STOP then means `tool_calls`. Newer models
    /// send the calls and the STOP in different events.
    saw_function_call: bool,
    /// The finish chunk went out; the stream may end now.
    finish_sent: bool,
    /// `Done` or `Error` went out; nothing more may follow.
    finished: bool,
}

impl GeminiChunkSource {
    pub fn new(ctx: StreamContext) -> Self {
        GeminiChunkSource {
            stamp: ChunkStamp::new(ctx),
            usage: None,
            next_tool: 0,
            saw_function_call: false,
            finish_sent: false,
            finished: false,
        }
    }

    /// Sends the role chunk once, taking the id and model from the first event.
    fn start(&mut self, data: &GenerateContentResponse, out: &mut Vec<StreamOut>) {
        if self.stamp.id.is_some() {
            return;
        }
        let id = match data.response_id.get() {
            Some(response_id) if !response_id.is_empty() => format!("chatcmpl-{response_id}"),
            _ => new_id("chatcmpl-"),
        };
        self.stamp.id = Some(id);
        self.stamp.model = match data.model_version.get() {
            Some(model) if !model.is_empty() => model.to_string(),
            _ => self.stamp.ctx.upstream_model.clone(),
        };
        out.push(self.stamp.role());
    }

    fn fail(&mut self, error: GatewayError, out: &mut Vec<StreamOut>) {
        self.finished = true;
        out.push(StreamOut::Error(error));
    }

    /// `{"error": {"code", "message", "status"}}` in the stream: the status is Gemini's `code`
    /// when it is an HTTP error status, else 500.
    fn error_event(&mut self, error: &Field<StreamError>, raw: &str, out: &mut Vec<StreamOut>) {
        let status = error
            .get()
            .and_then(|error| error.code.ok())
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (400..=599).contains(code))
            .unwrap_or(500);
        let error = crate::error::from_upstream(status, raw.as_bytes(), "");
        self.fail(error, out);
    }

    /// One `GenerateContentResponse`.
    fn response(&mut self, data: &GenerateContentResponse, out: &mut Vec<StreamOut>) {
        self.start(data, out);
        if let Field::Present(meta) = data.usage_metadata {
            self.usage = Some(meta);
        }
        let candidates = match candidates(&data.candidates) {
            Ok(candidates) => candidates,
            Err(error) => return self.fail(error, out),
        };
        // With `candidateCount` > 1 the events interleave candidates; only the first is read.
        let candidate = candidates
            .iter()
            .enumerate()
            .find_map(|(position, c)| (candidate_index(position, c) == 0).then_some(c));
        let Some(candidate) = candidate else {
            if candidates.is_empty() && data.prompt_blocked() {
                self.finish("content_filter", out);
            }
            return;
        };
        let candidate = match self::candidate(candidate) {
            Ok(candidate) => candidate,
            Err(error) => return self.fail(error, out),
        };
        let parts = match candidate_parts(candidate) {
            Ok(parts) => parts,
            Err(error) => return self.fail(error, out),
        };
        for part in parts {
            if let Err(error) = self.part(part, out) {
                return self.fail(error, out);
            }
        }
        if let Some(reason) = candidate.finish_reason.ok() {
            let reason = finish_reason(Some(reason), self.saw_function_call);
            self.finish(reason, out);
        }
    }

    /// One part of candidate 0: text, thought text or a whole function call.
    fn part(&mut self, part: &Field<Part>, out: &mut Vec<StreamOut>) -> Result<(), GatewayError> {
        // Content after the finish chunk would break OpenAI's stream shape; Gemini sends none.
        if self.finish_sent {
            return Ok(());
        }
        match read_part(part) {
            PartData::FunctionCall(call) => {
                let mut call = tool_call(call)?;
                if let Some(obj) = call.as_object_mut() {
                    obj.insert("index".into(), json!(self.next_tool));
                }
                self.next_tool += 1;
                self.saw_function_call = true;
                out.push(self.stamp.delta(json!({ "tool_calls": [call] }), None));
            }
            // Gemini ends some streams with an empty text part carrying only a thoughtSignature.
            PartData::Text("", _) => {}
            PartData::Text(text, is_thought) => {
                let field = if is_thought {
                    TextField::Reasoning
                } else {
                    TextField::Content
                };
                out.push(self.stamp.text(field, text.to_string()));
            }
            // Other parts (inlineData, executableCode, ...) have no chunk equivalent.
            PartData::Other => {}
        }
        Ok(())
    }

    fn finish(&mut self, reason: &str, out: &mut Vec<StreamOut>) {
        if self.finish_sent {
            return;
        }
        self.finish_sent = true;
        out.push(self.stamp.delta(json!({}), Some(reason)));
    }
}

impl ChunkSource for GeminiChunkSource {
    fn usage(&self) -> Option<crate::limits::usage::TokenUsage> {
        let meta = self.usage.as_ref()?;
        let count = |count: crate::providers::gemini::wire::Field<u64>| count.ok().unwrap_or(0);
        // Thinking tokens are billed as output.
        Some(crate::limits::usage::TokenUsage {
            input: count(meta.prompt_token_count),
            output: count(meta.candidates_token_count)
                .saturating_add(count(meta.thoughts_token_count)),
            cached_input: count(meta.cached_content_token_count),
            reasoning: count(meta.thoughts_token_count),
        })
    }

    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        let data = match serde_json::from_str::<Field<GenerateContentResponse>>(&event.data) {
            Ok(Field::Present(data)) => data,
            _ => {
                let error = GatewayError::bad_upstream("invalid stream event from upstream");
                return self.fail(error, out);
            }
        };
        match &data.error {
            Field::Absent | Field::Null => self.response(&data, out),
            error => self.error_event(error, &event.data, out),
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamOut>) {
        if self.finished {
            return;
        }
        if !self.finish_sent {
            let error = GatewayError::new(502, "upstream stream ended before its final event")
                .with_code(ErrorCode::StreamTruncated);
            return self.fail(error, out);
        }
        if self.stamp.ctx.include_usage {
            let mut chunk = self.stamp.envelope(json!([]));
            chunk.insert("usage".into(), usage(self.usage.as_ref()));
            out.push(StreamOut::Chunk(Value::Object(chunk)));
        }
        self.finished = true;
        out.push(StreamOut::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::gemini::testing::{FINISH_REASONS, GENERATED};
    use crate::test_support::{mutations, normalize_jsonl, render, splits};
    use std::collections::HashSet;

    const CREATED: u64 = 1_750_000_000;

    fn stream_ctx(include_usage: bool) -> StreamContext {
        StreamContext {
            upstream_model: "gemini-2.5-flash".into(),
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
                    "/tests/fixtures/gemini/",
                    $sse
                ))
                .as_slice(),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/gemini/",
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
                "stream_function_calls.sse",
                "stream_function_calls.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_function_calls.sse",
                "stream_function_calls.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_thinking.sse",
                "stream_thinking.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_max_tokens.sse",
                "stream_max_tokens.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_safety.sse",
                "stream_safety.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_prompt_blocked.sse",
                "stream_prompt_blocked.openai.jsonl",
                false
            ),
            stream_fixture!(
                "stream_error.sse",
                "stream_error.include_usage.openai.jsonl",
                true
            ),
            stream_fixture!(
                "stream_truncated.sse",
                "stream_truncated.include_usage.openai.jsonl",
                true
            ),
        ]
    }

    /// Runs upstream bytes, delivered in `pieces`, through the SSE parser and the translator.
    fn run_pieces(pieces: &[&[u8]], include_usage: bool) -> Vec<StreamOut> {
        let mut source = GeminiChunkSource::new(stream_ctx(include_usage));
        crate::test_support::run_pieces(&mut source, pieces)
    }

    fn run_stream(bytes: &[u8], include_usage: bool) -> Vec<StreamOut> {
        run_pieces(&[bytes], include_usage)
    }

    /// Checks that every chunk carries the same `chatcmpl-` id and that tool call ids are
    /// `call_` ids unique in the stream, then swaps the generated ones for placeholders: the
    /// chunk id when `id_generated` (no responseId upstream), every tool call id always.
    fn normalize_stream(mut outs: Vec<StreamOut>, id_generated: bool) -> Vec<String> {
        let mut stream_id: Option<String> = None;
        let mut call_ids = HashSet::new();
        for out in &mut outs {
            if let StreamOut::Text(text) = out {
                *out = StreamOut::Chunk(text.to_chunk());
            }
            let StreamOut::Chunk(chunk) = out else {
                continue;
            };
            let id = chunk["id"].as_str().expect("chunk id").to_string();
            assert!(
                id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len(),
                "{id}"
            );
            assert_eq!(
                stream_id.get_or_insert_with(|| id.clone()),
                &id,
                "ids differ"
            );
            if id_generated {
                chunk["id"] = json!(format!("chatcmpl-{GENERATED}"));
            }
            let calls = chunk["choices"]
                .get_mut(0)
                .and_then(|c| c["delta"].get_mut("tool_calls"))
                .and_then(Value::as_array_mut);
            for call in calls.into_iter().flatten() {
                let call_id = call["id"].as_str().expect("tool call id").to_string();
                assert!(
                    call_id.starts_with("call_") && call_id.len() > 5,
                    "{call_id}"
                );
                assert!(call_ids.insert(call_id), "tool call ids must be unique");
                call["id"] = json!(format!("call_{GENERATED}"));
            }
        }
        render(&outs)
    }

    fn id_generated(expected: &str) -> bool {
        expected.contains(&format!("chatcmpl-{GENERATED}"))
    }

    fn chunks(outs: &[StreamOut]) -> Vec<Value> {
        outs.iter()
            .filter_map(|o| o.chunk().map(std::borrow::Cow::into_owned))
            .collect()
    }

    fn data_event(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    fn feed(source: &mut GeminiChunkSource, events: &[&str]) -> Vec<StreamOut> {
        let mut out = Vec::new();
        for data in events {
            source.on_event(&data_event(data), &mut out);
        }
        out
    }

    fn finishes(outs: &[StreamOut]) -> Vec<Value> {
        chunks(outs)
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| c["finish_reason"].clone())
            .filter(|f| !f.is_null())
            .collect()
    }

    const TEXT: &str = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"index":0}],"responseId":"r1","modelVersion":"gemini-x"}"#;
    const CALL: &str = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1}}}],"role":"model"},"index":0}]}"#;
    const STOP: &str = r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}]}"#;

    #[test]
    fn stream_golden_fixtures() {
        for (name, bytes, expected, include_usage) in stream_fixtures() {
            assert_eq!(
                normalize_stream(run_stream(bytes, include_usage), id_generated(expected)),
                normalize_jsonl(expected),
                "fixture {name}, include_usage {include_usage}"
            );
        }
    }

    #[test]
    fn stream_fixtures_are_gemini_wire_format() {
        for (name, bytes, _, _) in stream_fixtures() {
            let text = std::str::from_utf8(bytes).expect("UTF-8");
            assert!(text.ends_with("}\r\n\r\n"), "{name}");
            for event in text.split_terminator("\r\n\r\n") {
                let data = event.strip_prefix("data: ").expect("data: prefix");
                assert!(!data.contains('\n') && !data.contains('\r'), "{name}");
                serde_json::from_str::<Value>(data).expect("one JSON object per event");
            }
        }
    }

    #[test]
    fn stream_chunks_share_id_model_created_and_follow_openai_shape() {
        for (name, bytes, _, include_usage) in stream_fixtures() {
            let outs = run_stream(bytes, include_usage);
            let chunks = chunks(&outs);
            let first = chunks.first().expect("a first chunk");
            assert_eq!(
                first["choices"][0]["delta"],
                json!({"role": "assistant", "content": ""}),
                "{name}"
            );
            for c in &chunks {
                assert_eq!(c["id"], first["id"], "{name}");
                assert_eq!(c["model"], first["model"], "{name}");
                assert_eq!(c["created"], CREATED, "{name}");
                assert_eq!(c["object"], "chat.completion.chunk", "{name}");
                let choices = c["choices"].as_array().expect("choices is a list");
                if let Some(choice) = choices.first() {
                    assert_eq!(choices.len(), 1, "{name}");
                    assert_eq!(choice["index"], 0);
                    assert!(choice["delta"].is_object());
                    assert!(choice["logprobs"].is_null());
                    assert!(choice.get("finish_reason").is_some());
                    assert_eq!(c.get("usage"), include_usage.then_some(&Value::Null));
                } else {
                    assert!(include_usage, "{name}: usage chunk without include_usage");
                    assert!(c["usage"].is_object(), "{name}: empty choices carry usage");
                }
            }
            let roles = chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"].get("role").is_some())
                .count();
            assert_eq!(roles, 1, "{name}: one role chunk");
            assert!(finishes(&outs).len() <= 1, "{name}: one finish at most");
            let terminals = outs.iter().filter(|o| o.is_terminal()).count();
            assert_eq!(terminals, 1, "{name}: one terminal output");
            assert!(outs.last().is_some_and(|o| o.is_terminal()), "{name}");
            // The usage chunk, when asked for, is the last chunk of a finished stream.
            if include_usage && outs.last() == Some(&StreamOut::Done) {
                let last = chunks.last().expect("a usage chunk");
                assert_eq!(last["choices"], json!([]), "{name}");
            }
        }
    }

    #[test]
    fn function_calls_in_earlier_events_turn_a_later_stop_into_tool_calls() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(&mut source, &[TEXT, CALL, TEXT, CALL, TEXT, STOP]);
        source.on_end(&mut out);
        let calls: Vec<Value> = chunks(&out)
            .into_iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["index"], 0);
        assert_eq!(calls[1]["index"], 1);
        assert_eq!(calls[0]["function"]["arguments"], r#"{"a":1}"#);
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        assert_eq!(finishes(&out), vec![json!("tool_calls")]);
        assert_eq!(out.last(), Some(&StreamOut::Done));
        // Without any call, STOP stays `stop`; a call never upgrades other reasons.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(&mut source, &[TEXT, STOP]);
        assert_eq!(finishes(&out), vec![json!("stop")]);
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let max = STOP.replace("STOP", "MAX_TOKENS");
        let out = feed(&mut source, &[CALL, &max]);
        assert_eq!(finishes(&out), vec![json!("length")]);
    }

    #[test]
    fn generated_call_ids_differ_between_streams() {
        let (_, bytes, _, _) = stream_fixtures()[2];
        let ids = |outs: &[StreamOut]| -> Vec<Value> {
            chunks(outs)
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
                .map(|call| call["id"].clone())
                .collect()
        };
        let (a, b) = (run_stream(bytes, false), run_stream(bytes, false));
        assert_eq!(ids(&a).len(), 2);
        assert!(ids(&a).iter().all(|id| !ids(&b).contains(id)));
        assert_ne!(
            chunks(&a)[0]["id"],
            chunks(&b)[0]["id"],
            "generated stream ids"
        );
    }

    #[test]
    fn stream_every_finish_reason() {
        let cases = FINISH_REASONS;
        for (gemini, openai) in cases {
            let mut source = GeminiChunkSource::new(stream_ctx(false));
            let mut out = feed(&mut source, &[TEXT, &STOP.replace("STOP", gemini)]);
            source.on_end(&mut out);
            assert_eq!(finishes(&out), vec![json!(openai)], "{gemini}");
            assert_eq!(out.last(), Some(&StreamOut::Done), "{gemini}");
        }
    }

    #[test]
    fn usage_is_set_not_added_and_only_sent_when_asked() {
        let with_usage = |prompt: u64, candidates: u64, thoughts: u64| {
            format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}},"index":0}}],"usageMetadata":{{"promptTokenCount":{prompt},"candidatesTokenCount":{candidates},"thoughtsTokenCount":{thoughts},"cachedContentTokenCount":4}}}}"#
            )
        };
        let stop_usage = r#"{"candidates":[{"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":7,"thoughtsTokenCount":3,"totalTokenCount":20}}"#;
        let events = [with_usage(10, 2, 3), with_usage(10, 5, 3)];
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[&events[0], &events[1], stop_usage]);
        // A usage-only event after the finish still updates the counts.
        out.extend(feed(
            &mut source,
            &[r#"{"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":8,"thoughtsTokenCount":3,"totalTokenCount":21}}"#],
        ));
        source.on_end(&mut out);
        assert_eq!(
            chunks(&out).last().map(|c| c["usage"].clone()),
            Some(json!({
                "prompt_tokens": 10,
                "completion_tokens": 11,
                "total_tokens": 21,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 3},
            }))
        );
        assert_eq!(out.last(), Some(&StreamOut::Done));
        // Without include_usage: no usage chunk and no `usage` key at all.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(&mut source, &[&events[0], stop_usage]);
        source.on_end(&mut out);
        assert!(chunks(&out).iter().all(|c| c.get("usage").is_none()));
        assert!(chunks(&out).iter().all(|c| c["choices"].get(0).is_some()));
        // include_usage but Gemini sent no usage: zeros rather than a missing chunk.
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[STOP]);
        source.on_end(&mut out);
        assert_eq!(
            chunks(&out)
                .last()
                .map(|c| c["usage"]["total_tokens"].clone()),
            Some(json!(0))
        );
    }

    #[test]
    fn id_and_model_come_from_the_first_event_or_defaults() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[
                TEXT,
                r#"{"candidates":[{"content":{"parts":[{"text":"y"}]},"index":0}],"responseId":"other","modelVersion":"gemini-y"}"#,
            ],
        );
        for c in chunks(&out) {
            assert_eq!(c["id"], "chatcmpl-r1");
            assert_eq!(c["model"], "gemini-x");
        }
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(&mut source, &[CALL, TEXT]);
        let chunks = chunks(&out);
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            assert_eq!(c["id"], chunks[0]["id"]);
            assert_eq!(c["model"], "gemini-2.5-flash");
        }
        assert_ne!(chunks[0]["id"], "chatcmpl-r1");
    }

    #[test]
    fn other_candidates_and_parts_are_skipped() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[
                r#"{"candidates":[{"content":{"parts":[{"text":"second"}]},"index":1}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"b"}]},"index":1},{"content":{"parts":[{"text":"a"},{"inlineData":{"mimeType":"image/png","data":"AA=="}},{"executableCode":{"code":"1"}},{"text":""}]},"index":0}]}"#,
                r#"{"candidates":[{"content":{"parts":[{"text":"z"}]},"index":1,"finishReason":"STOP"}]}"#,
            ],
        );
        let contents: Vec<Value> = chunks(&out)
            .into_iter()
            .skip(1)
            .map(|c| c["choices"][0]["delta"]["content"].clone())
            .collect();
        assert_eq!(contents, vec![json!("a")]);
        assert!(
            finishes(&out).is_empty(),
            "candidate 1's finish is not ours"
        );
    }

    #[test]
    fn error_events_map_status_kind_and_message() {
        let cases = [
            (
                r#"{"code":503,"message":"Overloaded","status":"UNAVAILABLE"}"#,
                503,
                "overloaded_error",
            ),
            (
                r#"{"code":429,"message":"Quota","status":"RESOURCE_EXHAUSTED"}"#,
                429,
                "rate_limit_error",
            ),
            (
                r#"{"code":400,"message":"Bad","status":"INVALID_ARGUMENT"}"#,
                400,
                "invalid_request_error",
            ),
            (
                r#"{"message":"No code","status":"INTERNAL"}"#,
                500,
                "api_error",
            ),
            (r#"{"code":200,"message":"Odd code"}"#, 500, "api_error"),
            (r#"{"code":70000,"message":"Huge code"}"#, 500, "api_error"),
            (r#""plain text""#, 500, "api_error"),
        ];
        for (error, status, kind) in cases {
            let mut source = GeminiChunkSource::new(stream_ctx(true));
            let data = format!(r#"{{"error":{error}}}"#);
            let mut out = feed(&mut source, &[TEXT, &data]);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("{error}: no error, got {out:?}");
            };
            assert_eq!(e.status, status, "{error}");
            assert_eq!(e.kind(), kind, "{error}");
            assert!(!e.message.is_empty());
            let n = out.len();
            out.extend(feed(&mut source, &[TEXT, STOP]));
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "{error}: output after the error");
        }
        // An error as the very first event: no role chunk, just the error.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let out = feed(
            &mut source,
            &[r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#],
        );
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], StreamOut::Error(e) if e.message == "Quota exceeded"));
    }

    #[test]
    fn unparseable_event_data_is_a_502_and_ends_the_stream() {
        for data in ["{\"candidates\":", "[DONE]", "", "null", "[1]", "\"x\""] {
            let mut source = GeminiChunkSource::new(stream_ctx(false));
            let mut out = feed(&mut source, &[TEXT, data]);
            let Some(StreamOut::Error(e)) = out.last() else {
                panic!("data {data:?}: no error, got {out:?}");
            };
            assert_eq!(e.status, 502);
            assert_eq!(e.code.as_deref(), Some("bad_upstream_response"));
            let n = out.len();
            out.extend(feed(&mut source, &[STOP]));
            source.on_end(&mut out);
            assert_eq!(out.len(), n, "data {data:?}: output after the error");
        }
    }

    #[test]
    fn truncated_stream_is_an_error_once_and_a_finished_one_is_not() {
        let truncated = StreamOut::Error(
            GatewayError::new(502, "upstream stream ended before its final event")
                .with_code(ErrorCode::StreamTruncated),
        );
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = Vec::new();
        source.on_end(&mut out);
        source.on_end(&mut out);
        assert_eq!(out, vec![truncated.clone()]);
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[TEXT, CALL]);
        source.on_end(&mut out);
        assert_eq!(out.last(), Some(&truncated));
        let mut source = GeminiChunkSource::new(stream_ctx(true));
        let mut out = feed(&mut source, &[TEXT, STOP]);
        source.on_end(&mut out);
        source.on_end(&mut out);
        source.on_event(&data_event(TEXT), &mut out);
        assert_eq!(out.len(), 5, "role, text, finish, usage, done: {out:?}");
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn a_second_finish_and_content_after_the_finish_are_dropped() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(&mut source, &[TEXT, STOP, TEXT, CALL, STOP]);
        source.on_end(&mut out);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(finishes(&out), vec![json!("stop")]);
    }

    #[test]
    fn blocked_prompt_without_candidates_is_content_filter() {
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[r#"{"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}"#],
        );
        source.on_end(&mut out);
        assert_eq!(finishes(&out), vec![json!("content_filter")]);
        assert_eq!(out.last(), Some(&StreamOut::Done));
        // Feedback without a block reason, or with candidates, is not a finish.
        let mut source = GeminiChunkSource::new(stream_ctx(false));
        let mut out = feed(
            &mut source,
            &[
                r#"{"promptFeedback":{"safetyRatings":[]}}"#,
                r#"{"promptFeedback":{"blockReason":null}}"#,
            ],
        );
        source.on_end(&mut out);
        assert!(finishes(&out).is_empty());
        assert!(matches!(out.last(), Some(StreamOut::Error(e)) if e.status == 502));
    }

    #[test]
    fn any_byte_split_gives_the_same_output() {
        for (name, bytes, expected, include_usage) in stream_fixtures() {
            let generated = id_generated(expected);
            let whole = normalize_stream(run_stream(bytes, include_usage), generated);
            for (n, pieces) in splits(bytes, 0x6e31, 300).iter().enumerate() {
                let got = normalize_stream(run_pieces(pieces, include_usage), generated);
                assert_eq!(
                    got,
                    whole,
                    "{name}: split {n}: {:?}",
                    pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
                );
            }
        }
    }

    /// Values that break assumptions about types and ranges.
    fn odd_values() -> Vec<Value> {
        vec![
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!([]),
            json!([null]),
            json!({}),
        ]
    }

    #[test]
    fn odd_stream_payloads_do_not_panic() {
        let odd = odd_values();
        let templates = [
            json!({"candidates":[{"content":{"parts":[{"text":"a","thought":true},{"text":"b"},{"functionCall":{"name":"f","args":{"x":[1]}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2,"thoughtsTokenCount":3,"cachedContentTokenCount":1,"totalTokenCount":6},"modelVersion":"m","responseId":"r"}),
            json!({"candidates":[],"promptFeedback":{"blockReason":"SAFETY"}}),
            json!({"error":{"code":503,"message":"m","status":"UNAVAILABLE"}}),
            json!({"candidates":[{"content":{"parts":[{"functionCall":{"name":"g","args":{}}},{"text":"","thoughtSignature":"s"}]},"finishReason":"MAX_TOKENS","safetyRatings":[{"category":"c","probability":"LOW"}]},{"content":{"parts":[{"text":"other"}]},"index":1}],"usageMetadata":{"promptTokenCount":4}}),
        ];
        let mut count = 0;
        for template in &templates {
            for variant in mutations(template, &odd) {
                let data = variant.to_string();
                for (started, include_usage) in [(false, false), (true, true)] {
                    let mut source = GeminiChunkSource::new(stream_ctx(include_usage));
                    let mut out = Vec::new();
                    if started {
                        source.on_event(&data_event(CALL), &mut out);
                    }
                    source.on_event(&data_event(&data), &mut out);
                    source.on_event(&data_event(&data), &mut out);
                    source.on_end(&mut out);
                    let terminal = out.iter().position(|o| o.is_terminal());
                    assert_eq!(terminal, Some(out.len() - 1), "{data}");
                    count += 1;
                }
            }
        }
        for data in [
            "",
            "{",
            "\u{0}",
            "[",
            "{\"candidates\":[{\"content\":",
            "1e999",
        ] {
            let mut source = GeminiChunkSource::new(stream_ctx(true));
            let mut out = feed(&mut source, &[data]);
            source.on_end(&mut out);
            assert_eq!(out.len(), 1);
        }
        assert!(count > 1000, "only {count} variants");
    }
}
