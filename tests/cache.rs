//! The response cache through the gateway: identical requests (up to key order and whitespace)
//! answered without the upstream, what misses, opting out, errors not stored, the byte bound,
//! expiry.
mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn config(mock: &MockProvider, cache_model: &str, top: &str) -> String {
    format!(
        "providers:\n  p: {{ kind: openai, api_key: key-a, endpoints: [\"{}/v1\"] }}\n\
         models:\n  cached: {{ provider: p, {cache_model} }}\n  plain: {{ provider: p }}\n{top}",
        mock.url()
    )
}

/// Sends `body` as it is (its bytes matter: key order, whitespace) with extra headers; returns
/// (status, x-dragoman-cache, body).
async fn send(gw: &GatewayProcess, body: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = client()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let cache = header(resp.headers(), "x-dragoman-cache").to_string();
    let text = resp.text().await.expect("body");
    (status, cache, text)
}

fn chat(model: &str, prompt: &str) -> String {
    json!({"model": model, "temperature": 0.5, "messages": [{"role": "user", "content": prompt}]})
        .to_string()
}

#[tokio::test]
async fn an_identical_request_is_answered_from_the_cache() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    let first =
        r#"{"model":"cached","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, cache, answer) = send(&gw, first, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{answer}");
    assert_eq!(mock.request_count(), 1);
    // The same request, its keys reordered and spaced out.
    let reordered = "{ \"messages\": [ { \"content\": \"hi\", \"role\": \"user\" } ],\n  \"temperature\": 0.5,  \"model\": \"cached\" }";
    let (status, cache, again) = send(&gw, reordered, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(again, answer);
    assert_eq!(mock.request_count(), 1, "a hit must not reach the upstream");
    // Another temperature is another answer.
    let warmer = first.replace("0.5", "0.7");
    let (status, cache, _) = send(&gw, &warmer, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_eq!(mock.request_count(), 2);
    // A model that does not cache says nothing of the cache.
    let (status, cache, _) = send(&gw, &chat("plain", "hi"), &[]).await;
    assert_eq!((status, cache.as_str()), (200, ""));
    let (_, cache, _) = send(&gw, &chat("plain", "hi"), &[]).await;
    assert_eq!(cache, "");
    assert_eq!(mock.request_count(), 4);
    assert_eq!(
        metric(
            &gw,
            "dragoman_cache_requests_total",
            &[("model", "cached"), ("outcome", "hit")]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &gw,
            "dragoman_cache_requests_total",
            &[("model", "cached"), ("outcome", "miss")]
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn clients_opt_out_with_cache_control() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    let body = chat("cached", "opt out");
    // no-store: neither read nor stored.
    let (status, cache, _) = send(&gw, &body, &[("cache-control", "no-store")]).await;
    assert_eq!((status, cache.as_str()), (200, "bypass"));
    let (_, cache, _) = send(&gw, &body, &[]).await;
    assert_eq!(cache, "miss", "a no-store answer must not be stored");
    assert_eq!(mock.request_count(), 2);
    // Stored now; no-cache and no-store both go upstream anyway.
    let (_, cache, _) = send(&gw, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache, "bypass");
    let (_, cache, _) = send(&gw, &body, &[("cache-control", "max-age=0, no-store")]).await;
    assert_eq!(cache, "bypass");
    assert_eq!(mock.request_count(), 4);
    let (_, cache, _) = send(&gw, &body, &[]).await;
    assert_eq!(cache, "hit");
    assert_eq!(mock.request_count(), 4);
    assert_eq!(
        metric(
            &gw,
            "dragoman_cache_requests_total",
            &[("model", "cached"), ("outcome", "bypass")]
        )
        .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn an_error_answer_is_not_stored() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    let body = chat("cached", "fail first");
    mock.push(Behaviour::json(
        400,
        json!({"error": {"message": "bad request", "type": "invalid_request_error"}}),
    ));
    let (status, cache, _) = send(&gw, &body, &[]).await;
    assert_eq!((status, cache.as_str()), (400, "miss"));
    let (status, cache, _) = send(&gw, &body, &[]).await;
    assert_eq!(
        (status, cache.as_str()),
        (200, "miss"),
        "the error must not be served"
    );
    let (status, cache, _) = send(&gw, &body, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(mock.request_count(), 2);
}

/// A chat completion whose content is `size` bytes.
fn large_answer(size: usize) -> Value {
    json!({
        "id": "chatcmpl-large", "object": "chat.completion", "created": 1700000000,
        "model": "cached",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "x".repeat(size)}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
}

#[tokio::test]
async fn the_memory_bound_holds_under_many_large_answers() {
    let mock = MockProvider::start().await.unwrap();
    mock.set_record(false);
    mock.set_default(Behaviour::json(200, large_answer(50_000)));
    let max_bytes = 300_000;
    let gw = GatewayProcess::start(&config(
        &mock,
        "cache: {ttl: 1h}",
        &format!("cache: {{max_bytes: {max_bytes}, max_entry_bytes: 100000}}\n"),
    ));
    for n in 0..30 {
        let (status, cache, _) = send(&gw, &chat("cached", &format!("prompt {n}")), &[]).await;
        assert_eq!((status, cache.as_str()), (200, "miss"));
        let held = metric(&gw, "dragoman_cache_bytes", &[])
            .await
            .unwrap_or(-1.0);
        assert!(
            held > 0.0 && held <= max_bytes as f64,
            "{held} bytes held after {n}"
        );
    }
    assert_eq!(mock.request_count(), 30);
    // The newest answer is still there; the oldest was evicted to make room.
    let (_, cache, _) = send(&gw, &chat("cached", "prompt 29"), &[]).await;
    assert_eq!(cache, "hit");
    let (_, cache, _) = send(&gw, &chat("cached", "prompt 0"), &[]).await;
    assert_eq!(cache, "miss");
    // An answer above max_entry_bytes is not stored at all.
    mock.set_default(Behaviour::json(200, large_answer(150_000)));
    let (_, cache, _) = send(&gw, &chat("cached", "huge"), &[]).await;
    assert_eq!(cache, "miss");
    let (_, cache, _) = send(&gw, &chat("cached", "huge"), &[]).await;
    assert_eq!(cache, "miss");
}

#[tokio::test]
async fn an_answer_expires_after_its_ttl() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 300ms}", ""));
    let body = chat("cached", "short lived");
    let started = Instant::now();
    let (_, cache, _) = send(&gw, &body, &[]).await;
    assert_eq!(cache, "miss");
    // Served from the cache until the ttl passes, then fetched again.
    let deadline = started + Duration::from_secs(10);
    let mut hits = 0;
    loop {
        let (_, cache, _) = send(&gw, &body, &[]).await;
        if cache == "miss" {
            break;
        }
        assert_eq!(cache, "hit");
        hits += 1;
        assert!(Instant::now() < deadline, "never expired");
        tokio::task::yield_now().await;
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(hits > 0, "the answer was never served from the cache");
    assert_eq!(mock.request_count(), 2);
}

#[test]
fn cache_settings_are_checked_at_start() {
    for (config, key) in [
        ("cache: {max_bytes: 0}\n", "cache.max_bytes"),
        (
            "cache: {max_bytes: 1000, max_entry_bytes: 2000}\n",
            "cache.max_entry_bytes",
        ),
        ("cache: {max_byte: 1}\n", "max_byte"),
        ("cache: {store: redis}\n", "cache.store"),
    ] {
        let file = format!("providers:\n  p: {{ kind: openai, api_key: k, endpoints: [\"http://127.0.0.1:9/v1\"] }}\n{config}");
        let path =
            std::env::temp_dir().join(format!("dragoman-cache-{}-{key}.yaml", std::process::id()));
        std::fs::write(&path, file).expect("write config");
        let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap_or_default()], &[]);
        let _ = std::fs::remove_file(&path);
        assert!(!ok && out.contains(key), "{config}: {out}");
    }
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let mock = MockProvider::start().await.unwrap();
    // Slow enough that every request arrives while the first is upstream.
    mock.set_default(Behaviour::delay(
        Duration::from_millis(1500),
        Behaviour::Reply,
    ));
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    let body = chat("cached", "all at once");
    let answers = futures_util::future::join_all((0..8).map(|_| send(&gw, &body, &[]))).await;
    assert!(
        answers.iter().all(|(status, _, _)| *status == 200),
        "{answers:?}"
    );
    let misses = answers
        .iter()
        .filter(|(_, cache, _)| cache == "miss")
        .count();
    let hits = answers
        .iter()
        .filter(|(_, cache, _)| cache == "hit")
        .count();
    assert_eq!((misses, hits), (1, 7), "{answers:?}");
    assert!(answers.iter().all(|(_, _, text)| *text == answers[0].2));
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn waiting_misses_go_upstream_when_the_leader_fails() {
    let mock = MockProvider::start().await.unwrap();
    // The first request fails slowly; the ones waiting for it then ask for themselves.
    mock.push(Behaviour::delay(
        Duration::from_millis(700),
        Behaviour::json(
            400,
            json!({"error": {"message": "no", "type": "invalid_request_error"}}),
        ),
    ));
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    let body = chat("cached", "leader fails");
    let answers = futures_util::future::join_all((0..4).map(|_| send(&gw, &body, &[]))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 400], "{answers:?}");
    // Each waiting request asked for itself, unless another's answer was stored first.
    let mut asked = 0;
    for (status, cache, text) in &answers {
        assert!(
            cache == "miss" || (*status == 200 && cache == "hit"),
            "{answers:?}"
        );
        asked += usize::from(cache == "miss");
        if *status == 200 {
            let answer: Value = serde_json::from_str(text).expect("a chat completion");
            assert_eq!(
                answer["choices"][0]["message"]["content"],
                "mock reply to: leader fails"
            );
        }
    }
    assert_eq!(mock.request_count(), asked);
    assert!(asked >= 2, "{answers:?}");
}

/// The events of an SSE body, each `data:` payload.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn streams_are_answered_from_whole_answers_and_stored_whole() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    // Whole first, then streamed with usage.
    let (_, cache, whole) = send(&gw, &chat("cached", "whole first"), &[]).await;
    assert_eq!(cache, "miss");
    let whole: Value = serde_json::from_str(&whole).expect("json answer");
    let mut streamed: Value =
        serde_json::from_str(&chat("cached", "whole first")).unwrap_or_default();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, cache, events) = send(&gw, &streamed.to_string(), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    let events = sse_data(&events);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        content,
        whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
    );
    assert_eq!(
        chunks.last().map(|c| c["usage"].clone()),
        Some(whole["usage"].clone())
    );
    assert_eq!(mock.request_count(), 1);
    // Without include_usage, no usage chunk.
    streamed["stream_options"] = json!({"include_usage": false});
    let (_, cache, events) = send(&gw, &streamed.to_string(), &[]).await;
    assert_eq!(cache, "hit");
    assert!(!events.contains("\"usage\""), "{events}");

    // Streamed first, then whole.
    let mut first: Value =
        serde_json::from_str(&chat("cached", "stream first")).unwrap_or_default();
    first["stream"] = json!(true);
    let (_, cache, events) = send(&gw, &first.to_string(), &[]).await;
    assert_eq!(cache, "miss");
    let streamed_content: String = sse_data(&events)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(!streamed_content.is_empty());
    let (status, cache, whole) = send(&gw, &chat("cached", "stream first"), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    let whole: Value = serde_json::from_str(&whole).expect("json answer");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        json!(streamed_content)
    );
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn the_openai_sdk_consumes_answers_from_the_cache() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", ""));
    let report = run_sdk_tests("test_sdk_cache.py", &gw, &[]).await;
    assert!(
        report.contains("Ran 2 tests") && report.contains("OK"),
        "{report}"
    );
    assert_eq!(mock.request_count(), 2);
}

/// Polls until the store holds `n` cache entries (the gateway writes them in the background),
/// each with a ttl.
async fn wait_for_entries(server: &RedisServer, n: usize) {
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("dragoman:cache:*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        if keys.len() == n {
            for key in &keys {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("PTTL");
                assert!(ttl > 0 && ttl <= 3_600_000, "{key}: ttl {ttl}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} entries in redis, not {n}",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_gateways_serve_each_others_entries_through_redis() {
    let redis = RedisServer::start();
    let mock = MockProvider::start().await.unwrap();
    let top = format!(
        "limits: {{ store: \"{}\" }}\ncache: {{ store: redis }}\n",
        redis.url()
    );
    let a = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", &top));
    let b = GatewayProcess::start(&config(&mock, "cache: {ttl: 1h}", &top));
    let first = chat("cached", "shared from a");
    let (_, cache, from_a) = send(&a, &first, &[]).await;
    assert_eq!(cache, "miss");
    wait_for_entries(&redis, 1).await;
    let (status, cache, from_b) = send(&b, &first, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(from_b, from_a);
    // And the other way round.
    let second = chat("cached", "shared from b");
    let (_, cache, _) = send(&b, &second, &[]).await;
    assert_eq!(cache, "miss");
    wait_for_entries(&redis, 2).await;
    let (_, cache, _) = send(&a, &second, &[]).await;
    assert_eq!(cache, "hit");
    assert_eq!(mock.request_count(), 2);
}

/// An Anthropic-kind and an OpenAI-kind provider on `mock`, each with a model that caches.
fn messages_config(mock: &MockProvider) -> String {
    format!(
        "providers:\n  ant: {{ kind: anthropic, api_key: key-a, endpoints: [\"{url}\"] }}\n  \
         oai: {{ kind: openai, api_key: key-b, endpoints: [\"{url}/v1\"] }}\n\
         models:\n  claude: {{ provider: ant, cache: {{ttl: 1h}} }}\n  \
         gpt: {{ provider: oai, cache: {{ttl: 1h}} }}\n",
        url = mock.url()
    )
}

fn messages(model: &str, prompt: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

/// Sends an Anthropic Messages request; returns (status, x-dragoman-cache, body).
async fn send_messages(gw: &GatewayProcess, body: &Value) -> (u16, String, String) {
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let cache = header(resp.headers(), "x-dragoman-cache").to_string();
    (status, cache, resp.text().await.expect("body"))
}

/// The events of an Anthropic Messages stream, checked to be well formed: each `event: NAME`
/// with `data.type` NAME; `message_start` first, then blocks started, streamed and stopped in
/// index order, then `message_delta` and `message_stop`.
fn anthropic_stream(text: &str) -> Vec<Value> {
    assert!(text.ends_with("\n\n"), "{text}");
    let events: Vec<Value> = text
        .trim_end_matches("\n\n")
        .split("\n\n")
        .map(|raw| {
            let (name, data) = raw.split_once('\n').expect("event and data lines");
            let name = name.strip_prefix("event: ").expect("an event name");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data"))
                .expect("JSON data");
            assert_eq!(data["type"], name, "{raw}");
            data
        })
        .filter(|e| e["type"] != "ping")
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{text}");
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["message_delta", "message_stop"],
        "{text}"
    );
    let start = &events[0]["message"];
    assert_eq!(
        (&start["content"], &start["stop_reason"]),
        (&json!([]), &Value::Null)
    );
    let (mut open, mut next) = (None, 0);
    for event in &events[1..events.len() - 2] {
        match event["type"].as_str() {
            Some("content_block_start") => {
                assert_eq!(
                    (open, event["index"].as_u64()),
                    (None, Some(next)),
                    "{text}"
                );
                open = Some(next);
                next += 1;
            }
            Some("content_block_delta") => assert_eq!(event["index"].as_u64(), open, "{text}"),
            Some("content_block_stop") => {
                assert_eq!(event["index"].as_u64(), open, "{text}");
                open = None;
            }
            other => panic!("unexpected {other:?} in {text}"),
        }
    }
    assert_eq!(open, None, "{text}");
    events
}

/// The text a stream's `text_delta`s carry.
fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["delta"]["type"] == "text_delta")
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect()
}

/// Streamed `/v1/messages` requests to `model` (on `messages_config`'s mock): a whole answer
/// serves a later stream, and a stream a later whole answer and stream.
async fn anthropic_streams_use_the_cache(model: &str) {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&messages_config(&mock));
    let (status, cache, whole) = send_messages(&gw, &messages(model, "whole first", false)).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{whole}");
    let whole: Value = serde_json::from_str(&whole).expect("a message");
    let (status, cache, events) = send_messages(&gw, &messages(model, "whole first", true)).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{events}");
    let events = anthropic_stream(&events);
    assert_eq!(json!(streamed_text(&events)), whole["content"][0]["text"]);
    assert_eq!(events[0]["message"]["id"], whole["id"]);
    assert_eq!(
        events[0]["message"]["usage"]["input_tokens"],
        whole["usage"]["input_tokens"]
    );
    let delta = &events[events.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], whole["stop_reason"]);
    assert_eq!(
        delta["usage"]["output_tokens"],
        whole["usage"]["output_tokens"]
    );
    assert_eq!(mock.request_count(), 1, "a hit must not reach the upstream");

    // Streamed first: a later whole request and a later stream hit.
    let (status, cache, events) = send_messages(&gw, &messages(model, "stream first", true)).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{events}");
    let streamed = streamed_text(&anthropic_stream(&events));
    assert_eq!(streamed, "mock reply to: stream first");
    assert_eq!(mock.request_count(), 2);
    let (status, cache, whole) = send_messages(&gw, &messages(model, "stream first", false)).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{whole}");
    let whole: Value = serde_json::from_str(&whole).expect("a message");
    assert_eq!(whole["type"], "message");
    assert_eq!(whole["role"], "assistant");
    assert_eq!(
        whole["content"],
        json!([{"type": "text", "text": streamed}])
    );
    assert_eq!(whole["stop_reason"], "end_turn");
    assert!(whole["usage"]["output_tokens"].is_u64(), "{whole}");
    let (status, cache, again) = send_messages(&gw, &messages(model, "stream first", true)).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(streamed_text(&anthropic_stream(&again)), streamed);
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn anthropic_streams_use_the_cache_over_an_anthropic_upstream() {
    anthropic_streams_use_the_cache("claude").await;
}

#[tokio::test]
async fn anthropic_streams_use_the_cache_over_an_openai_upstream() {
    anthropic_streams_use_the_cache("gpt").await;
}

#[tokio::test]
async fn the_anthropic_sdk_consumes_streams_from_the_cache() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&messages_config(&mock));
    let report = run_sdk_tests("test_sdk_cache_anthropic.py", &gw, &[]).await;
    assert!(
        report.contains("Ran 2 tests") && report.contains("OK"),
        "{report}"
    );
    assert_eq!(mock.request_count(), 2);
}

/// A model that caches, with a fallback, each on a mock of its own.
fn fallback_config(primary: &MockProvider, fallback: &MockProvider) -> String {
    format!(
        "providers:\n  pa: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"{}/v1\"] }}\n  \
         pb: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"{}/v1\"] }}\n\
         models:\n  cached: {{ provider: pa, cache: {{ttl: 1h}}, fallbacks: [b], fallback_on: [server_error] }}\n  \
         b: {{ provider: pb }}\n",
        primary.url(),
        fallback.url()
    )
}

#[tokio::test]
async fn a_fallbacks_answer_says_what_the_cache_did_and_is_not_stored() {
    let (primary, fallback) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    primary.set_default(Behaviour::json(
        503,
        json!({"error": {"message": "overloaded", "type": "server_error"}}),
    ));
    let gw = GatewayProcess::start(&fallback_config(&primary, &fallback));
    let body = chat("cached", "primary down");
    for n in 1..=2 {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(header(resp.headers(), "x-dragoman-model"), "b");
        // Another model's answer: not stored under `cached`'s key, so the same request misses.
        assert_eq!(
            header(resp.headers(), "x-dragoman-cache"),
            "miss",
            "request {n}"
        );
        assert_eq!((primary.request_count(), fallback.request_count()), (n, n));
    }
    let (status, cache, _) = send(&gw, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!((status, cache.as_str()), (200, "bypass"));
    assert_eq!(fallback.request_count(), 3);
}

#[tokio::test]
async fn a_model_with_fallbacks_caches_what_it_answers_itself() {
    let (primary, fallback) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let gw = GatewayProcess::start(&fallback_config(&primary, &fallback));
    let (status, cache, first) = send(&gw, &chat("cached", "primary up"), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "miss"), "{first}");
    let (status, cache, again) = send(&gw, &chat("cached", "primary up"), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"));
    assert_eq!(again, first);
    // A stream through the dispatcher is stored whole too.
    let mut streamed: Value = serde_json::from_str(&chat("cached", "streamed")).unwrap_or_default();
    streamed["stream"] = json!(true);
    let (status, cache, _) = send(&gw, &streamed.to_string(), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "miss"));
    let (status, cache, whole) = send(&gw, &chat("cached", "streamed"), &[]).await;
    assert_eq!((status, cache.as_str()), (200, "hit"), "{whole}");
    assert_eq!((primary.request_count(), fallback.request_count()), (2, 0));
}

#[tokio::test]
async fn errors_the_gateway_writes_say_what_the_cache_did() {
    // Nothing listens on either port: the gateway answers 502 itself, in the client's own
    // session (no fallbacks) and through the dispatcher (a fallback that fails too).
    let (down, also_down) = (free_port(), free_port());
    let gw = GatewayProcess::start(&format!(
        "providers:\n  pa: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"http://127.0.0.1:{down}/v1\"] }}\n  \
         pb: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"http://127.0.0.1:{also_down}/v1\"] }}\n\
         models:\n  cached: {{ provider: pa, cache: {{ttl: 1h}} }}\n  \
         chained: {{ provider: pa, cache: {{ttl: 1h}}, fallbacks: [b] }}\n  b: {{ provider: pb }}\n"
    ));
    for model in ["cached", "chained"] {
        let (status, cache, body) = send(&gw, &chat(model, "nobody home"), &[]).await;
        assert_eq!((status, cache.as_str()), (502, "miss"), "{model}: {body}");
        let (status, cache, body) = send(
            &gw,
            &chat(model, "nobody home"),
            &[("cache-control", "no-store")],
        )
        .await;
        assert_eq!((status, cache.as_str()), (502, "bypass"), "{model}: {body}");
    }
}
