//! Fallback chains, deadlines across them, hedging and the cap on upstream calls, each checked
//! against what every mock received.
mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

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
