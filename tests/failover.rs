//! Fallback chains, deadlines across them, hedging and the cap on upstream calls, each checked
//! against what every mock received.
mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn chat() -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn posts(mock: &MockProvider) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
}

/// A provider named `name` on the mocks' instances, without active health checks.
fn provider(name: &str, mocks: &[&MockProvider]) -> String {
    let endpoints = mocks
        .iter()
        .map(|m| format!("\"{}/v1\"", m.url()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "  {name}: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [{endpoints}] }}\n"
    )
}

fn failing(status: u16, who: &str) -> Behaviour {
    Behaviour::json(
        status,
        json!({"error": {"message": format!("{who} failed")}}),
    )
}

#[tokio::test]
async fn the_clients_fallbacks_are_tried_in_turn() {
    let (a, b, c) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    a.set_default(failing(500, "a"));
    b.set_default(failing(500, "b"));
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}{}models:\n  m: {{ provider: pa, fallbacks: [b, c] }}\n  b: {{ provider: pb }}\n  c: {{ provider: pc }}\n",
        provider("pa", &[&a]),
        provider("pb", &[&b]),
        provider("pc", &[&c]),
    ));
    let (status, headers, answer) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-model"), "c");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hi"
    );
    assert_eq!(header(&headers, "x-dragoman-attempts"), "3");
    assert_eq!((posts(&a), posts(&b), posts(&c)), (1, 1, 1));
}

#[tokio::test]
async fn the_clients_fallback_on_governs_the_chain_not_the_fallbacks_own() {
    let (a, b, c) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    a.set_default(failing(429, "a"));
    b.set_default(failing(500, "b"));
    // The client's model falls back on 429 only; `b`'s own settings (fall back on 5xx, to `c`)
    // play no part when it serves as a fallback.
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}{}models:\n  m: {{ provider: pa, fallbacks: [b, c], fallback_on: [rate_limited] }}\n  b: {{ provider: pb, fallbacks: [c], fallback_on: [server_error] }}\n  c: {{ provider: pc }}\n",
        provider("pa", &[&a]),
        provider("pb", &[&b]),
        provider("pc", &[&c]),
    ));
    let (status, headers, answer) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-model"), "b");
    assert_eq!((posts(&a), posts(&b), posts(&c)), (1, 1, 0));
}

#[tokio::test]
async fn a_non_streamed_request_is_not_hedged() {
    let (x, y) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    for m in [&x, &y] {
        m.set_default(Behaviour::delay(
            Duration::from_millis(800),
            Behaviour::Reply,
        ));
    }
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}models:\n  m: {{ provider: p, hedge: {{ after: 200ms, max: 1 }} }}\n",
        provider("p", &[&x, &y]),
    ));
    let (status, _, answer) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        posts(&x) + posts(&y),
        1,
        "a non-streamed request was hedged"
    );
}

#[tokio::test]
async fn a_timeout_falls_back_under_the_fallbacks_own_deadline() {
    let (slow, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    slow.set_default(Behaviour::delay(Duration::from_secs(10), Behaviour::Reply));
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}models:\n  m: {{ provider: pa, timeout: 300ms, fallbacks: [b], fallback_on: [timeout] }}\n  b: {{ provider: pb, timeout: 5s }}\n",
        provider("pa", &[&slow]),
        provider("pb", &[&b]),
    ));
    let started = Instant::now();
    let (status, headers, answer) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-model"), "b");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hi"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert_eq!((posts(&slow), posts(&b)), (1, 1));
    assert!(
        slow.wait_connection_closed(Duration::from_secs(3)).await,
        "the timed out upstream request was not cancelled"
    );
}

#[tokio::test]
async fn a_timeout_without_timeout_in_fallback_on_is_a_504() {
    let (slow, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    slow.set_default(Behaviour::delay(Duration::from_secs(10), Behaviour::Reply));
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}models:\n  m: {{ provider: pa, timeout: 300ms, fallbacks: [b], fallback_on: [server_error] }}\n  b: {{ provider: pb }}\n",
        provider("pa", &[&slow]),
        provider("pb", &[&b]),
    ));
    let started = Instant::now();
    let (status, headers, err) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{err}");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert_eq!(header(&headers, "x-dragoman-model"), "m");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!((posts(&slow), posts(&b)), (1, 0));
}

