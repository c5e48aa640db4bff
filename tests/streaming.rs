//! Streams end to end: delivered as they arrive, ended with an error event (never looking like a
//! success) when the upstream fails mid-stream, and cancelled upstream when the client leaves.
mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;

async fn gateway(kind: &str, mock: &MockProvider, timeouts: &str) -> GatewayProcess {
    let base = if kind == "openai" {
        format!("{}/v1", mock.url())
    } else {
        mock.url()
    };
    GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: {kind}, endpoints: [\"{base}\"], api_key: k, {timeouts} }}\nmodels:\n  m: {{ provider: p }}\n"
    ))
}

async fn open_stream(
    gw: &GatewayProcess,
    path: &str,
    body: serde_json::Value,
) -> reqwest::Response {
    let resp = client()
        .post(gw.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

fn chat(stream: bool) -> serde_json::Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Reads the stream until it ends, with a bound so a hang fails the test.
async fn read_all(resp: reqwest::Response) -> String {
    tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("stream never ended")
        .unwrap_or_default()
}

#[tokio::test]
async fn first_chunk_arrives_while_the_upstream_holds_the_rest() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway("anthropic", &mock, "timeout: 30s").await;
    mock.push(Behaviour::Sse {
        events: anthropic_events(),
        interval: Duration::ZERO,
        hold_after: Some(3),
    });
    let resp = open_stream(&gw, "/v1/chat/completions", chat(true)).await;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    // The upstream has sent its first 3 events and holds the rest until released.
    while !seen.contains("\"first\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("translated chunk held back by the gateway")
            .expect("stream ended early")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("second"));
    assert!(!seen.contains("[DONE]"));
    mock.release();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
    {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(seen.contains(" second"), "{seen}");
    assert!(seen.trim_end().ends_with("data: [DONE]"), "{seen}");
}

#[tokio::test]
async fn upstream_cut_mid_stream_ends_with_an_error_event() {
    for kind in ["anthropic", "openai"] {
        let mock = MockProvider::start().await.unwrap();
        let gw = gateway(kind, &mock, "timeout: 30s").await;
        let events = if kind == "anthropic" {
            anthropic_events()[..3].to_vec()
        } else {
            vec![
                "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"par\"},\"finish_reason\":null}]}\n\n".to_string(),
            ]
        };
        mock.push(Behaviour::SseThenDrop { events });
        let text = read_all(open_stream(&gw, "/v1/chat/completions", chat(true)).await).await;
        assert!(
            !text.contains("[DONE]"),
            "{kind}: a cut stream looked complete: {text}"
        );
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(
            last.starts_with("data: {\"error\":"),
            "{kind}: no terminal error event: {text}"
        );
    }
}

#[tokio::test]
async fn upstream_closing_without_terminal_event_is_an_error_event() {
    for kind in ["anthropic", "openai"] {
        let mock = MockProvider::start().await.unwrap();
        let gw = gateway(kind, &mock, "timeout: 30s").await;
        let events = if kind == "anthropic" {
            anthropic_events()[..4].to_vec()
        } else {
            vec!["data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n".to_string()]
        };
        // A clean end of the HTTP body, but no message_stop / [DONE].
        mock.push(Behaviour::Sse {
            events,
            interval: Duration::ZERO,
            hold_after: None,
        });
        let text = read_all(open_stream(&gw, "/v1/chat/completions", chat(true)).await).await;
        assert!(!text.contains("[DONE]"), "{kind}: {text}");
        assert!(text.contains("stream_truncated"), "{kind}: {text}");
    }
}

#[tokio::test]
async fn upstream_error_event_mid_stream_reaches_the_client() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway("anthropic", &mock, "timeout: 30s").await;
    let mut events = anthropic_events()[..3].to_vec();
    events.push("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into());
    mock.push(Behaviour::Sse {
        events,
        interval: Duration::ZERO,
        hold_after: None,
    });
    let text = read_all(open_stream(&gw, "/v1/chat/completions", chat(true)).await).await;
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let err: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["message"], "Overloaded");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn stalled_stream_times_out_with_an_error_event() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway("anthropic", &mock, "stream_idle_timeout: 500ms").await;
    mock.push(Behaviour::Sse {
        events: anthropic_events(),
        interval: Duration::ZERO,
        hold_after: Some(3),
    });
    let text = read_all(open_stream(&gw, "/v1/chat/completions", chat(true)).await).await;
    assert!(text.contains("\"first\""), "{text}");
    assert!(text.contains("upstream_timeout"), "{text}");
    assert!(!text.contains("[DONE]"));
    mock.release();
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_call() {
    for held in [true, false] {
        let mock = MockProvider::start().await.unwrap();
        let gw = gateway("anthropic", &mock, "timeout: 60s").await;
        let request = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&chat(held));
        leave_mid_request(&mock, request, held).await;
        assert!(
            mock.wait_connection_closed(Duration::from_secs(5)).await,
            "held={held}: the upstream connection stayed open after the client left"
        );
    }
}

#[tokio::test]
async fn openai_stream_passes_through_unbuffered() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway("openai", &mock, "timeout: 30s").await;
    let chunk = |c: &str| {
        format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{c}\"}},\"finish_reason\":null}}]}}\n\n")
    };
    mock.push(Behaviour::Sse {
        events: vec![chunk("one"), chunk("two"), "data: [DONE]\n\n".into()],
        interval: Duration::ZERO,
        hold_after: Some(1),
    });
    let resp = open_stream(&gw, "/v1/chat/completions", chat(true)).await;
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&first), chunk("one"));
    mock.release();
    let mut rest = Vec::new();
    while let Some(c) = body.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        format!("{}data: [DONE]\n\n", chunk("two"))
    );
}

/// The same with a model that has fallbacks, which the dispatcher serves through subrequests.
#[tokio::test]
async fn client_disconnect_cancels_the_upstream_call_through_the_dispatcher() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: anthropic, endpoints: [\"{}\"], api_key: k }}\nmodels:\n  m: {{ provider: p, fallbacks: [m2] }}\n  m2: {{ provider: p }}\n",
        mock.url()
    ));
    mock.push(Behaviour::Sse {
        events: anthropic_events(),
        interval: Duration::ZERO,
        hold_after: Some(3),
    });
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    assert!(tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .is_some());
    drop(body);
    assert!(
        mock.wait_connection_closed(Duration::from_secs(5)).await,
        "upstream stayed open"
    );
    mock.release();
}
