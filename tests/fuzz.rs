//! Property tests: what clients and upstreams send goes through the request parsers, the answer
//! translators and the stream translators without a panic, and with output bounded by the input.
//!
//! Three kinds of input for each: arbitrary bytes; the golden fixtures (tests/fixtures/) with a
//! few bytes flipped, inserted, deleted, duplicated or cut; and the fixtures with JSON values
//! swapped for values of other types and odd sizes (which reach far deeper than broken JSON).
//! Streams are fed in pieces split at arbitrary points.
//!
//! Bounded in time for CI: a fixed seed, and 256 cases per target (1536 for the stream
//! translators, which have the most paths), a few seconds each in a debug build.
//! `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=7 cargo test --test fuzz` searches longer; a failure
//! prints the smallest input found, to keep as a unit test beside the code it broke.

use dragoman::api::{self, ClientEndpoint};
use dragoman::providers::{ProviderKind, RequestContext, ResponseContext};
use dragoman::stream::chunk::StreamContext;
use dragoman::stream::sse::SseParser;
use dragoman::stream::{ClientSink, StreamTranslation};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;
use std::sync::OnceLock;

/// Output may not grow past this many times the input, plus [`GROWTH_SLACK`] bytes.
const GROWTH: usize = 16;
const GROWTH_SLACK: usize = 16 * 1024;

fn config(cases: u32) -> Config {
    let mut config = Config {
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x647261676f6d616e);
    }
    config
}

fn assert_bounded(input: usize, output: usize, what: &str) {
    assert!(
        output <= input * GROWTH + GROWTH_SLACK,
        "{what}: {output} bytes out of {input} in"
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// The fixture files of `dir` whose names match, as bytes.
fn fixtures(dir: &str, matches: impl Fn(&str) -> bool) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&matches))
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// Requests clients send: OpenAI chat requests and Anthropic Messages requests.
fn request_fixtures() -> &'static [Vec<u8>] {
    static FIXTURES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let mut all = Vec::new();
        for dir in ["anthropic", "gemini"] {
            all.extend(fixtures(dir, |n| {
                n.starts_with("request_") && n.ends_with(".openai.json")
            }));
        }
        all.extend(fixtures("anthropic_api", |n| {
            n.starts_with("request_") && n.ends_with(".anthropic.json")
        }));
        all.push(
            br#"{"model": "m", "input": ["one", "two"], "encoding_format": "base64"}"#.to_vec(),
        );
        all.push(
            br#"{"model_type": "m", "text": "hello", "max_tokens": 5, "temperature": 0.2}"#
                .to_vec(),
        );
        all
    })
}

/// Whole answers upstreams send, by kind, and OpenAI answers (for the Messages front door).
fn answer_fixtures() -> &'static [(Option<ProviderKind>, Vec<u8>)] {
    static FIXTURES: OnceLock<Vec<(Option<ProviderKind>, Vec<u8>)>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let mut all = Vec::new();
        for f in fixtures("anthropic", |n| {
            n.starts_with("response_") && n.ends_with(".anthropic.json")
        }) {
            all.push((Some(ProviderKind::Anthropic), f));
        }
        for f in fixtures("gemini", |n| {
            n.starts_with("response_") && n.ends_with(".gemini.json")
        }) {
            all.push((Some(ProviderKind::Gemini), f));
        }
        for f in fixtures("anthropic", |n| {
            n.starts_with("response_") && n.ends_with(".openai.json")
        }) {
            all.push((None, f));
        }
        all.push((
            Some(ProviderKind::Gemini),
            br#"{"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3]}]}"#.to_vec(),
        ));
        all
    })
}

/// Streams upstreams send, by kind.
fn stream_fixtures() -> &'static [(ProviderKind, Vec<u8>)] {
    static FIXTURES: OnceLock<Vec<(ProviderKind, Vec<u8>)>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let sse = |n: &str| n.ends_with(".sse");
        let mut all = Vec::new();
        for f in fixtures("anthropic", sse) {
            all.push((ProviderKind::Anthropic, f));
        }
        for f in fixtures("gemini", sse) {
            all.push((ProviderKind::Gemini, f));
        }
        for f in fixtures("azure", sse) {
            all.push((ProviderKind::AzureOpenai, f));
        }
        // The Messages front door's fixtures are OpenAI streams.
        for f in fixtures("anthropic_api", sse) {
            all.push((ProviderKind::Openai, f));
        }
        all
    })
}

