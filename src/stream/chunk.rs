//! The gateway's common stream form: OpenAI chunks, produced one upstream event at a time by a
//! provider's [`ChunkSource`] and written in the client's protocol by a sink in `api/`.

use std::sync::Arc;

/// One step of a translated stream, in OpenAI's terms (the gateway's common stream form).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOut {
    /// A `chat.completion.chunk` object.
    Chunk(serde_json::Value),
    /// A chunk whose delta is one text field: the same object as [`TextChunk::to_chunk`], kept
    /// typed because it is most of every stream.
    Text(TextChunk),
    /// The upstream failed mid-stream (an error event, or a stream cut without its terminal
    /// event). Nothing follows it.
    Error(crate::error::GatewayError),
    /// The stream ended normally. Nothing follows it.
    Done,
}

impl StreamOut {
    /// `Error` or `Done`: nothing follows it.
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamOut::Error(_) | StreamOut::Done)
    }

    /// The chunk object of a `Chunk` or a `Text`.
    #[cfg(test)]
    pub fn chunk(&self) -> Option<std::borrow::Cow<'_, serde_json::Value>> {
        match self {
            StreamOut::Chunk(chunk) => Some(std::borrow::Cow::Borrowed(chunk)),
            StreamOut::Text(text) => Some(std::borrow::Cow::Owned(text.to_chunk())),
            StreamOut::Error(_) | StreamOut::Done => None,
        }
    }
}

/// Turns one upstream's stream events into OpenAI chunks, one event at a time.
pub trait ChunkSource: Send + Sync {
    /// One upstream SSE event; appends zero or more outputs.
    fn on_event(&mut self, event: &crate::stream::sse::SseEvent, out: &mut Vec<StreamOut>);
    /// The upstream's bytes ended. Appends `Done` if the stream had ended properly, or an
    /// `Error` if its terminal event never came. Must append nothing if `Done` or `Error` was
    /// already emitted.
    fn on_end(&mut self, out: &mut Vec<StreamOut>);
    /// The tokens the stream reported so far, for sources that read them from the upstream's
    /// own events.
    fn usage(&self) -> Option<crate::limits::usage::TokenUsage> {
        None
    }
}

/// What a stream translator needs to know of the request.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The upstream model id, for providers whose events do not name it.
    pub upstream_model: String,
    /// `created` for every chunk.
    pub created: u64,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
}

/// What every `chat.completion.chunk` of one translated stream carries: the same id, model and
/// `created`. The stream sources set `id` and `model` from the upstream's first event.
#[derive(Debug)]
pub struct ChunkStamp {
    pub ctx: StreamContext,
    /// The chunk id: set once the stream's first event (or a generated id) is known.
    pub id: Option<String>,
    pub model: String,
    /// The rendered head of text chunks, for the current id and model.
    frame: Option<Arc<ChunkFrame>>,
}

impl ChunkStamp {
    pub fn new(ctx: StreamContext) -> Self {
        ChunkStamp {
            ctx,
            id: None,
            model: String::new(),
            frame: None,
        }
    }

    /// The chunk object around `choices`.
    pub fn envelope(
        &self,
        choices: serde_json::Value,
    ) -> serde_json::Map<String, serde_json::Value> {
        envelope(
            self.id.as_deref().unwrap_or_default(),
            &self.model,
            self.ctx.created,
            choices,
        )
    }

    /// The first chunk of every stream: the assistant role and empty content, as OpenAI sends.
    pub fn role(&self) -> StreamOut {
        self.delta(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        )
    }

    /// A chunk with one choice carrying `delta` (and `finish_reason`).
    pub fn delta(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> StreamOut {
        StreamOut::Chunk(delta_chunk(
            self.id.as_deref().unwrap_or_default(),
            &self.model,
            self.ctx.created,
            self.ctx.include_usage,
            delta,
            finish_reason,
        ))
    }

    /// A chunk whose delta is `{field: text}`, the commonest chunk.
    pub fn text(&mut self, field: TextField, text: String) -> StreamOut {
        let id = self.id.as_deref().unwrap_or_default();
        let frame = match &self.frame {
            Some(frame) if frame.id == id && frame.model == self.model => frame.clone(),
            _ => {
                let frame = Arc::new(ChunkFrame::new(
                    id,
                    &self.model,
                    self.ctx.created,
                    self.ctx.include_usage,
                ));
                self.frame = Some(frame.clone());
                frame
            }
        };
        StreamOut::Text(TextChunk { frame, field, text })
    }
}

fn envelope(
    id: &str,
    model: &str,
    created: u64,
    choices: serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut chunk = serde_json::Map::new();
    chunk.insert("id".into(), Value::from(id));
    chunk.insert("object".into(), Value::from("chat.completion.chunk"));
    chunk.insert("created".into(), Value::from(created));
    chunk.insert("model".into(), Value::from(model));
    chunk.insert("choices".into(), choices);
    chunk
}

fn delta_chunk(
    id: &str,
    model: &str,
    created: u64,
    include_usage: bool,
    delta: serde_json::Value,
    finish_reason: Option<&str>,
) -> serde_json::Value {
    let choices = serde_json::json!([{
        "index": 0,
        "delta": delta,
        "logprobs": null,
        "finish_reason": finish_reason,
    }]);
    let mut chunk = envelope(id, model, created, choices);
    if include_usage {
        chunk.insert("usage".into(), serde_json::Value::Null);
    }
    serde_json::Value::Object(chunk)
}

/// The delta field a [`TextChunk`] fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextField {
    Content,
    /// `reasoning_content`, as DeepSeek and OpenAI-compatible servers name thinking text.
    Reasoning,
}

