//! OpenAI and OpenAI-compatible upstreams (and Azure OpenAI, which shares the bodies): the request
//! passes through with only `model` rewritten, spliced into the client's bytes without re-serialising.

pub mod azure;

pub use azure::{AzureChunkFilter, AzureOpenAi};
pub mod usage_chunk;

use super::{AuthPlacement, Dialect, ResponseContext, UpstreamPaths};
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::ErrorCode;
use crate::error::{self, GatewayError};
use crate::stream::chunk::{ChunkSource, StreamContext, StreamOut};
use crate::stream::sse::SseEvent;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::ops::Range;

/// OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Mistral, DeepSeek...).
pub struct OpenAi;

impl Dialect for OpenAi {
    fn default_endpoint(&self) -> Option<&'static str> {
        Some("https://api.openai.com/v1")
    }

    fn default_auth(&self) -> AuthPlacement {
        AuthPlacement::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        Some(ClientProtocol::OpenAi)
    }

    fn paths(&self, _upstream_model: &str, _settings: &ProviderSettings) -> UpstreamPaths {
        UpstreamPaths {
            chat: "/chat/completions".into(),
            embeddings: Some("/embeddings".into()),
            ..UpstreamPaths::default()
        }
    }

    fn chat_response(&self, body: &[u8], _ctx: &ResponseContext) -> Result<Value, GatewayError> {
        parse_completion(body)
    }

    fn chunk_source(&self, _ctx: StreamContext) -> Box<dyn ChunkSource> {
        Box::new(OpenAiChunkSource::new())
    }

    fn asks_stream_usage(&self) -> bool {
        true
    }
}

/// A `chat.completion` read as a tree, for clients of another protocol.
pub(super) fn parse_completion(body: &[u8]) -> Result<Value, GatewayError> {
    serde_json::from_slice::<Value>(body)
        .map_err(|e| GatewayError::bad_upstream(format!("invalid JSON from upstream: {e}")))
}

/// Characters left as they are in a path segment or query value: RFC 3986 unreserved.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` percent-encoded for a URL path segment or query value.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The client's body with the bytes at `model_span` (the JSON value of the top-level `model` field)
/// replaced by `model_json` (an encoded JSON string). Everything else, unknown fields included,
/// is kept byte for byte.
pub fn splice_model(body: &[u8], model_span: Range<usize>, model_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() - model_span.len() + model_json.len());
    out.extend_from_slice(&body[..model_span.start]);
    out.extend_from_slice(model_json);
    out.extend_from_slice(&body[model_span.end..]);
    out
}

/// What becomes of one chunk of an OpenAI-format stream on its way to a client.
///
/// Azure OpenAI puts annotations in its streams as chunks with an empty `id` (and empty `model`,
/// `object`, `created: 0`): the prompt filter results first (`choices: []`), and with the
/// asynchronous content filter, filter results for a stretch of output (choices without a
/// delta). Passed on, a client sees two ids in one stream and a chunk without `choices[0]`.
/// The annotations that carry nothing a chat client reads are dropped; one that does (a
/// `finish_reason: "content_filter"` verdict) gets the stream's id, model and `created`.
/// Chunks without an `id` field at all are not annotations and pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFate {
    Pass,
    Drop,
    /// Pass with the stream's `id`, `object`, `created` and `model`.
    Restamp,
}

impl ChunkFate {
    /// `id`: the chunk's id field, if present; `carries`: whether the chunk has anything a
    /// client reads (a choice with a delta or a finish reason, usage, an error).
    fn of(id: Option<&str>, carries: bool) -> ChunkFate {
        match id {
            Some("") if carries => ChunkFate::Restamp,
            Some("") => ChunkFate::Drop,
            _ => ChunkFate::Pass,
        }
    }

    /// The fate of a parsed chunk.
    pub fn of_chunk(chunk: &Value) -> ChunkFate {
        let present = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
        let carries = present(chunk.get("usage"))
            || present(chunk.get("error"))
            || chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|choices| {
                    choices
                        .iter()
                        .any(|c| present(c.get("delta")) || present(c.get("finish_reason")))
                });
        ChunkFate::of(chunk.get("id").and_then(Value::as_str), carries)
    }

    /// The fate of a chunk's JSON text, read without building it (anything that is not a
    /// chunk object passes).
    pub fn of_json(data: &[u8]) -> (ChunkFate, Option<ChunkHead<'_>>) {
        match serde_json::from_slice::<ChunkHead>(data) {
            Ok(head) => {
                let carries = head.usage.is_some() || head.error.is_some() || head.choices.0;
                (ChunkFate::of(head.id.as_deref(), carries), Some(head))
            }
            Err(_) => (ChunkFate::Pass, None),
        }
    }
}

