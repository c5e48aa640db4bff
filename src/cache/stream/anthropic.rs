//! Cached answers and Anthropic Messages streams, both ways: a whole `message` written as the
//! events of a stream (for a streamed `/v1/messages` request answered from the cache), and the
//! events of a streamed answer gathered into the whole `message` (to store it).
//!
//! The stream, as Anthropic sends it (and the gateway writes it for other upstreams): every event
//! is `event: NAME` with a JSON `data` whose `type` is NAME. `message_start` carries the message
//! without its content (`content: []`, `stop_reason: null`, the usage known at the start); then
//! per content block, in order, `content_block_start` (the block with its streamed fields empty),
//! `content_block_delta`s and `content_block_stop`; then `message_delta` (the stop reason and
//! sequence, the cumulative usage) and `message_stop`. `ping`s may come between; an `error` ends
//! the stream. Streamed fields: a text block's `text` (`text_delta`) and `citations`
//! (`citations_delta`, one each), a thinking block's `thinking` (`thinking_delta`) and
//! `signature` (`signature_delta`), a tool use block's `input` (`input_json_delta`: pieces of its
//! JSON text, parsed when the block stops). Other blocks (`redacted_thinking`, tool results)
//! come whole in their `content_block_start`.

use super::Gatherer;
use crate::stream::sse::SseEvent;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Block types whose `input` streams as `input_json_delta` pieces.
fn streams_input(kind: &str) -> bool {
    matches!(kind, "tool_use" | "server_tool_use" | "mcp_tool_use")
}

/// Appends one event: `event: NAME\ndata: JSON\n\n`.
fn write_event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a `Value` to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// The string `name` of `block`, replaced by `""` (as the block starts); empty when it is not a
/// string (then it is left as it is).
fn take_string(block: &mut Map<String, Value>, name: &str) -> String {
    match block.get_mut(name) {
        Some(Value::String(s)) => std::mem::take(s),
        _ => String::new(),
    }
}

/// A block as `content_block_start` carries it, and the deltas that complete it.
fn split_block(block: &Map<String, Value>) -> (Map<String, Value>, Vec<Value>) {
    let mut start = block.clone();
    let mut deltas = Vec::new();
    let kind = block
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "text" => {
            // A citation comes before the text it cites.
            if matches!(start.get("citations"), Some(Value::Array(c)) if !c.is_empty()) {
                if let Some(Value::Array(citations)) = start.remove("citations") {
                    deltas.extend(
                        citations.into_iter().map(
                            |citation| json!({"type": "citations_delta", "citation": citation}),
                        ),
                    );
                }
            }
            let text = take_string(&mut start, "text");
            if !text.is_empty() {
                deltas.push(json!({"type": "text_delta", "text": text}));
            }
        }
        "thinking" => {
            let thinking = take_string(&mut start, "thinking");
            if !thinking.is_empty() {
                deltas.push(json!({"type": "thinking_delta", "thinking": thinking}));
            }
            let signature = take_string(&mut start, "signature");
            if !signature.is_empty() {
                deltas.push(json!({"type": "signature_delta", "signature": signature}));
            }
        }
        kind if streams_input(kind) => {
            if let Some(input) = start.get_mut("input") {
                let input = std::mem::replace(input, json!({}));
                if input.as_object().is_none_or(|o| !o.is_empty()) {
                    let partial_json = input.to_string();
                    deltas.push(json!({"type": "input_json_delta", "partial_json": partial_json}));
                }
            }
        }
        _ => {}
    }
    (start, deltas)
}

