//! OpenAI and OpenAI-compatible upstreams (and Azure OpenAI, which shares the bodies): the request
//! passes through with only `model` rewritten, spliced into the client's bytes without re-serialising.

use crate::error::{self, GatewayError};
use crate::stream::chunk::{ChunkSource, StreamOut};
use crate::stream::sse::SseEvent;
use std::ops::Range;

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

/// An OpenAI-style upstream stream read as chunks (for clients of another protocol).
#[derive(Debug, Default)]
pub struct OpenAiChunkSource {
    ended: bool,
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
            Ok(v) => out.push(StreamOut::Chunk(v)),
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
                    .with_code("stream_truncated"),
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
        assert!(
            matches!(&out[1], StreamOut::Error(e) if e.code.as_deref() == Some("stream_truncated"))
        );
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
