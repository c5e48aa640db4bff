//! The Anthropic Messages front door: clients speak `/v1/messages`, any backend answers.
//!
//! Requests: a Messages body becomes an OpenAI chat request, which the gateway then sends like any
//! other (`request.rs`). Responses: a `chat.completion` becomes a Messages `message`
//! (`response.rs`); the common stream form (OpenAI chunks) becomes Anthropic's named SSE events
//! ([`AnthropicEventSink`], in `stream.rs`); errors take Anthropic's shape (`error.rs`). These are
//! the inverse of `providers::anthropic`: the vocabulary both directions share (stop reasons,
//! usage, error types, event names and shapes) is written once, in [`crate::wire::anthropic`].
//!
//! Client input is untrusted: malformed requests are 400s whose `param` names the field in
//! Anthropic's dotted form (`messages.1.content.0.source`); a malformed upstream answer is a 502.

/// Helpers shared by the unit tests of this module's files.
#[cfg(test)]
mod test_helpers {
    use super::AnthropicEventSink;
    use crate::error::GatewayError;
    use crate::stream::chunk::StreamOut;
    use serde_json::{json, Value};

    pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/anthropic_api");

    pub fn fixture_text(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    pub fn fixture(name: &str) -> Value {
        serde_json::from_str(&fixture_text(name))
            .unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
    }

    /// Reads a `*.chunks.jsonl` fixture: one chunk per line, then `DONE` or `ERROR <status> <message>`.
    pub fn stream_items(text: &str) -> Vec<StreamOut> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                if line == "DONE" {
                    StreamOut::Done
                } else if let Some(rest) = line.strip_prefix("ERROR ") {
                    let (status, message) = rest.split_once(' ').expect("ERROR <status> <message>");
                    StreamOut::Error(GatewayError::new(status.parse().expect("status"), message))
                } else {
                    StreamOut::Chunk(serde_json::from_str(line).expect("chunk is JSON"))
                }
            })
            .collect()
    }

    pub fn run_sink(items: &[StreamOut]) -> String {
        let mut sink = AnthropicEventSink::new("claude-sonnet-4-5", "msg_test".to_string());
        let mut out = Vec::new();
        for item in items {
            sink.write(item, &mut out);
        }
        String::from_utf8(out).expect("UTF-8")
    }

    /// Every event is `event: NAME\ndata: JSON\n\n` with the data's `type` equal to NAME; block
    /// indexes start, stream and stop in order; the stream ends with one terminal event.
    pub fn check_event_grammar(sse: &str) {
        assert!(sse.ends_with("\n\n"), "{sse}");
        let mut open: Option<u64> = None;
        let mut next = 0;
        let mut names = Vec::new();
        for raw in sse.trim_end_matches("\n\n").split("\n\n") {
            let (name_line, data_line) = raw.split_once('\n').expect("two lines");
            let name = name_line.strip_prefix("event: ").expect("event line");
            let data: Value =
                serde_json::from_str(data_line.strip_prefix("data: ").expect("data line"))
                    .expect("data is JSON");
            assert_eq!(data["type"], name, "{raw}");
            match name {
                "content_block_start" => {
                    assert_eq!(open, None, "block opened inside another: {sse}");
                    assert_eq!(data["index"], next);
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => assert_eq!(data["index"].as_u64(), open, "{sse}"),
                "content_block_stop" => {
                    assert_eq!(data["index"].as_u64(), open, "{sse}");
                    open = None;
                }
                "message_delta" | "message_stop" | "error" => {
                    assert_eq!(open, None, "block left open: {sse}")
                }
                _ => {}
            }
            names.push(name.to_string());
        }
        assert!(names.iter().filter(|n| *n == "message_start").count() <= 1);
        let last = names.last().map(String::as_str);
        assert!(matches!(last, Some("message_stop" | "error")), "{sse}");
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "message_stop" || *n == "error")
                .count(),
            1
        );
    }

    pub fn odd_values() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!(""),
            json!("x"),
            json!([]),
            json!([null]),
            json!({}),
            json!({"type": null}),
            json!({"type": "text"}),
            json!({"type": "image", "source": {}}),
            json!({"type": "tool_result"}),
        ]
    }
}

mod error;
mod request;
mod response;
mod stream;

pub use error::error_body;
pub use request::request_to_openai;
pub use response::response_from_openai;
pub use stream::AnthropicEventSink;

#[cfg(test)]
mod tests {
    use super::test_helpers::*;
    use super::*;
    use crate::error::GatewayError;
    use crate::stream::chunk::StreamOut;
    use crate::test_support::mutations;

    #[test]
    fn no_input_panics() {
        let odd = odd_values();
        let mut count = 0;
        for name in [
            "request_text_system",
            "request_images",
            "request_tools",
            "request_tool_result_image",
        ] {
            for variant in mutations(&fixture(&format!("{name}.anthropic.json")), &odd) {
                let _ = request_to_openai(&variant);
                count += 1;
            }
        }
        for name in ["response_text", "response_thinking", "response_tool_calls"] {
            for variant in mutations(&fixture(&format!("{name}.openai.json")), &odd) {
                let _ = response_from_openai(&variant, "m");
                count += 1;
            }
        }
        for name in [
            "stream_text",
            "stream_parallel_tools",
            "stream_reasoning_text",
        ] {
            let items = stream_items(&fixture_text(&format!("{name}.chunks.jsonl")));
            for (i, item) in items.iter().enumerate() {
                let StreamOut::Chunk(chunk) = item else {
                    continue;
                };
                for variant in mutations(chunk, &odd) {
                    let mut mutated = items.clone();
                    mutated[i] = StreamOut::Chunk(variant);
                    check_event_grammar(&run_sink(&mutated));
                    count += 1;
                }
            }
        }
        for status in [0, 99, 200, 599, 600, u16::MAX] {
            let _ = error_body(&GatewayError::new(status, ""));
        }
        assert!(count > 2000, "only {count} variants");
    }
}