/// The events of a stream carrying `whole` (an Anthropic `message`), from `message_start` to
/// `message_stop`. `None` when `whole` is not a message.
pub fn message_to_sse(whole: &[u8]) -> Option<Bytes> {
    let message: Value = serde_json::from_slice(whole).ok()?;
    let message = message.as_object()?;
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let content = message.get("content")?.as_array()?;
    let usage = message.get("usage").and_then(Value::as_object);
    let mut start = Map::new();
    for (name, value) in message {
        let value = match name.as_str() {
            "content" => json!([]),
            "stop_reason" | "stop_sequence" => Value::Null,
            "usage" => continue,
            _ => value.clone(),
        };
        start.insert(name.clone(), value);
    }
    // The input counts are known at the start; the output ones come with `message_delta`.
    let mut start_usage = usage.cloned().unwrap_or_default();
    start_usage.insert("output_tokens".into(), json!(0));
    start.insert("usage".into(), Value::Object(start_usage));

    let mut out = Vec::with_capacity(whole.len() + 256 + 192 * content.len());
    write_event(
        &mut out,
        "message_start",
        &json!({"type": "message_start", "message": start}),
    );
    for (index, block) in content.iter().enumerate() {
        let (block, deltas) = split_block(block.as_object()?);
        write_event(
            &mut out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        for delta in deltas {
            write_event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        write_event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    let field = |name: &str| message.get(name).cloned().unwrap_or(Value::Null);
    let output_tokens = usage
        .and_then(|u| u.get("output_tokens"))
        .cloned()
        .unwrap_or_else(|| json!(0));
    write_event(
        &mut out,
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": field("stop_reason"), "stop_sequence": field("stop_sequence")},
            "usage": {"output_tokens": output_tokens},
        }),
    );
    write_event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    Some(Bytes::from(out))
}

/// The most content blocks gathered (far more than a message has); more fail the gathering.
const MAX_BLOCKS: usize = 4096;

/// The content block being streamed: the last one gathered.
struct OpenBlock {
    /// The pieces of its `input`'s JSON text so far.
    partial_json: String,
}

/// Gathers an Anthropic Messages stream, as the client received it, into the whole `message` it
/// carried; bounded by `limit` bytes of gathered answer. Anything out of the grammar above (an
/// event or delta of a type it does not know, a block index out of order, an `error`) means
/// nothing is stored: what it would store might not be the answer.
#[derive(Default)]
pub struct EventGather {
    /// The message of `message_start`, without its content and usage.
    message: Option<Map<String, Value>>,
    usage: Map<String, Value>,
    blocks: Vec<Value>,
    open: Option<OpenBlock>,
    /// `message_stop` came.
    stopped: bool,
}

impl Gatherer for EventGather {
    fn event(&mut self, event: &SseEvent) -> bool {
        self.take(event)
    }

    fn finish(self, limit: usize) -> Option<Bytes> {
        self.whole(limit)
    }
}

impl EventGather {
    fn take(&mut self, event: &SseEvent) -> bool {
        if self.stopped {
            return false;
        }
        let Ok(Value::Object(mut data)) = serde_json::from_str::<Value>(&event.data) else {
            return false;
        };
        let Some(Value::String(kind)) = data.remove("type") else {
            return false;
        };
        match kind.as_str() {
            "ping" => true,
            "message_start" => self.message_start(data),
            "content_block_start" => self.block_start(data),
            "content_block_delta" => self.block_delta(data),
            "content_block_stop" => self.block_stop(&data),
            "message_delta" => self.message_delta(data),
            "message_stop" => {
                self.stopped = self.message.is_some() && self.open.is_none();
                self.stopped
            }
            // `error`, and what this does not know.
            _ => false,
        }
    }

    fn message_start(&mut self, mut data: Map<String, Value>) -> bool {
        let Some(Value::Object(mut message)) = data.remove("message") else {
            return false;
        };
        // A stream adds content to an empty message.
        let empty = matches!(message.get("content"), Some(Value::Array(c)) if c.is_empty());
        if self.message.is_some() || !empty {
            return false;
        }
        if let Some(Value::Object(usage)) = message.remove("usage") {
            self.usage = usage;
        }
        self.message = Some(message);
        true
    }

    /// Whether `data` is about the block at `index` (`blocks.len()` for a new one).
    fn at(data: &Map<String, Value>, index: usize) -> bool {
        data.get("index").and_then(Value::as_u64) == u64::try_from(index).ok()
    }

    fn block_start(&mut self, mut data: Map<String, Value>) -> bool {
        if self.message.is_none()
            || self.open.is_some()
            || self.blocks.len() >= MAX_BLOCKS
            || !Self::at(&data, self.blocks.len())
        {
            return false;
        }
        let Some(block @ Value::Object(_)) = data.remove("content_block") else {
            return false;
        };
        self.blocks.push(block);
        self.open = Some(OpenBlock {
            partial_json: String::new(),
        });
        true
    }

    fn block_delta(&mut self, mut data: Map<String, Value>) -> bool {
        let index = self.blocks.len().wrapping_sub(1);
        let (Some(open), Some(Value::Object(block))) = (self.open.as_mut(), self.blocks.last_mut())
        else {
            return false;
        };
        if !Self::at(&data, index) {
            return false;
        }
        let Some(Value::Object(mut delta)) = data.remove("delta") else {
            return false;
        };
        let piece = |delta: &Map<String, Value>, name: &str| {
            delta.get(name).and_then(Value::as_str).map(str::to_owned)
        };
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => append(block, "text", piece(&delta, "text")),
            Some("thinking_delta") => append(block, "thinking", piece(&delta, "thinking")),
            Some("signature_delta") => append(block, "signature", piece(&delta, "signature")),
            Some("input_json_delta") => match delta.get("partial_json").and_then(Value::as_str) {
                Some(json) => {
                    open.partial_json.push_str(json);
                    true
                }
                None => false,
            },
            Some("citations_delta") => {
                let Some(citation) = delta.remove("citation") else {
                    return false;
                };
                let citations = block
                    .entry("citations")
                    .and_modify(|c| {
                        if c.is_null() {
                            *c = json!([]);
                        }
                    })
                    .or_insert_with(|| json!([]));
                match citations.as_array_mut() {
                    Some(list) => {
                        list.push(citation);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    fn block_stop(&mut self, data: &Map<String, Value>) -> bool {
        let index = self.blocks.len().wrapping_sub(1);
        if !Self::at(data, index) {
            return false;
        }
        let (Some(open), Some(Value::Object(block))) = (self.open.take(), self.blocks.last_mut())
        else {
            return false;
        };
        if open.partial_json.is_empty() {
            return true;
        }
        // The input's pieces make one JSON value once the block is whole.
        match serde_json::from_str::<Value>(&open.partial_json) {
            Ok(input) => {
                block.insert("input".into(), input);
                true
            }
            Err(_) => false,
        }
    }

    fn message_delta(&mut self, mut data: Map<String, Value>) -> bool {
        let Some(message) = self.message.as_mut().filter(|_| self.open.is_none()) else {
            return false;
        };
        if let Some(Value::Object(delta)) = data.remove("delta") {
            message.extend(delta);
        }
        // Counts are cumulative: the latest replace the earlier ones.
        if let Some(Value::Object(usage)) = data.remove("usage") {
            self.usage
                .extend(usage.into_iter().filter(|(_, count)| !count.is_null()));
        }
        true
    }

    /// The whole message, when the stream ended properly (`message_stop`, no error) and it fits.
    fn whole(self, limit: usize) -> Option<Bytes> {
        if !self.stopped {
            return None;
        }
        let mut message = self.message?;
        message.insert("content".into(), Value::Array(self.blocks));
        if !self.usage.is_empty() {
            message.insert("usage".into(), Value::Object(self.usage));
        }
        let bytes = serde_json::to_vec(&Value::Object(message)).ok()?;
        (bytes.len() <= limit).then(|| Bytes::from(bytes))
    }
}

/// Appends a delta's `piece` to the block's string `name`.
fn append(block: &mut Map<String, Value>, name: &str, piece: Option<String>) -> bool {
    let Some(piece) = piece else {
        return false;
    };
    match block.get_mut(name) {
        Some(Value::String(s)) => {
            s.push_str(&piece);
            true
        }
        None | Some(Value::Null) => {
            block.insert(name.into(), Value::String(piece));
            true
        }
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::stream::Gathering;

    fn whole() -> Value {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "Let me see.", "signature": "sig=="},
                {"type": "text", "text": "Hello there", "citations": null},
                {"type": "text", "text": "As cited.", "citations": [
                    {"type": "char_location", "cited_text": "x", "document_index": 0,
                     "start_char_index": 0, "end_char_index": 1}]},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "f",
                 "input": {"a": 1, "b": ["x", {"c": null}]}},
                {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 0, "output_tokens": 9}
        })
    }

    /// The events' names and data, checking each is `event: NAME` with `data.type` NAME.
    fn events(sse: &str) -> Vec<(String, Value)> {
        assert!(sse.ends_with("\n\n"), "{sse}");
        sse.trim_end_matches("\n\n")
            .split("\n\n")
            .map(|raw| {
                let (name, data) = raw.split_once('\n').unwrap_or_default();
                let name = name.strip_prefix("event: ").unwrap_or("?").to_owned();
                let data: Value = data
                    .strip_prefix("data: ")
                    .and_then(|d| serde_json::from_str(d).ok())
                    .unwrap_or_default();
                assert_eq!(data["type"], json!(name), "{raw}");
                (name, data)
            })
            .collect()
    }

    fn gather(sse: &[u8], piece: usize) -> Option<Value> {
        let mut gather = Gathering::new(1 << 20, EventGather::default());
        for part in sse.chunks(piece) {
            assert!(gather.push(part));
        }
        gather
            .finish()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    #[test]
    fn a_whole_message_streams_and_gathers_back() {
        let body = serde_json::to_vec(&whole()).unwrap_or_default();
        let sse = message_to_sse(&body).unwrap_or_default();
        let text = String::from_utf8_lossy(&sse);
        let events = events(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"message_start"));
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        let start = &events[0].1["message"];
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["stop_reason"], Value::Null);
        assert_eq!(start["usage"]["input_tokens"], 12);
        assert_eq!(start["usage"]["output_tokens"], 0);
        let delta = &events[names.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["output_tokens"], 9);
        // Blocks start, stream and stop in order.
        let mut open = None;
        let mut next = 0;
        for (name, data) in &events {
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!((open, data["index"].as_u64()), (None, Some(next)));
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => assert_eq!(data["index"].as_u64(), open),
                "content_block_stop" => {
                    assert_eq!(data["index"].as_u64(), open);
                    open = None;
                }
                _ => assert_eq!(open, None, "{name} inside a block"),
            }
        }
        assert_eq!(next, 6);
        let deltas: Vec<&str> = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["type"].as_str())
            .collect();
        assert_eq!(
            deltas,
            [
                "thinking_delta",
                "signature_delta",
                "text_delta",
                "citations_delta",
                "text_delta",
                "input_json_delta"
            ]
        );
        // Fed back in pieces of any size, the stream is the same message.
        for piece in [1, 7, 64, sse.len()] {
            assert_eq!(gather(&sse, piece), Some(whole()), "pieces of {piece}");
        }
    }

    #[test]
    fn what_is_not_a_message_has_no_stream() {
        assert!(message_to_sse(b"{\"type\":\"error\"}").is_none());
        assert!(message_to_sse(b"{\"choices\":[]}").is_none());
        assert!(message_to_sse(b"[1]").is_none());
        assert!(message_to_sse(br#"{"type":"message","content":[1]}"#).is_none());
    }

    fn sse(events: &[Value]) -> String {
        events
            .iter()
            .map(|e| {
                format!(
                    "event: {}\ndata: {e}\n\n",
                    e["type"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn tool_stream(pieces: &[&str]) -> Vec<Value> {
        let mut events = vec![
            json!({"type": "message_start", "message": {"id": "msg_t", "type": "message",
                "role": "assistant", "model": "m", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}}),
        ];
        events.extend(pieces.iter().map(|p| {
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": p}})
        }));
        events.extend([
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ]);
        events
    }

    #[test]
    fn tool_input_in_pieces_is_joined() {
        let stream = sse(&tool_stream(&["", "{\"a\"", ": [1, ", "2]}"]));
        let back = gather(stream.as_bytes(), 5).unwrap_or_default();
        assert_eq!(back["content"][0]["input"], json!({"a": [1, 2]}));
        assert_eq!(back["content"][0]["id"], "toolu_9");
        assert_eq!(back["stop_reason"], "tool_use");
        assert_eq!(
            back["usage"],
            json!({"input_tokens": 5, "output_tokens": 7})
        );
        // Pieces that do not make JSON: nothing is stored.
        let broken = sse(&tool_stream(&["{\"a\"", ": [1, "]));
        let mut gatherer = Gathering::new(1 << 20, EventGather::default());
        assert!(!gatherer.push(broken.as_bytes()));
        assert!(gatherer.finish().is_none());
    }

    #[test]
    fn a_stream_that_did_not_end_properly_is_not_kept() {
        let events = tool_stream(&["{}"]);
        // Cut before message_stop.
        let cut = sse(&events[..events.len() - 1]);
        assert!(gather(cut.as_bytes(), 9).is_none());
        // An error event, wherever it comes.
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "x"}});
        let mut failed = events.clone();
        failed.insert(3, error.clone());
        let mut gatherer = Gathering::new(1 << 20, EventGather::default());
        gatherer.push(sse(&failed).as_bytes());
        assert!(gatherer.finish().is_none());
        let mut after = events.clone();
        after.push(error);
        let mut gatherer = Gathering::new(1 << 20, EventGather::default());
        gatherer.push(sse(&after).as_bytes());
        assert!(gatherer.finish().is_none());
        // A block left open, and an event this does not know.
        let mut open = events.clone();
        open.remove(4);
        let mut gatherer = Gathering::new(1 << 20, EventGather::default());
        gatherer.push(sse(&open).as_bytes());
        assert!(gatherer.finish().is_none());
        let mut unknown = events.clone();
        unknown.insert(2, json!({"type": "future_event"}));
        let mut gatherer = Gathering::new(1 << 20, EventGather::default());
        gatherer.push(sse(&unknown).as_bytes());
        assert!(gatherer.finish().is_none());
        // The whole stream is kept.
        assert!(gather(sse(&events).as_bytes(), 9).is_some());
    }

    #[test]
    fn an_answer_larger_than_the_limit_is_not_kept() {
        let mut message = whole();
        // Small events (each within the limit), a large whole.
        let block = json!({"type": "text", "text": "x".repeat(300)});
        message["content"] = Value::Array(vec![block; 20]);
        let sse =
            message_to_sse(&serde_json::to_vec(&message).unwrap_or_default()).unwrap_or_default();
        let mut small = Gathering::new(4000, EventGather::default());
        for part in sse.chunks(100) {
            small.push(part);
        }
        assert!(small.finish().is_none());
        let mut room = Gathering::new(8000, EventGather::default());
        for part in sse.chunks(100) {
            assert!(room.push(part));
        }
        assert!(room.finish().is_some());
    }
}