/// The fields of a chunk that decide its [`ChunkFate`], and those a restamp copies.
#[derive(Debug, Deserialize)]
pub struct ChunkHead<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default)]
    choices: ChoicesCarry,
    #[serde(default)]
    usage: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// Whether any choice has a non-null `delta` or `finish_reason`; read without allocating.
#[derive(Debug, Default)]
struct ChoicesCarry(bool);

impl<'de> Deserialize<'de> for ChoicesCarry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Choice {
            #[serde(default)]
            delta: Option<IgnoredAny>,
            #[serde(default)]
            finish_reason: Option<IgnoredAny>,
        }
        struct Choices;
        impl<'de> Visitor<'de> for Choices {
            type Value = ChoicesCarry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChoicesCarry, A::Error> {
                let mut carries = false;
                while let Some(c) = seq.next_element::<Choice>()? {
                    carries |= c.delta.is_some() || c.finish_reason.is_some();
                }
                Ok(ChoicesCarry(carries))
            }
            fn visit_unit<E>(self) -> Result<ChoicesCarry, E> {
                Ok(ChoicesCarry(false))
            }
        }
        d.deserialize_any(Choices)
    }
}

/// A stream's `id`, `model` and `created`, from its first real chunk, for restamping.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamIdentity {
    pub id: String,
    pub model: String,
    pub created: u64,
}

impl StreamIdentity {
    /// Notes the identity of a chunk with a real id, if none is noted yet.
    pub fn note(slot: &mut Option<StreamIdentity>, id: &str, model: &str, created: u64) {
        if slot.is_none() && !id.is_empty() {
            *slot = Some(StreamIdentity {
                id: id.to_owned(),
                model: model.to_owned(),
                created,
            });
        }
    }

    /// Gives `chunk` this stream's identity.
    pub fn stamp(&self, chunk: &mut Map<String, Value>) {
        chunk.insert("id".into(), Value::from(self.id.as_str()));
        chunk.insert("object".into(), Value::from("chat.completion.chunk"));
        chunk.insert("created".into(), Value::from(self.created));
        chunk.insert("model".into(), Value::from(self.model.as_str()));
    }
}

/// An OpenAI-style upstream stream read as chunks (for clients of another protocol). Azure's
/// annotation chunks are dropped or restamped ([`ChunkFate`]).
#[derive(Debug, Default)]
pub struct OpenAiChunkSource {
    ended: bool,
    identity: Option<StreamIdentity>,
}

