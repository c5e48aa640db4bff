//! The common stream form written as OpenAI's `chat.completion.chunk` SSE.

use crate::stream::chunk::StreamOut;

/// Writes the common stream form as OpenAI's SSE: `data: {chunk}` events, `data: [DONE]` at a
/// normal end, and at a failure an error event with no `[DONE]`, so the stream never ends looking
/// like a success.
#[derive(Debug, Default)]
pub struct OpenAiEventSink {
    ended: bool,
}

impl OpenAiEventSink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, item: &crate::stream::chunk::StreamOut, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        match item {
            StreamOut::Chunk(chunk) => {
                out.extend_from_slice(b"data: ");
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, chunk);
                out.extend_from_slice(b"\n\n");
            }
            StreamOut::Text(text) => {
                out.extend_from_slice(b"data: ");
                text.write_json(out);
                out.extend_from_slice(b"\n\n");
            }
            StreamOut::Done => {
                self.ended = true;
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            StreamOut::Error(e) => {
                self.ended = true;
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&e.to_openai_body());
                out.extend_from_slice(b"\n\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;
    use serde_json::json;

    #[test]
    fn openai_sink_frames_chunks_and_ends() {
        let mut sink = OpenAiEventSink::new();
        let mut out = Vec::new();
        sink.write(&StreamOut::Chunk(json!({"id": "c"})), &mut out);
        sink.write(&StreamOut::Done, &mut out);
        sink.write(&StreamOut::Chunk(json!({"id": "late"})), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"id\":\"c\"}\n\ndata: [DONE]\n\n"
        );
        let mut sink = OpenAiEventSink::new();
        let mut out = Vec::new();
        sink.write(
            &StreamOut::Error(GatewayError::new(529, "Overloaded")),
            &mut out,
        );
        sink.write(&StreamOut::Done, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("data: {\"error\":"), "{text}");
        assert!(!text.contains("[DONE]"));
    }
}
