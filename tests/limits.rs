//! Rate limits: a key at its limit gets 429s (with `Retry-After` and OpenAI's `x-ratelimit-*`
//! headers) while another key on the same model is unaffected; token estimates are refused up
//! front when they cannot fit and corrected by the usage the answer reports (streams included,
//! with the usage chunk the gateway asked for kept from the client); concurrency; and two gateway
//! processes sharing their buckets through a real Redis server, serving on when it stops.
mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// Sends a chat request with `key`; (status, headers, body text).
async fn send(
    gw: &GatewayProcess,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {key}"))
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

/// The most requests a bucket of `per_minute` admits from `started` until now: its capacity, and
/// what it refilled meanwhile (rounded up).
fn within_refill(per_minute: usize, started: Instant) -> usize {
    let refilled = started.elapsed().as_secs_f64() * per_minute as f64 / 60.0;
    per_minute + refilled.ceil() as usize
}

fn number(headers: &reqwest::header::HeaderMap, name: &str) -> i64 {
    header(headers, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {:?}", headers.get(name)))
}

fn provider(kind: &str, mock: &MockProvider) -> String {
    let base = if kind == "openai" {
        format!("{}/v1", mock.url())
    } else {
        mock.url()
    };
    format!("{{ kind: {kind}, api_key: upstream-key, endpoints: [\"{base}\"] }}")
}

#[tokio::test]
async fn a_key_at_its_request_limit_gets_429s_and_another_key_is_unaffected() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  small: {{ key: k-small, limits: {{ rpm: 5 }} }}\n  big: {{ key: k-big, limits: {{ rpm: 1000 }} }}\n",
        provider("openai", &mock)
    ));
    let body = chat("m", json!({}));
    let started = Instant::now();
    let mut ok = 0;
    let mut remaining = Vec::new();
    for i in 0..15 {
        let (status, headers, text) = send(&gw, "/v1/chat/completions", "k-small", &body).await;
        match status {
            200 => {
                ok += 1;
                assert_eq!(number(&headers, "x-ratelimit-limit-requests"), 5);
                remaining.push(number(&headers, "x-ratelimit-remaining-requests"));
                assert!(!header(&headers, "x-ratelimit-reset-requests").is_empty());
            }
            429 => {
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{text}");
                assert!(
                    error["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("key `small`"),
                    "{text}"
                );
                let retry: u64 = header(&headers, "retry-after").parse().unwrap();
                assert!((1..=12).contains(&retry), "retry-after {retry}");
            }
            other => panic!("request {i}: {other} {text}"),
        }
        // The other key, on the same model, is never limited.
        let (status, headers, _) = send(&gw, "/v1/chat/completions", "k-big", &body).await;
        assert_eq!(status, 200);
        assert_eq!(number(&headers, "x-ratelimit-limit-requests"), 1000);
    }
    // 5 per minute: the bucket's 5, plus at most one refilled while the test ran.
    assert!(
        (5..=within_refill(5, started)).contains(&ok),
        "{ok} admitted"
    );
    assert_eq!(remaining[..4], [4, 3, 2, 1]);
    // Every admitted request, and only those, reached the upstream.
    assert_eq!(mock.request_count(), ok + 15);
}

#[tokio::test]
async fn model_and_provider_limits_apply_over_all_keys() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {}\n  q:\n    kind: openai\n    api_key: upstream-key\n    endpoints: [\"{}/v1\"]\n    limits: {{ rpm: 2 }}\n\
         models:\n  m: {{ provider: p, limits: {{ rpm: 3 }} }}\n  n: {{ provider: q }}\n\
         keys:\n  a: {{ key: k-a }}\n  b: {{ key: k-b }}\n",
        provider("openai", &mock),
        mock.url()
    ));
    let started = Instant::now();
    let mut ok = 0;
    for i in 0..8 {
        let key = if i % 2 == 0 { "k-a" } else { "k-b" };
        let (status, _, text) = send(&gw, "/v1/chat/completions", key, &chat("m", json!({}))).await;
        assert!(status == 200 || status == 429, "{status} {text}");
        ok += usize::from(status == 200);
    }
    assert!(
        (3..=within_refill(3, started)).contains(&ok),
        "model m admitted {ok}"
    );
    let started = Instant::now();
    let mut ok = 0;
    for _ in 0..6 {
        let (status, _, text) =
            send(&gw, "/v1/chat/completions", "k-a", &chat("n", json!({}))).await;
        assert!(status == 200 || status == 429, "{status} {text}");
        if status == 429 {
            assert!(text.contains("provider `q`"), "{text}");
        }
        ok += usize::from(status == 200);
    }
    assert!(
        (2..=within_refill(2, started)).contains(&ok),
        "provider q admitted {ok}"
    );
}