/// One byte-level edit.
#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Cut(Index),
}

/// Bytes that mean something to JSON, SSE or UTF-8.
const TELLING_BYTES: &[u8] = b"{}[]\":,\\\n\r 0-.eE\x00\x7f\x80\xbf\xc3\xe2\xf0\xff";

fn telling_byte() -> impl Strategy<Value = u8> {
    prop_oneof![prop::sample::select(TELLING_BYTES), any::<u8>()]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<Index>(), telling_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), telling_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1usize..256).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        any::<Index>().prop_map(Edit::Cut),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match edit {
            Edit::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Edit::Delete(i, n) => {
                let i = i.index(bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Duplicate(i, n) => {
                let i = i.index(bytes.len());
                let end = (i + n).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Edit::Cut(i) => {
                let i = i.index(bytes.len());
                bytes.truncate(i);
            }
        }
    }
    bytes
}

/// A JSON value of another type or an odd size, to put in place of one in a valid document.
fn odd_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec![
            0.0,
            -1.0,
            1.5,
            1e300,
            -1e300,
            f64::MIN_POSITIVE,
            4294967296.0,
            9007199254740993.0,
        ])
        .prop_map(|f| serde_json::json!(f)),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        Just(serde_json::json!(u64::MAX)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "",
            "text",
            "image_url",
            "tool_use",
            "tool_result",
            "function",
            "user",
            "assistant",
            "system",
            "tool",
            "data:image/png;base64,",
            "data:",
            "end_turn",
            "[DONE]",
        ])
        .prop_map(|s| Value::String(s.into())),
        (0usize..3000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "type",
                        "text",
                        "content",
                        "role",
                        "name",
                        "id",
                        "index",
                        "delta",
                        "arguments",
                        "input",
                        "parts",
                        "choices",
                        "message",
                        "tool_calls",
                        "function",
                        "usage",
                        "source",
                        "data",
                        "url",
                        "x",
                    ]),
                    inner
                ),
                0..4
            )
            .prop_map(|members| Value::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            )),
        ]
    })
}

/// One change to a JSON document: the value at some node replaced, or removed from its parent.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
}

fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    let edit = prop_oneof![
        2 => (any::<Index>(), odd_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
    ];
    prop::collection::vec(edit, 1..4)
}

/// The JSON pointers of every node below the root.
fn pointers(value: &Value, at: &mut String, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        let len = at.len();
        at.push('/');
        at.push_str(&key);
        out.push(at.clone());
        pointers(child, at, out);
        at.truncate(len);
    }
}

