//! Helpers shared by the translators' unit tests: input mutation for no-panic tests, running
//! recorded streams split at arbitrary points, and checking the plain-message path.

use crate::api::openai::chat::{ChatRequest, Messages};
use crate::error::GatewayError;
use crate::stream::chunk::{ChunkSource, StreamOut};
use crate::stream::sse::SseParser;
use serde_json::Value;

/// Every variant of `value` with one node (at any depth) replaced by an odd value or removed.
pub fn mutations(value: &Value, odd: &[Value]) -> Vec<Value> {
    let mut out = odd.to_vec();
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let mut removed = map.clone();
                removed.remove(key);
                out.push(Value::Object(removed));
                for mutated in mutations(child, odd) {
                    let mut copy = map.clone();
                    copy.insert(key.clone(), mutated);
                    out.push(Value::Object(copy));
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                for mutated in mutations(child, odd) {
                    let mut copy = items.clone();
                    copy[i] = mutated;
                    out.push(Value::Array(copy));
                }
            }
        }
        _ => {}
    }
    out
}

/// A deterministic pseudo-random sequence (Knuth's MMIX LCG), so failures reproduce.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

/// `bytes` cut at every single point, then at `patterns` pseudo-random sets of up to 16 points.
pub fn splits(bytes: &[u8], seed: u64, patterns: usize) -> Vec<Vec<&[u8]>> {
    let mut out: Vec<Vec<&[u8]>> = (0..=bytes.len())
        .map(|i| vec![&bytes[..i], &bytes[i..]])
        .collect();
    let mut rng = Lcg(seed);
    for _ in 0..patterns {
        let mut cuts: Vec<usize> = (0..1 + rng.next(16))
            .map(|_| rng.next(bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for cut in cuts.iter().copied().chain([bytes.len()]) {
            pieces.push(&bytes[from..cut]);
            from = cut;
        }
        out.push(pieces);
    }
    out
}

/// Upstream bytes, delivered in `pieces`, through the SSE parser and `source`.
pub fn run_pieces(source: &mut dyn ChunkSource, pieces: &[&[u8]]) -> Vec<StreamOut> {
    let mut parser = SseParser::new(1 << 20);
    let mut events = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        parser
            .push(piece, &mut events)
            .expect("fixture is valid SSE");
        for event in events.drain(..) {
            source.on_event(&event, &mut out);
        }
    }
    parser.finish();
    source.on_end(&mut out);
    out
}

/// The jsonl form: one compact chunk per line, then `[DONE]` or `ERROR <status>`.
pub fn render(outs: &[StreamOut]) -> Vec<String> {
    outs.iter()
        .map(|o| match o {
            StreamOut::Chunk(v) => v.to_string(),
            StreamOut::Text(t) => t.to_chunk().to_string(),
            StreamOut::Done => "[DONE]".to_string(),
            StreamOut::Error(e) => format!("ERROR {}", e.status),
        })
        .collect()
}

/// Expected jsonl with each JSON line re-rendered, so key order and spacing do not matter.
pub fn normalize_jsonl(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) => v.to_string(),
            Err(_) => l.trim().to_string(),
        })
        .collect()
}

/// Request bodies whose messages take the plain path, alone and mixed with parsed ones: escapes,
/// raw Unicode, odd spacing, empty texts, merged turns, repeated members, escaped roles.
pub const PLAIN_PATH_BODIES: &[&str] = &[
    r#"{"model":"m","messages":[{"role":"system","content":"Be \"brief\".\n"},{"role":"developer","content":"caf\u00e9 \ud83d\ude00"},{"role":"user","content":"hi","name":"ann"},{"role":"user","content":""},{"role":"assistant","content":""},{"role":"assistant","content":"tab\there \/ slash"},{"role":"user","content":"line\r\nbreak"}]}"#,
    r#"{ "messages" : [ { "content" : "x" , "role" : "user" } , {"role":"assistant","content":"y"} ] , "max_tokens" : 5 }"#,
    r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"user","content":"b"},{"role":"assistant","content":"calling","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"ok"},{"role":"user","content":"thanks"}]}"#,
    r#"{"messages":[{"role":"us\u0065r","content":"a"},{"role":"user","role":"assistant","content":"b"},{"role":"user","content":"c","content":"d"},{"r\u006fle":"user","content":"e"}]}"#,
    r#"{"messages":[{"role":"user","content":"日本語 — ünïcödé"},{"role":"assistant","content":null},{"role":"user","content":"again"}]}"#,
    r#"{"messages":[{"role":"system","content":"only a system prompt"}]}"#,
    r#"{"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"the last messages member wins"}]}"#,
];

/// Checks that `encode` writes the same request (or the same error) whether plain messages take
/// the plain path or every message is parsed, for [`PLAIN_PATH_BODIES`] and `more` bodies.
pub fn assert_plain_path_matches(
    encode: impl Fn(&ChatRequest, &Messages) -> Result<Vec<u8>, GatewayError>,
    more: &[String],
) {
    let bodies = PLAIN_PATH_BODIES
        .iter()
        .copied()
        .chain(more.iter().map(String::as_str));
    for body in bodies {
        let req = ChatRequest::parse(body.as_bytes()).expect("test body parses");
        let plain = encode(&req, &req.messages().expect("messages parse"));
        let parsed = encode(&req, &req.messages_all_parsed().expect("messages parse"));
        match (plain, parsed) {
            (Ok(plain), Ok(parsed)) => {
                let plain: Value = serde_json::from_slice(&plain).expect("output is JSON");
                let parsed: Value = serde_json::from_slice(&parsed).expect("output is JSON");
                assert_eq!(plain, parsed, "body {body}");
            }
            (Err(plain), Err(parsed)) => assert_eq!(plain, parsed, "body {body}"),
            (plain, parsed) => panic!("body {body}: plain path {plain:?}, general path {parsed:?}"),
        }
    }
}
