//! Micro-benchmarks of the translation hot paths: request and response bodies, stream events,
//! and the SSE parser. Inputs are built here to realistic sizes (see each group).
//!
//! Run with `cargo bench --bench translate` (add `-- --quick` for a fast pass).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dragoman::api::anthropic::AnthropicEventSink;
use dragoman::api::openai::chat::{ChatRequest, RawChatRequest};
use dragoman::api::openai::stream::OpenAiEventSink;
use dragoman::api::{parse_chat_envelope, parse_chat_tree};
use dragoman::providers::anthropic::{self, AnthropicChunkSource};
use dragoman::providers::gemini::{self, GeminiChunkSource};
use dragoman::providers::openai::splice_model;
use dragoman::providers::{RequestContext, ResponseContext};
use dragoman::stream::chunk::{ChunkSource, StreamContext, StreamOut};
use dragoman::stream::sse::{SseEvent, SseParser};
use dragoman::stream::{ClientSink, StreamTranslation, MAX_EVENT_BYTES};
use serde_json::{json, Value};
use std::hint::black_box;

const CREATED: u64 = 1_748_779_200;

const ANTHROPIC_REQ_CTX: RequestContext<'static> = RequestContext {
    upstream_model: "claude-sonnet-4-5-20250929",
    default_max_tokens: 4096,
};
const ANTHROPIC_RESP_CTX: ResponseContext<'static> = ResponseContext {
    upstream_model: "claude-sonnet-4-5",
    created: CREATED,
};
const GEMINI_REQ_CTX: RequestContext<'static> = RequestContext {
    upstream_model: "gemini-2.5-flash",
    default_max_tokens: 4096,
};
const GEMINI_RESP_CTX: ResponseContext<'static> = ResponseContext {
    upstream_model: "gemini-2.5-flash",
    created: CREATED,
};

fn stream_ctx(upstream_model: &str) -> StreamContext {
    StreamContext {
        upstream_model: upstream_model.to_string(),
        created: CREATED,
        include_usage: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Prose for conversation turns, so that string escaping and UTF-8 see realistic text.
const USER_TURNS: &[&str] = &[
    "I'm planning a three-day trip to Paris in early June. Could you suggest an itinerary that \
     balances museums with time outdoors? I'd like to avoid the biggest crowds if possible.",
    "That sounds great. What's the weather usually like then, and should I book the Louvre \
     tickets in advance? Also, is the \"Paris Museum Pass\" worth it for three days?",
    "Thanks! One more thing: we're vegetarian. Any neighbourhoods with good cafés — ideally \
     somewhere we can sit en terrasse in the evening?",
    "Perfect. Can you check tomorrow's forecast for Paris and tell me what time it is there now?",
];
const ASSISTANT_TURNS: &[&str] = &[
    "Here's a relaxed plan. Day 1: the Marais in the morning, the Musée Picasso after lunch, \
     then a walk along the Seine to Île Saint-Louis. Day 2: the Louvre right at opening (9:00), \
     the Tuileries and the Orangerie, then Saint-Germain in the evening. Day 3: Montmartre early, \
     before the crowds, then the Canal Saint-Martin and a picnic at Buttes-Chaumont.",
    "Early June is usually mild: 15–24 °C, with the odd shower, so pack a light jacket. Yes, book \
     the Louvre: timed-entry tickets sell out days ahead in summer. For three days the Museum \
     Pass pays off if you visit at least four paid museums, and it lets you skip ticket lines.",
    "You're in luck: Paris has become very vegetarian-friendly. Try the Marais (Rue des Rosiers \
     and around), the 11th near Rue Oberkampf, and the Canal Saint-Martin, where most cafés put \
     tables outside from late afternoon. Many bistros now mark a plat végétarien on the menu.",
];

const SYSTEM_PROMPT: &str = "You are a helpful travel assistant for a European tour operator. \
    Answer concisely and accurately, in the user's language. When the user asks about current \
    conditions (weather, time, opening hours), call the matching tool rather than guessing. \
    Never invent prices; if unsure, say so and suggest where to check. Prefer public transport \
    and walking routes, and mention accessibility where relevant.";

fn tool_definitions() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather and tomorrow's forecast in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and country, e.g. Paris, France"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["location"]
            }
        }},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "Get the current local time in a given time zone",
            "parameters": {
                "type": "object",
                "properties": {
                    "timezone": {"type": "string", "description": "An IANA time zone, e.g. Europe/Paris"}
                },
                "required": ["timezone"]
            }
        }}
    ])
}