impl OpenAiChunkSource {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ChunkSource for OpenAiChunkSource {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamOut>) {
        if self.ended {
            return;
        }
        if event.data == "[DONE]" {
            self.ended = true;
            out.push(StreamOut::Done);
            return;
        }
        match serde_json::from_str::<serde_json::Value>(&event.data) {
            Ok(v) if v.get("error").is_some() => {
                self.ended = true;
                out.push(StreamOut::Error(error::from_upstream(
                    500,
                    event.data.as_bytes(),
                    "",
                )));
            }
            Ok(mut v) => match ChunkFate::of_chunk(&v) {
                ChunkFate::Drop => {}
                ChunkFate::Pass => {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        let model = v.get("model").and_then(Value::as_str).unwrap_or_default();
                        let created = v.get("created").and_then(Value::as_u64).unwrap_or(0);
                        StreamIdentity::note(&mut self.identity, id, model, created);
                    }
                    out.push(StreamOut::Chunk(v));
                }
                ChunkFate::Restamp => {
                    if let (Some(identity), Some(chunk)) = (&self.identity, v.as_object_mut()) {
                        identity.stamp(chunk);
                    }
                    out.push(StreamOut::Chunk(v));
                }
            },
            Err(_) => {
                self.ended = true;
                out.push(StreamOut::Error(GatewayError::bad_upstream(
                    "invalid stream event from upstream",
                )));
            }
        }
    }

    fn on_end(&mut self, out: &mut Vec<StreamOut>) {
        if !self.ended {
            self.ended = true;
            out.push(StreamOut::Error(
                GatewayError::new(502, "upstream stream ended before its final event")
                    .with_code(ErrorCode::StreamTruncated),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_source_reads_chunks_done_errors_and_truncation() {
        let ev = |d: &str| SseEvent {
            event: None,
            data: d.to_string(),
        };
        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        src.on_event(&ev(r#"{"id":"c","choices":[]}"#), &mut out);
        src.on_event(&ev("[DONE]"), &mut out);
        src.on_event(&ev(r#"{"id":"late"}"#), &mut out);
        src.on_end(&mut out);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], StreamOut::Chunk(v) if v["id"] == "c"));
        assert_eq!(out[1], StreamOut::Done);

        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        src.on_event(
            &ev(r#"{"error":{"message":"boom","type":"server_error"}}"#),
            &mut out,
        );
        assert!(matches!(&out[0], StreamOut::Error(e) if e.message == "boom"));

        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        src.on_event(&ev(r#"{"id":"c"}"#), &mut out);
        src.on_end(&mut out);
        assert!(matches!(&out[1], StreamOut::Error(e) if e.has_code(ErrorCode::StreamTruncated)));
    }

    const PROMPT_FILTER: &str = r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#;
    const ANNOTATION: &str = r#"{"id":"","object":"","created":0,"model":"","choices":[{"index":0,"finish_reason":null,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"content_filter_offsets":{"check_offset":0,"start_offset":0,"end_offset":14}}],"usage":null}"#;
    const VERDICT: &str = r#"{"id":"","object":"","created":0,"model":"","choices":[{"index":0,"finish_reason":"content_filter","content_filter_results":{"protected_material_text":{"detected":true,"filtered":true}}}],"usage":null}"#;
    const FIRST: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
    const USAGE: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;

    #[test]
    fn chunk_fates() {
        for (data, fate) in [
            (PROMPT_FILTER, ChunkFate::Drop),
            (ANNOTATION, ChunkFate::Drop),
            (VERDICT, ChunkFate::Restamp),
            (FIRST, ChunkFate::Pass),
            (USAGE, ChunkFate::Pass),
            // A usage-only chunk is no annotation, even under an empty id.
            (
                r#"{"id":"","choices":[],"usage":{"total_tokens":4}}"#,
                ChunkFate::Restamp,
            ),
            // Without an id field, or not a chunk at all: untouched.
            (r#"{"choices":[]}"#, ChunkFate::Pass),
            (r#"{"error":{"message":"boom"}}"#, ChunkFate::Pass),
            (
                r#"{"id":"","error":{"message":"boom"}}"#,
                ChunkFate::Restamp,
            ),
            (r#"{"id":"","choices":null}"#, ChunkFate::Drop),
            ("[1,2]", ChunkFate::Pass),
            ("not json", ChunkFate::Pass),
        ] {
            let (from_text, _) = ChunkFate::of_json(data.as_bytes());
            assert_eq!(from_text, fate, "{data}");
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                assert_eq!(ChunkFate::of_chunk(&v), fate, "{data}");
            }
        }
    }

    #[test]
    fn chunk_source_drops_azure_annotations_and_restamps_verdicts() {
        let ev = |d: &str| SseEvent {
            event: None,
            data: d.to_string(),
        };
        let mut src = OpenAiChunkSource::new();
        let mut out = Vec::new();
        for d in [PROMPT_FILTER, FIRST, ANNOTATION, VERDICT, USAGE, "[DONE]"] {
            src.on_event(&ev(d), &mut out);
        }
        let chunks: Vec<&Value> = out
            .iter()
            .filter_map(|o| match o {
                StreamOut::Chunk(v) => Some(v),
                _ => None,
            })
            .collect();
        assert_eq!(chunks.len(), 3, "{out:?}");
        for chunk in &chunks {
            assert_eq!(chunk["id"], "chatcmpl-1");
            assert_eq!(chunk["model"], "gpt-4o");
            assert_eq!(chunk["created"], 1_700_000_000);
        }
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(chunks[1]["object"], "chat.completion.chunk");
        assert_eq!(chunks[2]["usage"]["total_tokens"], 4);
        assert_eq!(out.last(), Some(&StreamOut::Done));
    }

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode_component("gpt-4o_mini.v1~x"), "gpt-4o_mini.v1~x");
        assert_eq!(encode_component("a/b?c&d=e f"), "a%2Fb%3Fc%26d%3De%20f");
    }

    #[test]
    fn splices_only_the_model_value() {
        let body = br#"{"model":"alias","messages":[],"x_unknown":{"a":[1,2]}}"#;
        let start = body.windows(7).position(|w| w == b"\"alias\"").unwrap();
        let out = splice_model(body, start..start + 7, br#""meta/llama-3""#);
        assert_eq!(
            out,
            br#"{"model":"meta/llama-3","messages":[],"x_unknown":{"a":[1,2]}}"#
        );
    }
}