#[tokio::test]
async fn a_prompt_too_large_for_the_token_limit_is_refused_up_front() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  a: {{ key: k-a, limits: {{ tpm: 1000 }} }}\n",
        provider("openai", &mock)
    ));
    let huge = "word ".repeat(2000);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": huge}]});
    let (status, headers, text) = send(&gw, "/v1/chat/completions", "k-a", &body).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("too large"), "{text}");
    assert!(headers.get("retry-after").is_none(), "waiting cannot help");
    // So is one that asks for more output than the limit allows.
    let body = chat("m", json!({"max_tokens": 5000}));
    let (status, _, text) = send(&gw, "/v1/chat/completions", "k-a", &body).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(mock.request_count(), 0);
}

/// With `tpm: 1000`, a request asking for 600 output tokens is charged about 625 up front. Two
/// in a row fit only if the first is corrected to the 15 tokens the mock reports using.
async fn corrected_by_reported_usage(kind: &str, path: &str, body: Value, check: impl Fn(&str)) {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  a: {{ key: k-a, limits: {{ tpm: 1000 }} }}\n",
        provider(kind, &mock)
    ));
    let (status, headers, text) = send(&gw, path, "k-a", &body).await;
    assert_eq!(status, 200, "{text}");
    check(&text);
    let first = number(&headers, "x-ratelimit-remaining-tokens");
    assert!((300..=400).contains(&first), "after the estimate: {first}");
    assert_eq!(number(&headers, "x-ratelimit-limit-tokens"), 1000);
    let (status, headers, text) = send(&gw, path, "k-a", &body).await;
    assert_eq!(status, 200, "second request: {text}");
    let second = number(&headers, "x-ratelimit-remaining-tokens");
    // 1000 - 15 used - the second estimate, give or take the refill.
    assert!(
        (second - (first - 15)).abs() <= 30,
        "first {first}, second {second}"
    );
}