/// An OpenAI chat request with a system prompt, 2 tools, a tool call round trip and alternating
/// user/assistant turns, grown until its encoding is at least `target` bytes.
fn chat_request_json(target: usize, stream: bool) -> Vec<u8> {
    let mut messages = vec![json!({"role": "system", "content": SYSTEM_PROMPT})];
    let mut turn = 0;
    let build = |messages: &[Value]| {
        let mut all = messages.to_vec();
        // Every request ends with a tool round trip and the user's last question.
        all.push(json!({"role": "user", "content": USER_TURNS[3]}));
        all.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_weather_1", "type": "function", "function": {
                "name": "get_weather", "arguments": "{\"location\":\"Paris, France\",\"unit\":\"celsius\"}"}},
            {"id": "call_time_2", "type": "function", "function": {
                "name": "get_time", "arguments": "{\"timezone\":\"Europe/Paris\"}"}}
        ]}));
        all.push(json!({"role": "tool", "tool_call_id": "call_weather_1",
            "content": "{\"now\":{\"temp_c\":19,\"conditions\":\"partly cloudy\"},\"tomorrow\":{\"min_c\":14,\"max_c\":23,\"rain_chance\":0.2}}"}));
        all.push(json!({"role": "tool", "tool_call_id": "call_time_2", "content": "2025-06-01T18:42:00+02:00"}));
        serde_json::to_vec(&json!({
            "model": "claude-fast",
            "messages": all,
            "tools": tool_definitions(),
            "tool_choice": "auto",
            "temperature": 0.7,
            "max_tokens": 1024,
            "stream": stream,
            "user": "user-4711",
        }))
        .expect("request encodes")
    };
    loop {
        let body = build(&messages);
        if body.len() >= target {
            return body;
        }
        messages.push(json!({"role": "user", "content": USER_TURNS[turn % 3]}));
        messages.push(json!({"role": "assistant", "content": ASSISTANT_TURNS[turn % 3]}));
        turn += 1;
    }
}

/// A typical Anthropic Messages response: a text block and a tool_use block.
fn anthropic_response() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "msg_01Aq9w938a90dw8q5fJ2zRkP",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "I'll check tomorrow's forecast for Paris so you can plan the Montmartre morning."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "Paris, France", "unit": "celsius"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 1024,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 812,
            "output_tokens": 64,
            "service_tier": "standard"
        }
    }))
    .expect("response encodes")
}

/// A typical Gemini generateContent response: a text part and a functionCall part.
fn gemini_response() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "candidates": [{
            "content": {
                "parts": [
                    {"text": "I'll check tomorrow's forecast for Paris so you can plan the Montmartre morning."},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris, France", "unit": "celsius"}}}
                ],
                "role": "model"
            },
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": 1024,
            "candidatesTokenCount": 64,
            "totalTokenCount": 1088,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}]
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "rX3TaPm9JcK2qtsPxaGV4Qk"
    }))
    .expect("response encodes")
}

const ANTHROPIC_MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1024,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n";
const ANTHROPIC_BLOCK_START: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const ANTHROPIC_PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
/// One text delta, as Anthropic sends it (a few tokens of text).
const ANTHROPIC_DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" the Canal Saint-Martin, where\"}}\n\n";
const ANTHROPIC_BLOCK_STOP: &str =
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
const ANTHROPIC_MESSAGE_DELTA: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":96}}\n\n";
const ANTHROPIC_MESSAGE_STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// One Gemini stream event carrying a text part (no finishReason, so it can be repeated).
const GEMINI_DELTA: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" the Canal Saint-Martin, where\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":1024,\"candidatesTokenCount\":12,\"totalTokenCount\":1036},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"rX3TaPm9JcK2qtsPxaGV4Qk\"}\n\n";

/// A whole 20-event Anthropic stream: start, block start, ping, 14 text deltas, block stop,
/// message delta, message stop.
fn anthropic_stream_20() -> Vec<u8> {
    let mut s = String::new();
    s.push_str(ANTHROPIC_MESSAGE_START);
    s.push_str(ANTHROPIC_BLOCK_START);
    s.push_str(ANTHROPIC_PING);
    for _ in 0..14 {
        s.push_str(ANTHROPIC_DELTA);
    }
    s.push_str(ANTHROPIC_BLOCK_STOP);
    s.push_str(ANTHROPIC_MESSAGE_DELTA);
    s.push_str(ANTHROPIC_MESSAGE_STOP);
    s.into_bytes()
}

/// The single SSE event in `bytes`.
fn sse_event(bytes: &str) -> SseEvent {
    let mut events = Vec::new();
    SseParser::new(MAX_EVENT_BYTES)
        .push(bytes.as_bytes(), &mut events)
        .expect("valid SSE");
    assert_eq!(events.len(), 1, "one event in {bytes:?}");
    events.pop().expect("one event")
}

