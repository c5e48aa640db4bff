//! Circuit scope and probes, end to end: a 429 sets one model aside on an instance for its
//! `Retry-After` without closing the instance to the provider's other models; an abandoned
//! half-open probe frees its slot at once. And Azure's streams reach OpenAI clients as one
//! consistent chunk stream.
mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// POSTs a chat request for `model`; (status, body).
async fn chat(gw: &GatewayProcess, model: &str) -> (u16, Value) {
    let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &chat_body(model)).await;
    (status, body)
}

fn posts(mock: &MockProvider) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
}

/// A 429 with `Retry-After: retry_after`.
fn rate_limited(retry_after: &str) -> Behaviour {
    Behaviour::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
        headers: vec![("retry-after".into(), retry_after.into())],
    }
}

/// One OpenAI-kind provider `p` on `mock`, with `extra` provider settings, and `models`.
fn one_instance(mock: &MockProvider, extra: &str, models: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"{}/v1\"]{extra} }}\nmodels:\n{models}",
        mock.url()
    ))
}

#[tokio::test]
async fn a_rate_limited_model_leaves_the_instance_to_the_providers_other_models() {
    let mock = MockProvider::start().await.unwrap();
    let gw = one_instance(
        &mock,
        "",
        "  x: { provider: p, model: up-x }\n  y: { provider: p, model: up-y }\n",
    );
    mock.push(rate_limited("30"));
    let (status, body) = chat(&gw, "x").await;
    assert_eq!(status, 429, "{body}");

    // The provider rate limits x, not the instance: y is served by it at once.
    let (status, body) = chat(&gw, "y").await;
    assert_eq!(status, 200, "y shut out by x's rate limit: {body}");
    assert_eq!(posts(&mock), 2);
    let last = mock.last_request().unwrap();
    assert_eq!(last.json()["model"], "up-y");

    // x itself is set aside on that instance for its Retry-After: nothing reaches the mock, and
    // the client hears what the provider said, a 429 with what is left of its Retry-After.
    let (status, headers, body) = post_json(&gw.url("/v1/chat/completions"), &chat_body("x")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let wait: u64 = header(&headers, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((29..=30).contains(&wait), "Retry-After: {wait}");
    assert_eq!(posts(&mock), 2, "a set-aside model reached the instance");
    // And y still goes.
    let (status, _) = chat(&gw, "y").await;
    assert_eq!(status, 200);
    assert_eq!(posts(&mock), 3);
}

#[tokio::test]
async fn a_set_aside_model_falls_back_as_rate_limited() {
    let mock = MockProvider::start().await.unwrap();
    let gw = one_instance(
        &mock,
        "",
        "  x: { provider: p, model: up-x, fallbacks: [y], fallback_on: [rate_limited] }\n  y: { provider: p, model: up-y }\n",
    );
    mock.push(rate_limited("30"));
    // The upstream's own 429 falls back to y.
    let (status, body) = chat(&gw, "x").await;
    assert_eq!(status, 200, "{body}");
    // Then x is set aside: the gateway's 429 for it is a rate limit too, and falls back the same.
    let (status, body) = chat(&gw, "x").await;
    assert_eq!(status, 200, "{body}");
    let models: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| r.json()["model"].clone())
        .collect();
    assert_eq!(models, ["up-x", "up-y", "up-y"]);
}

#[tokio::test]
async fn a_rate_limit_without_retry_after_sets_nothing_aside() {
    let mock = MockProvider::start().await.unwrap();
    let gw = one_instance(&mock, "", "  x: { provider: p, model: up-x }\n");
    mock.push(Behaviour::json(
        429,
        json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
    ));
    let (status, body) = chat(&gw, "x").await;
    assert_eq!(status, 429, "{body}");
    // Nothing said how long the quota lasts: the next request goes to the instance as usual.
    let (status, body) = chat(&gw, "x").await;
    assert_eq!(
        status, 200,
        "a 429 without Retry-After shut the model out: {body}"
    );
    assert_eq!(posts(&mock), 2);
}

#[tokio::test]
async fn retry_after_one_second_sets_the_model_aside_for_one_second() {
    let mock = MockProvider::start().await.unwrap();
    // The default 30 s cooldown: a 429 must not be held that long.
    let gw = one_instance(&mock, "", "  x: { provider: p, model: up-x }\n");
    mock.push(rate_limited("1"));
    let sent = Instant::now();
    let (status, body) = chat(&gw, "x").await;
    let answered = Instant::now();
    assert_eq!(status, 429, "{body}");

    // Held right after.
    let (status, body) = chat(&gw, "x").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(posts(&mock), 1);

    // Lifted after the second: poll, bounded.
    let served = loop {
        let (status, body) = chat(&gw, "x").await;
        let now = Instant::now();
        if status == 200 {
            break now;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            now < answered + Duration::from_millis(1500),
            "still set aside {:?} after a 429 with Retry-After: 1",
            now - sent
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        served >= sent + Duration::from_secs(1),
        "served again {:?} after the 429, before its Retry-After",
        served - sent
    );
    assert_eq!(
        posts(&mock),
        2,
        "only the request after the pause got through"
    );
}

/// Trips the single instance's circuit with a 500, lets the half-open probe hang until the
/// client gives up on it, and returns when the probe went out.
async fn trip_and_abandon_the_probe(
    gw: &GatewayProcess,
    mock: &MockProvider,
    model: &str,
) -> Instant {
    mock.push(Behaviour::json(
        500,
        json!({"error": {"message": "boom", "type": "server_error"}}),
    ));
    let (status, body) = chat(gw, model).await;
    assert_eq!(status, 500, "{body}");
    mock.push(Behaviour::delay(Duration::from_secs(30), Behaviour::Reply));
    let closed_before = mock.connections_closed_early();

    // While the circuit is open the gateway answers 503 itself; the first request after the
    // cooldown is the probe, which hangs, and the client leaves it.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .no_proxy()
        .build()
        .unwrap();
    let limit = Instant::now() + Duration::from_secs(10);
    let probe_sent = loop {
        let sent = Instant::now();
        match impatient
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body(model))
            .send()
            .await
        {
            Ok(resp) => assert_eq!(resp.status(), 503),
            Err(e) => {
                assert!(e.is_timeout(), "{e}");
                break sent;
            }
        }
        assert!(
            Instant::now() < limit,
            "the circuit never let a probe through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The gateway gives the upstream call up with its client.
    let limit = Instant::now() + Duration::from_secs(3);
    while mock.connections_closed_early() == closed_before {
        assert!(
            Instant::now() < limit,
            "the abandoned probe was never cancelled upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probe_sent
}

#[tokio::test]
async fn an_abandoned_probe_frees_the_circuit_for_the_next_request() {
    let mock = MockProvider::start().await.unwrap();
    let gw = one_instance(
        &mock,
        ", circuit_breaker: { consecutive_failures: 1, cooldown: 2s }",
        // `plain` is proxied in the client's own session, `hedged` by the dispatcher's legs.
        "  plain: { provider: p }\n  hedged: { provider: p, hedge: { after: 20s } }\n",
    );
    for model in ["plain", "hedged"] {
        let probe_sent = trip_and_abandon_the_probe(&gw, &mock, model).await;
        // The instance has recovered: the next request is its new probe and is served, long
        // before the abandoned one's slot could have timed out (2 s after it was claimed).
        let served = loop {
            let (status, body) = chat(&gw, model).await;
            let now = Instant::now();
            if status == 200 {
                break now;
            }
            assert_eq!(status, 503, "{model}: {body}");
            assert!(
                now < probe_sent + Duration::from_millis(1500),
                "{model}: the abandoned probe still holds the circuit {:?} after it went",
                now - probe_sent
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(served < probe_sent + Duration::from_millis(1500));
        // And the probe's success closed the circuit.
        let (status, _) = chat(&gw, model).await;
        assert_eq!(status, 200, "{model}");
    }
}

/// The events of an SSE fixture, each with its blank line.
fn fixture_events(name: &str) -> Vec<String> {
    let path = format!("{}/tests/fixtures/azure/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| format!("{e}\n\n"))
        .collect()
}

/// Streams `events` from an Azure deployment to an OpenAI client; returns the `data:` payloads
/// the client got, `[DONE]` included.
async fn azure_stream_to_openai_client(events: Vec<String>) -> Vec<String> {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  az: {{ kind: azure-openai, endpoints: [\"{}\"], api_key: k, api_version: \"2024-10-21\" }}\nmodels:\n  m: {{ provider: az, model: my-deployment }}\n",
        mock.url()
    ));
    mock.push(Behaviour::Sse {
        events,
        interval: Duration::ZERO,
        hold_after: None,
    });
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(
            &json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("stream never ended")
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Checks that `data` is one consistent chunk stream: every chunk has the same non-empty id and
/// at least one choice, except a usage-only chunk (no choices, a usage object, the same id); it
/// ends with `[DONE]`. Returns the chunks.
fn consistent_chunks(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:#?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    assert!(!chunks.is_empty());
    let id = chunks[0]["id"].as_str().unwrap_or_default().to_owned();
    assert!(!id.is_empty(), "first chunk without an id: {}", chunks[0]);
    for chunk in &chunks {
        assert_eq!(
            chunk["id"],
            id.as_str(),
            "another id in the stream: {chunk}"
        );
        let choices = chunk["choices"].as_array().expect("choices");
        if choices.is_empty() {
            assert!(
                chunk["usage"].is_object(),
                "a chunk without choices: {chunk}"
            );
        }
    }
    chunks
}

fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn azure_stream_reaches_an_openai_client_as_one_chunk_stream() {
    let data = azure_stream_to_openai_client(fixture_events("stream_text.sse")).await;
    let chunks = consistent_chunks(&data);
    assert_eq!(
        content(&chunks),
        "A private endpoint keeps traffic off the internet."
    );
    // Every real chunk arrives, the usage-only one intact.
    assert_eq!(chunks.len(), 6);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 23);
    assert_eq!(usage["model"], "gpt-4o-2024-08-06");
}

#[tokio::test]
async fn azure_async_filter_annotations_do_not_reach_an_openai_client() {
    // Cut into pieces that end anywhere, not at event boundaries.
    let text: String = fixture_events("stream_async_filter.sse").concat();
    let pieces: Vec<String> = text
        .as_bytes()
        .chunks(37)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let data = azure_stream_to_openai_client(pieces).await;
    let chunks = consistent_chunks(&data);
    assert_eq!(content(&chunks), "Color is light we see.");
    assert_eq!(chunks.len(), 6);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");

    // A filter verdict is no annotation: it reaches the client, under the stream's id.
    let data =
        azure_stream_to_openai_client(fixture_events("stream_async_filter_blocked.sse")).await;
    let chunks = consistent_chunks(&data);
    assert_eq!(content(&chunks), "Here are the lyrics");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(last["model"], "gpt-35-turbo");
    assert_eq!(last["object"], "chat.completion.chunk");
}

#[tokio::test]
async fn a_cut_azure_stream_still_ends_with_an_error_event() {
    let mut events = fixture_events("stream_text.sse");
    events.truncate(3);
    let data = azure_stream_to_openai_client(events).await;
    let last: Value = serde_json::from_str(data.last().expect("some data")).unwrap();
    assert_eq!(last["error"]["code"], "stream_truncated", "{data:#?}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    // The prompt filter chunk is gone, the real ones arrived.
    assert_eq!(data.len(), 3, "{data:#?}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["id"], "chatcmpl-AZ1x2y3z4w5v6u7t8s9r0q");
}