#[tokio::test]
async fn a_whole_answer_still_arriving_at_the_deadline_falls_back() {
    let (slow, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    // The status and the first bytes come at once; the rest never does.
    slow.set_default(Behaviour::Sse {
        events: vec!["{\"id\":\"partial".into(), "\"}".into()],
        interval: Duration::ZERO,
        hold_after: Some(1),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}models:\n  m: {{ provider: pa, timeout: 300ms, fallbacks: [b], fallback_on: [timeout] }}\n  b: {{ provider: pb }}\n",
        provider("pa", &[&slow]),
        provider("pb", &[&b]),
    ));
    let (status, headers, answer) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-model"), "b");
    // Nothing of the first answer reached the client: the body is b's whole JSON.
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hi"
    );
    assert_eq!((posts(&slow), posts(&b)), (1, 1));
    slow.release();
}

#[tokio::test]
async fn total_timeout_bounds_the_whole_chain() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    for m in [&a, &b] {
        m.set_default(Behaviour::delay(Duration::from_secs(10), Behaviour::Reply));
    }
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}models:\n  m: {{ provider: pa, timeout: 300ms, total_timeout: 800ms, fallbacks: [b] }}\n  b: {{ provider: pb, timeout: 5s }}\n",
        provider("pa", &[&a]),
        provider("pb", &[&b]),
    ));
    let started = Instant::now();
    let (status, _, err) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{err}");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2000),
        "took {took:?}"
    );
    assert_eq!((posts(&a), posts(&b)), (1, 1));
    assert!(b.wait_connection_closed(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn upstream_calls_stop_at_max_upstream_calls() {
    let mocks: Vec<MockProvider> = futures::future::join_all((0..5).map(|_| MockProvider::start()))
        .await
        .into_iter()
        .map(|m| m.unwrap())
        .collect();
    let [a1, a2, b1, b2, c] = &mocks[..] else {
        unreachable!()
    };
    for (m, who) in [(a1, "a1"), (a2, "a2"), (b1, "b1"), (b2, "b2")] {
        m.set_default(failing(500, who));
    }
    // Without the cap: two attempts on a, two on b, then c answers (5 calls).
    let gw = GatewayProcess::start(&format!(
        "providers:\n{}{}{}models:\n  m: {{ provider: pa, fallbacks: [b, c], max_upstream_calls: 3 }}\n  b: {{ provider: pb }}\n  c: {{ provider: pc }}\n",
        provider("pa", &[a1, a2]),
        provider("pb", &[b1, b2]),
        provider("pc", &[c]),
    ));
    let (status, headers, err) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    let calls: Vec<usize> = mocks.iter().map(posts).collect();
    assert_eq!(calls.iter().sum::<usize>(), 3, "{calls:?}");
    assert_eq!(calls[0] + calls[1], 2, "{calls:?}");
    assert_eq!(calls[2] + calls[3], 1, "{calls:?}");
    assert_eq!(calls[4], 0, "{calls:?}");
    // The last failure: b's 500.
    assert_eq!(status, 500, "{err}");
    assert_eq!(header(&headers, "x-dragoman-model"), "b");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message == "b1 failed" || message == "b2 failed", "{err}");
    assert_eq!(header(&headers, "x-dragoman-attempts"), "3");
}

#[tokio::test]
async fn a_whole_answer_held_for_the_client_is_capped_at_max_response_bytes() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let huge = "x".repeat(300_000);
    a.set_default(Behaviour::json(
        200,
        json!({"id": "c", "choices": [], "padding": huge}),
    ));
    let gw = GatewayProcess::start(&format!(
        "max_response_bytes: 100000\nproviders:\n{}{}models:\n  m: {{ provider: pa, fallbacks: [b], fallback_on: [timeout] }}\n  b: {{ provider: pb }}\n",
        provider("pa", &[&a]),
        provider("pb", &[&b]),
    ));
    let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "bad_upstream_response", "{body}");
    assert_eq!(posts(&b), 0, "fallback_on lists only timeout");
}