/// An Anthropic chunk source past `message_start` and the text block start.
fn started_anthropic_source() -> AnthropicChunkSource {
    let mut source = AnthropicChunkSource::new(stream_ctx("claude-sonnet-4-5"));
    let mut out = Vec::new();
    source.on_event(&sse_event(ANTHROPIC_MESSAGE_START), &mut out);
    source.on_event(&sse_event(ANTHROPIC_BLOCK_START), &mut out);
    assert_eq!(out.len(), 1, "the role chunk");
    source
}

// ---------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------

/// The OpenAI pass-through path: read `model`/`stream`, splice in the upstream id.
fn passthrough(c: &mut Criterion) {
    let mut group = c.benchmark_group("passthrough");
    let upstream = br#""gpt-4o-2024-08-06""#;
    for (name, target) in [("4KB", 4 * 1024), ("64KB", 64 * 1024)] {
        let body = chat_request_json(target, false);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("parse_chat_envelope/{name}"), |b| {
            b.iter(|| parse_chat_envelope(black_box(&body)).expect("valid envelope"))
        });
        // What `/v1/chat/completions` does: one raw pass that translation can reuse.
        group.bench_function(format!("raw_envelope+splice_model/{name}"), |b| {
            b.iter(|| {
                let request = RawChatRequest::parse(black_box(&body)).expect("valid request");
                let env = request.envelope().expect("valid envelope");
                splice_model(black_box(&body), env.model_span, black_box(upstream))
            })
        });
    }
    group.finish();
}

/// A request read as `/v1/chat/completions` reads it: routed on its raw members, which are then
/// read for translation.
fn routed(body: &[u8]) -> ChatRequest<'_> {
    let raw = RawChatRequest::parse(body).expect("valid request");
    raw.envelope().expect("valid envelope");
    raw.to_request().expect("valid request")
}

/// A client's body to the upstream's, from bytes to bytes. `parse_chat_tree` is the baseline: it
/// is what parsing alone cost when requests were translated from a `serde_json::Value` tree.
fn anthropic_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("anthropic_request");
    let body = chat_request_json(4 * 1024, true);
    let translate = |body: &[u8]| {
        anthropic::chat_request(&routed(body), &ANTHROPIC_REQ_CTX).expect("request translates")
    };
    translate(&body);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chat_request/4KB", |b| {
        b.iter(|| translate(black_box(&body)))
    });
    group.bench_function("ChatRequest::parse/4KB", |b| {
        b.iter(|| ChatRequest::parse(black_box(&body)).expect("ok"))
    });
    group.bench_function("parse_chat_tree/4KB", |b| {
        b.iter(|| parse_chat_tree(black_box(&body)).expect("ok"))
    });
    group.finish();
}

fn anthropic_responses(c: &mut Criterion) {
    let mut group = c.benchmark_group("anthropic_response");
    let body = anthropic_response();
    anthropic::chat_response(&body, &ANTHROPIC_RESP_CTX).expect("response translates");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chat_response/text+tool_use", |b| {
        b.iter(|| anthropic::chat_response(black_box(&body), &ANTHROPIC_RESP_CTX).expect("ok"))
    });
    group.finish();
}

fn gemini_translation(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemini");
    let body = chat_request_json(4 * 1024, true);
    let translate = |body: &[u8]| {
        gemini::chat_request(&routed(body), &GEMINI_REQ_CTX).expect("request translates")
    };
    translate(&body);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("chat_request/4KB", |b| {
        b.iter(|| translate(black_box(&body)))
    });
    let response = gemini_response();
    gemini::chat_response(&response, &GEMINI_RESP_CTX).expect("response translates");
    group.throughput(Throughput::Bytes(response.len() as u64));
    group.bench_function("chat_response/text+functionCall", |b| {
        b.iter(|| gemini::chat_response(black_box(&response), &GEMINI_RESP_CTX).expect("ok"))
    });
    group.finish();
}