fn apply_json(mut doc: Value, edits: &[JsonEdit]) -> Value {
    for edit in edits {
        let mut all = Vec::new();
        pointers(&doc, &mut String::new(), &mut all);
        if all.is_empty() {
            break;
        }
        match edit {
            JsonEdit::Replace(i, value) => {
                if let Some(node) = doc.pointer_mut(&all[i.index(all.len())]) {
                    *node = value.clone();
                }
            }
            JsonEdit::Remove(i) => {
                let pointer = &all[i.index(all.len())];
                let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
                let key = key.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&key);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    doc
}

/// A JSON fixture with values swapped; fixtures that are not JSON come back as they are.
fn mutate_json_bytes(bytes: &[u8], edits: &[JsonEdit]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(doc) => serde_json::to_vec(&apply_json(doc, edits)).unwrap_or_default(),
        Err(_) => bytes.to_vec(),
    }
}

/// An SSE fixture with the JSON of some events' `data:` lines swapped (event `i` takes
/// `edits[i % len]`, mostly none, so the stream gets as far as each changed event), and its events
/// reordered, repeated or dropped.
fn mutate_stream(bytes: &[u8], edits: &[Option<Vec<JsonEdit>>], order: &[Index]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    if events.is_empty() || edits.is_empty() {
        return bytes.to_vec();
    }
    let picks: Vec<usize> = if order.is_empty() {
        (0..events.len()).collect()
    } else {
        order.iter().map(|i| i.index(events.len())).collect()
    };
    let mut out = String::new();
    for pick in picks {
        for line in events[pick].lines() {
            match (
                line.strip_prefix("data: ")
                    .map(serde_json::from_str::<Value>),
                &edits[pick % edits.len()],
            ) {
                (Some(Ok(doc)), Some(edits)) => {
                    out.push_str("data: ");
                    out.push_str(&apply_json(doc, edits).to_string());
                }
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// Arbitrary bytes, a fixture with byte edits, or a fixture with JSON edits.
fn document(fixtures: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    let pick = prop::sample::select(fixtures.to_vec());
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => (pick.clone(), edits()).prop_map(|(f, e)| apply(f, &e)),
        3 => (pick, json_edits()).prop_map(|(f, e)| mutate_json_bytes(&f, &e)),
    ]
}

/// Where to split a stream into the pieces it arrives in.
fn splits() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..8)
}

fn pieces<'a>(bytes: &'a [u8], splits: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

// ---------------------------------------------------------------------------------------------
// Targets

const ENDPOINTS: [ClientEndpoint; 5] = [
    ClientEndpoint::ChatCompletions,
    ClientEndpoint::Complete,
    ClientEndpoint::Embeddings,
    ClientEndpoint::Messages,
    ClientEndpoint::CountTokens,
];

/// A client's body through everything the planner does with it, for every endpoint and
/// provider kind.
fn read_client_request(body: &[u8]) {
    let ctx = RequestContext {
        upstream_model: "upstream-model",
        default_max_tokens: 4096,
    };
    for endpoint in ENDPOINTS {
        let Ok(request) = api::ClientRequest::read(endpoint, body) else {
            continue;
        };
        assert!(request.envelope.model_span.end <= body.len());
        if let Ok(tree) = request.tree() {
            let out = ProviderKind::Gemini
                .dialect()
                .embeddings_request(&tree, "upstream-model");
            if let Ok(out) = out {
                assert_bounded(body.len(), out.body.len(), "gemini embeddings request");
            }
        }
        if let Ok(tree) = request.openai_chat_tree() {
            assert_bounded(
                body.len(),
                serde_json::to_vec(&tree).unwrap().len(),
                "adapted chat",
            );
        }
        let Ok(chat) = request.openai_chat() else {
            continue;
        };
        let _ = chat.messages();
        for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
            if let Ok(out) = kind.dialect().chat_request(&chat, &ctx) {
                assert_bounded(body.len(), out.len(), kind.as_str());
                let _: Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{} wrote invalid JSON: {e}", kind.as_str()));
            }
        }
    }
}

/// An upstream's whole answer through the translations back to the client.
fn read_answer(kind: Option<ProviderKind>, body: &[u8]) {
    let ctx = ResponseContext {
        upstream_model: "upstream-model",
        created: 1,
    };
    let completion = match kind {
        Some(kind) => {
            let dialect = kind.dialect();
            for base64 in [false, true] {
                if let Ok(list) = dialect.embeddings_response(body, "m", base64) {
                    let size = serde_json::to_vec(&list).unwrap().len();
                    assert_bounded(body.len(), size, "embeddings answer");
                }
            }
            dialect.chat_response(body, &ctx)
        }
        None => serde_json::from_slice(body)
            .map_err(|_| ())
            .map_err(|()| dragoman::error::GatewayError::new(502, "not JSON")),
    };
    if let Ok(completion) = completion {
        let size = serde_json::to_vec(&completion).unwrap().len();
        assert_bounded(body.len(), size, "chat answer");
        if let Ok(message) = api::anthropic::response_from_openai(&completion, "m") {
            let size = serde_json::to_vec(&message).unwrap().len();
            assert_bounded(body.len(), size, "messages answer");
        }
    }
}

fn stream_context() -> StreamContext {
    StreamContext {
        upstream_model: "upstream-model".into(),
        created: 1,
        include_usage: true,
    }
}

/// An upstream stream through every translation a client of either protocol may get, fed in
/// pieces. Every translated stream ends with its terminal event or an error event.
fn translate_stream(kind: ProviderKind, bytes: &[u8], splits: &[Index]) {
    let pieces = pieces(bytes, splits);
    for anthropic_client in [false, true] {
        if kind.dialect().native_protocol() == Some(api::ClientProtocol::OpenAi)
            && !anthropic_client
        {
            // Passed through to OpenAI clients; Azure's through its event filter.
            if let Some(mut filter) = kind.dialect().native_stream_filter() {
                let mut total = 0;
                for piece in &pieces {
                    match filter.filter(&bytes::Bytes::copy_from_slice(piece)) {
                        Ok(out) => total += out.len(),
                        Err(_) => break,
                    }
                }
                // Content filter verdicts are restamped with the stream's id: a little more.
                assert_bounded(bytes.len(), total, "azure filter");
                let _ = (filter.ended_properly(), filter.has_failed());
            }
            continue;
        }
        let sink = if anthropic_client {
            ClientSink::Anthropic(Box::new(api::anthropic::AnthropicEventSink::new(
                "m",
                "msg_fuzz".into(),
            )))
        } else {
            ClientSink::OpenAi(api::openai::stream::OpenAiEventSink::new())
        };
        let mut translation =
            StreamTranslation::new(kind.dialect().chunk_source(stream_context()), sink)
                .redacting("sk-secret");
        let mut out = Vec::new();
        for piece in &pieces {
            translation.feed(piece, &mut out);
        }
        translation.finish(&mut out);
        assert_bounded(bytes.len(), out.len(), kind.as_str());
        let text = String::from_utf8(out).expect("translated streams are UTF-8");
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
        let terminal = if anthropic_client {
            last.starts_with("event: message_stop") || last.starts_with("event: error")
        } else {
            last == "data: [DONE]" || last.starts_with("data: {\"error\"")
        };
        assert!(
            terminal,
            "{} stream to {} clients ends with {last:?}",
            kind.as_str(),
            if anthropic_client {
                "Anthropic"
            } else {
                "OpenAI"
            }
        );
    }
}

const STREAM_KINDS: [ProviderKind; 4] = [
    ProviderKind::Openai,
    ProviderKind::AzureOpenai,
    ProviderKind::Anthropic,
    ProviderKind::Gemini,
];

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn client_requests(body in document(request_fixtures())) {
        read_client_request(&body);
    }

    #[test]
    fn upstream_answers(
        (kind, body) in prop_oneof![
            (prop::sample::select(vec![None, Some(ProviderKind::Anthropic), Some(ProviderKind::Gemini)]),
             prop::collection::vec(any::<u8>(), 0..512)),
            (prop::sample::select(answer_fixtures().to_vec()), edits())
                .prop_map(|((k, f), e)| (k, apply(f, &e))),
            (prop::sample::select(answer_fixtures().to_vec()), json_edits())
                .prop_map(|((k, f), e)| (k, mutate_json_bytes(&f, &e))),
        ]
    ) {
        read_answer(kind, &body);
    }

    #[test]
    fn sse_parser(
        bytes in prop_oneof![
            prop::collection::vec(telling_byte(), 0..1024),
            (prop::sample::select(stream_fixtures().to_vec()), edits())
                .prop_map(|((_, f), e)| apply(f, &e)),
        ],
        limit in 1usize..4096,
        splits in splits(),
    ) {
        let mut parser = SseParser::new(limit);
        let mut events = Vec::new();
        for piece in pieces(&bytes, &splits) {
            if parser.push(piece, &mut events).is_err() {
                break;
            }
        }
        parser.finish();
        let size: usize = events.iter().map(|e| e.data.len() + e.event.as_ref().map_or(0, String::len)).sum();
        prop_assert!(size <= bytes.len());
        prop_assert!(events.iter().all(|e| e.data.len() <= limit));
    }

}

proptest! {
    #![proptest_config(config(1536))]

    #[test]
    fn stream_translations(
        (kind, bytes) in prop_oneof![
            1 => (prop::sample::select(STREAM_KINDS.to_vec()), prop::collection::vec(telling_byte(), 0..1024)),
            1 => (prop::sample::select(stream_fixtures().to_vec()), edits())
                .prop_map(|((k, f), e)| (k, apply(f, &e))),
            4 => (
                prop::sample::select(stream_fixtures().to_vec()),
                prop::collection::vec(prop::option::weighted(0.25, json_edits()), 1..24),
                prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<Index>(), 1..12)],
            )
                .prop_map(|((k, f), edits, order)| (k, mutate_stream(&f, &edits, &order))),
        ],
        splits in splits(),
    ) {
        translate_stream(kind, &bytes, &splits);
    }
}

/// The fixtures themselves go through every target (the mutations start from inputs that work).
#[test]
fn the_fixtures_pass_every_target() {
    for body in request_fixtures() {
        read_client_request(body);
    }
    for (kind, body) in answer_fixtures() {
        read_answer(*kind, body);
    }
    for (kind, bytes) in stream_fixtures() {
        translate_stream(*kind, bytes, &[]);
    }
}