#[tokio::test]
async fn token_estimates_are_corrected_by_the_usage_of_a_whole_answer() {
    corrected_by_reported_usage(
        "openai",
        "/v1/chat/completions",
        chat("m", json!({"max_tokens": 600})),
        |_| {},
    )
    .await;
    corrected_by_reported_usage(
        "anthropic",
        "/v1/messages",
        chat("m", json!({"max_tokens": 600})),
        |_| {},
    )
    .await;
    corrected_by_reported_usage(
        "gemini",
        "/v1/chat/completions",
        chat("m", json!({"max_tokens": 600})),
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn token_estimates_are_corrected_by_the_usage_of_a_stream() {
    // OpenAI upstream, passed through: the gateway asks for the usage chunk and hides it.
    let hidden = |text: &str| {
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(
            !text.contains("\"choices\":[]"),
            "usage chunk reached the client: {text}"
        );
        assert!(!text.contains("prompt_tokens"), "{text}");
    };
    corrected_by_reported_usage(
        "openai",
        "/v1/chat/completions",
        chat("m", json!({"max_tokens": 600, "stream": true})),
        hidden,
    )
    .await;
    // A client that asked for usage gets it, as it asked.
    corrected_by_reported_usage(
        "openai",
        "/v1/chat/completions",
        chat(
            "m",
            json!({"max_tokens": 600, "stream": true, "stream_options": {"include_usage": true}}),
        ),
        |text| assert!(text.contains("\"choices\":[],"), "{text}"),
    )
    .await;
    // Translated streams, and Anthropic clients on Anthropic upstreams.
    corrected_by_reported_usage(
        "anthropic",
        "/v1/chat/completions",
        chat("m", json!({"max_tokens": 600, "stream": true})),
        |text| assert!(!text.contains("prompt_tokens"), "{text}"),
    )
    .await;
    corrected_by_reported_usage(
        "gemini",
        "/v1/chat/completions",
        chat("m", json!({"max_tokens": 600, "stream": true})),
        |_| {},
    )
    .await;
    corrected_by_reported_usage(
        "anthropic",
        "/v1/messages",
        chat("m", json!({"max_tokens": 600, "stream": true})),
        |text| assert!(text.contains("message_stop"), "{text}"),
    )
    .await;
    corrected_by_reported_usage(
        "openai",
        "/v1/messages",
        chat("m", json!({"max_tokens": 600, "stream": true})),
        |text| assert!(text.contains("message_stop"), "{text}"),
    )
    .await;
}

#[tokio::test]
async fn the_upstream_is_asked_for_stream_usage_only_when_tokens_are_counted() {
    let mock = MockProvider::start().await.unwrap();
    // Metrics count every stream's tokens: with them off, only a `tpm` asks for usage.
    let gw = GatewayProcess::start(&format!(
        "metrics: false\nproviders:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  counted: {{ key: k-c, limits: {{ tpm: 100000 }} }}\n  free: {{ key: k-f }}\n",
        provider("openai", &mock)
    ));
    let body = chat("m", json!({"stream": true}));
    send(&gw, "/v1/chat/completions", "k-c", &body).await;
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    send(&gw, "/v1/chat/completions", "k-f", &body).await;
    let sent = mock.last_request().unwrap().json();
    assert!(sent.get("stream_options").is_none(), "{sent}");
    // A client's own stream_options are left as they are.
    let own = chat(
        "m",
        json!({"stream": true, "stream_options": {"include_usage": false}}),
    );
    let (_, _, text) = send(&gw, "/v1/chat/completions", "k-c", &own).await;
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["stream_options"], json!({"include_usage": false}));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn concurrent_requests_over_the_limit_are_refused_until_one_ends() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  a: {{ key: k-a, limits: {{ concurrency: 1 }} }}\n",
        provider("openai", &mock)
    ));
    mock.push(Behaviour::Sse {
        events: vec![
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ],
        interval: Duration::ZERO,
        hold_after: Some(1),
    });
    let stream = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer k-a")
        .json(&chat("m", json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (status, _, text) = send(&gw, "/v1/chat/completions", "k-a", &chat("m", json!({}))).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("concurrent"), "{text}");
    mock.release();
    let rest = stream.text().await.unwrap();
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    // The slot is free once the stream ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = send(&gw, "/v1/chat/completions", "k-a", &chat("m", json!({}))).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::task::yield_now().await;
    }
}

fn shared_gateway(mock: &MockProvider, redis: &str, rpm: u64) -> GatewayProcess {
    GatewayProcess::start(&format!(
        "limits: {{ store: \"{redis}\" }}\nproviders:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  small: {{ key: k-small, limits: {{ rpm: {rpm} }} }}\n  big: {{ key: k-big }}\n",
        provider("openai", mock)
    ))
}

#[tokio::test]
async fn two_gateways_share_their_buckets_through_redis() {
    let redis = RedisServer::start_on(free_port());
    let mock = MockProvider::start().await.unwrap();
    let a = shared_gateway(&mock, &redis.url(), 10);
    let b = shared_gateway(&mock, &redis.url(), 10);
    // A bounded load: 80 requests of the limited key, 16 at a time over both gateways, and the
    // same from a key without limits.
    let started = Instant::now();
    let (small, big) = load(&[&a, &b], 80, 16).await;
    // One bucket of 10 for both gateways (each alone would have admitted 10, and without the
    // script's atomicity concurrent takes would admit more).
    assert!(
        (10..=within_refill(10, started)).contains(&small),
        "{small} admitted"
    );
    assert_eq!(big, 80, "the other key was limited");
    assert!(!a.stderr().contains("unreachable"), "{}", a.stderr());
    assert!(!b.stderr().contains("unreachable"), "{}", b.stderr());
}

#[tokio::test]
async fn a_key_under_load_gets_its_limit_and_no_more() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {}\nmodels:\n  m: {{ provider: p }}\n\
         keys:\n  small: {{ key: k-small, limits: {{ rpm: 20 }} }}\n  big: {{ key: k-big }}\n",
        provider("openai", &mock)
    ));
    // The gateway's worker threads share one bucket per key.
    let started = Instant::now();
    let (small, big) = load(&[&gw], 100, 16).await;
    assert!(
        (20..=within_refill(20, started)).contains(&small),
        "{small} admitted"
    );
    assert_eq!(big, 100);
}