/// Per-event cost of the stream translators, one text delta event at a time.
fn stream_events(c: &mut Criterion) {
    let mut group = c.benchmark_group("stream_event");
    group.throughput(Throughput::Elements(1));

    // Source only: one already-parsed SSE event in, one OpenAI chunk out (and dropped).
    let delta = sse_event(ANTHROPIC_DELTA);
    let mut source = started_anthropic_source();
    let mut out: Vec<StreamOut> = Vec::with_capacity(4);
    group.bench_function("anthropic_source/content_block_delta", |b| {
        b.iter(|| {
            out.clear();
            source.on_event(black_box(&delta), &mut out);
            debug_assert_eq!(out.len(), 1);
        })
    });
    // The same from a fresh source each time, which also pays for message_start.
    let start = sse_event(ANTHROPIC_MESSAGE_START);
    group.bench_function("anthropic_source/message_start+delta (fresh source)", |b| {
        b.iter_batched_ref(
            || {
                (
                    AnthropicChunkSource::new(stream_ctx("claude-sonnet-4-5")),
                    Vec::with_capacity(4),
                )
            },
            |(source, out)| {
                source.on_event(black_box(&start), out);
                source.on_event(black_box(&delta), out);
            },
            BatchSize::SmallInput,
        )
    });

    let gemini_delta = sse_event(GEMINI_DELTA);
    let mut source = GeminiChunkSource::new(stream_ctx("gemini-2.5-flash"));
    source.on_event(&gemini_delta, &mut out); // role chunk + first text
    group.bench_function("gemini_source/text_part", |b| {
        b.iter(|| {
            out.clear();
            source.on_event(black_box(&gemini_delta), &mut out);
            debug_assert_eq!(out.len(), 1);
        })
    });

    // Full pipeline: upstream bytes -> SSE parser -> source -> OpenAI sink -> client bytes.
    let mut translation = StreamTranslation::new(
        Box::new(AnthropicChunkSource::new(stream_ctx("claude-sonnet-4-5"))),
        ClientSink::OpenAi(OpenAiEventSink::new()),
    );
    let mut bytes = Vec::with_capacity(1024);
    translation.feed(ANTHROPIC_MESSAGE_START.as_bytes(), &mut bytes);
    translation.feed(ANTHROPIC_BLOCK_START.as_bytes(), &mut bytes);
    bytes.clear();
    translation.feed(ANTHROPIC_DELTA.as_bytes(), &mut bytes);
    assert!(bytes.starts_with(b"data: {"), "the delta became a chunk");
    group.bench_function("anthropic_pipeline/openai_client", |b| {
        b.iter(|| {
            bytes.clear();
            translation.feed(black_box(ANTHROPIC_DELTA.as_bytes()), &mut bytes);
        })
    });

    let mut translation = StreamTranslation::new(
        Box::new(GeminiChunkSource::new(stream_ctx("gemini-2.5-flash"))),
        ClientSink::OpenAi(OpenAiEventSink::new()),
    );
    translation.feed(GEMINI_DELTA.as_bytes(), &mut bytes);
    bytes.clear();
    translation.feed(GEMINI_DELTA.as_bytes(), &mut bytes);
    assert!(bytes.starts_with(b"data: {"), "the delta became a chunk");
    group.bench_function("gemini_pipeline/openai_client", |b| {
        b.iter(|| {
            bytes.clear();
            translation.feed(black_box(GEMINI_DELTA.as_bytes()), &mut bytes);
        })
    });

    // Anthropic client: the common stream form written back as Anthropic SSE.
    let chunk = {
        let mut source = started_anthropic_source();
        let mut out = Vec::new();
        source.on_event(&delta, &mut out);
        out.pop().expect("a text chunk")
    };
    assert!(matches!(chunk, StreamOut::Text(_)));
    let mut sink = AnthropicEventSink::new("claude-sonnet-4-5", "msg_bench".to_string());
    sink.write(&chunk, &mut bytes); // message_start, ping, content_block_start
    bytes.clear();
    sink.write(&chunk, &mut bytes);
    assert!(bytes.starts_with(b"event: content_block_delta"));
    group.bench_function("anthropic_event_sink/text_delta", |b| {
        b.iter(|| {
            bytes.clear();
            sink.write(black_box(&chunk), &mut bytes);
        })
    });
    group.finish();
}

fn sse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse");
    let stream = anthropic_stream_20();
    let mut events = Vec::with_capacity(32);
    SseParser::new(MAX_EVENT_BYTES)
        .push(&stream, &mut events)
        .expect("valid SSE");
    assert_eq!(events.len(), 20);
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("push/anthropic_20_events/whole", |b| {
        b.iter(|| {
            events.clear();
            let mut parser = SseParser::new(MAX_EVENT_BYTES);
            parser.push(black_box(&stream), &mut events).expect("ok");
        })
    });
    // Network reads split events anywhere; 256-byte reads make most events span two.
    group.bench_function("push/anthropic_20_events/256B_reads", |b| {
        b.iter(|| {
            events.clear();
            let mut parser = SseParser::new(MAX_EVENT_BYTES);
            for read in black_box(&stream).chunks(256) {
                parser.push(read, &mut events).expect("ok");
            }
        })
    });
    // The whole stream through the translation into OpenAI client bytes.
    let mut bytes = Vec::with_capacity(stream.len() * 2);
    group.bench_function("anthropic_pipeline/20_events/openai_client", |b| {
        b.iter(|| {
            bytes.clear();
            let mut translation = StreamTranslation::new(
                Box::new(AnthropicChunkSource::new(stream_ctx("claude-sonnet-4-5"))),
                ClientSink::OpenAi(OpenAiEventSink::new()),
            );
            translation.feed(black_box(&stream), &mut bytes);
            translation.finish(&mut bytes);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    passthrough,
    anthropic_requests,
    anthropic_responses,
    gemini_translation,
    stream_events,
    sse
);
criterion_main!(benches);