impl TextField {
    fn key(self) -> &'static str {
        match self {
            TextField::Content => "content",
            TextField::Reasoning => "reasoning_content",
        }
    }
}

/// A text chunk: the text and a frame shared by every text chunk of its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TextChunk {
    frame: Arc<ChunkFrame>,
    field: TextField,
    text: String,
}

/// Everything of a text chunk but its text, rendered once per stream: the chunk's JSON up to
/// the delta, and after it.
#[derive(Debug, PartialEq)]
struct ChunkFrame {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    head: Vec<u8>,
}

impl ChunkFrame {
    fn new(id: &str, model: &str, created: u64, include_usage: bool) -> Self {
        let mut head = Vec::with_capacity(128 + id.len() + model.len());
        head.extend_from_slice(b"{\"id\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut head, id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut head, model);
        head.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{");
        ChunkFrame {
            id: id.to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            head,
        }
    }
}

impl TextChunk {
    /// The chunk as a JSON object, for sinks that read it.
    pub fn to_chunk(&self) -> serde_json::Value {
        let frame = &self.frame;
        let mut delta = serde_json::Map::new();
        delta.insert(self.field.key().into(), self.text.clone().into());
        delta_chunk(
            &frame.id,
            &frame.model,
            frame.created,
            frame.include_usage,
            serde_json::Value::Object(delta),
            None,
        )
    }

    /// Appends the chunk's JSON (the object [`Self::to_chunk`] returns) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.frame.head);
        out.push(b'"');
        out.extend_from_slice(self.field.key().as_bytes());
        out.extend_from_slice(b"\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &self.text);
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]");
        if self.frame.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn stamp(include_usage: bool) -> ChunkStamp {
        let mut stamp = ChunkStamp::new(StreamContext {
            upstream_model: "m".into(),
            created: 1_700_000_000,
            include_usage,
        });
        stamp.id = Some("msg_\"1\"".into());
        stamp.model = "claude\\x é".into();
        stamp
    }

    /// The bytes the OpenAI sink writes for a text chunk are the object every other sink reads,
    /// which is the object a tree-built delta chunk would be.
    #[test]
    fn text_chunks_write_the_object_they_stand_for() {
        for include_usage in [false, true] {
            let mut stamp = stamp(include_usage);
            for (field, key) in [
                (TextField::Content, "content"),
                (TextField::Reasoning, "reasoning_content"),
            ] {
                for text in [
                    "",
                    "plain",
                    "quote \" backslash \\ newline \n é \u{1F600} \u{7}",
                ] {
                    let StreamOut::Text(chunk) = stamp.text(field, text.to_string()) else {
                        panic!("a text chunk")
                    };
                    let StreamOut::Chunk(tree) = stamp.delta(json!({ key: text }), None) else {
                        panic!("a chunk")
                    };
                    assert_eq!(chunk.to_chunk(), tree);
                    let mut bytes = Vec::new();
                    chunk.write_json(&mut bytes);
                    let written: Value = serde_json::from_slice(&bytes).expect("valid JSON");
                    assert_eq!(written, tree, "{}", String::from_utf8_lossy(&bytes));
                }
            }
        }
    }

    #[test]
    fn the_frame_follows_id_and_model() {
        let mut stamp = stamp(false);
        let first = stamp.text(TextField::Content, "a".into());
        stamp.id = Some("other".into());
        let second = stamp.text(TextField::Content, "a".into());
        stamp.model = "other-model".into();
        let third = stamp.text(TextField::Content, "a".into());
        let ids: Vec<Value> = [first, second, third]
            .iter()
            .map(|o| {
                let chunk = o.chunk().expect("a chunk");
                json!([chunk["id"], chunk["model"]])
            })
            .collect();
        assert_eq!(
            ids,
            [
                json!(["msg_\"1\"", "claude\\x é"]),
                json!(["other", "claude\\x é"]),
                json!(["other", "other-model"])
            ]
        );
    }
}