/// Sends `total` requests with the limited key `k-small` and as many with `k-big`, `parallel`
/// at a time, spread over `gateways`; returns how many of each were admitted. Any answer other
/// than 200 or (for `k-small`) 429 fails the test.
async fn load(gateways: &[&GatewayProcess], total: usize, parallel: usize) -> (usize, usize) {
    let urls: Vec<String> = gateways
        .iter()
        .map(|g| g.url("/v1/chat/completions"))
        .collect();
    let body = chat("m", json!({}));
    let requests = (0..total * 2).map(|i| {
        let url = urls[i % urls.len()].clone();
        let key = if i % 2 == 0 { "k-small" } else { "k-big" };
        let body = body.clone();
        async move {
            let resp = client()
                .post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&body)
                .send()
                .await
                .expect("request");
            (key, resp.status().as_u16())
        }
    });
    let answers: Vec<(&str, u16)> = futures_util::stream::iter(requests)
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut admitted = (0, 0);
    for (key, status) in answers {
        match (key, status) {
            ("k-small", 200) => admitted.0 += 1,
            ("k-small", 429) => {}
            ("k-big", 200) => admitted.1 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    admitted
}

#[tokio::test]
async fn the_gateway_limits_locally_while_redis_is_down_and_shares_again_when_it_is_back() {
    let port = free_port();
    let redis = RedisServer::start_on(port);
    let mock = MockProvider::start().await.unwrap();
    let gw = shared_gateway(&mock, &redis.url(), 1000);
    let body = chat("m", json!({}));
    // A load runs while Redis is stopped under it: every request is still served.
    let sent = Arc::new(AtomicUsize::new(0));
    let url = gw.url("/v1/chat/completions");
    let load = tokio::spawn({
        let (sent, body) = (sent.clone(), body.clone());
        async move {
            let requests = (0..300).map(|_| {
                let (sent, url, body) = (sent.clone(), url.clone(), body.clone());
                async move {
                    let resp = client()
                        .post(url)
                        .header("authorization", "Bearer k-small")
                        .json(&body)
                        .send()
                        .await
                        .expect("request");
                    sent.fetch_add(1, Ordering::SeqCst);
                    resp.status().as_u16()
                }
            });
            futures_util::stream::iter(requests)
                .buffer_unordered(8)
                .collect::<Vec<u16>>()
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the load did not start");
        tokio::task::yield_now().await;
    }
    drop(redis);
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // It limited on local buckets meanwhile, and said so once.
    let log = gw.stderr();
    assert_eq!(
        log.matches("rate-limit store unreachable").count(),
        1,
        "{log}"
    );
    // Back: the gateway finds it by itself.
    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.stderr().contains("rate-limit store is back") {
        assert!(Instant::now() < deadline, "{}", gw.stderr());
        let (status, _, _) = send(&gw, "/v1/chat/completions", "k-small", &body).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_fallback_is_taken_only_within_its_own_models_and_providers_limits() {
    let failing = MockProvider::start().await.unwrap();
    failing.set_default(Behaviour::json(
        503,
        json!({"error": {"message": "overloaded", "type": "server_error"}}),
    ));
    let spare = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, api_key: k, max_attempts: 1, endpoints: [\"{}/v1\"] }}\n\
         \x20 q: {{ kind: openai, api_key: k, endpoints: [\"{}/v1\"], limits: {{ rpm: 1 }} }}\n\
         models:\n  m: {{ provider: p, fallbacks: [n] }}\n  n: {{ provider: q }}\n\
         keys:\n  a: {{ key: k-a }}\n",
        failing.url(),
        spare.url()
    ));
    let (status, headers, text) =
        send(&gw, "/v1/chat/completions", "k-a", &chat("m", json!({}))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-dragoman-model"), "n");
    // The spare provider's one request a minute is spent: the first model's failure stands.
    let (status, _, text) = send(&gw, "/v1/chat/completions", "k-a", &chat("m", json!({}))).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(spare.request_count(), 1);
    assert!(
        gw.stderr().contains("fallback model n skipped"),
        "{}",
        gw.stderr()
    );
}
