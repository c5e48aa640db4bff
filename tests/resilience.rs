//! Several mock instances on loopback: load balancing, health checks, circuit breaking, retries,
//! fallback models, timeouts and hedging, each with assertions on what every mock received.
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

fn endpoints(mocks: &[&MockProvider]) -> String {
    mocks
        .iter()
        .map(|m| format!("\"{}/v1\"", m.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// POSTs a streamed chat request for `m` and returns (status, headers, the whole event stream).
async fn post_stream(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client()
        .post(url)
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("stream"))
}

/// Polls `cond` every 20 ms for at most `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn weights_are_respected() {
    let (a, b, c) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, endpoints: [\"{}/v1\", {{ url: \"{}/v1\", weight: 1 }}, {{ url: \"{}/v1\", weight: 2 }}] }}\nmodels:\n  m: {{ provider: p }}\n",
        a.url(), b.url(), c.url()
    ));
    for _ in 0..200 {
        let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        assert_eq!(status, 200);
    }
    let (na, nb, nc) = (posts(&a), posts(&b), posts(&c));
    assert_eq!(na + nb + nc, 200);
    // Weighted round robin: 1:1:2, within 10%.
    for (n, want) in [(na, 50.0), (nb, 50.0), (nc, 100.0)] {
        assert!((n as f64 - want).abs() <= want * 0.1, "{na}/{nb}/{nc}");
    }
}

#[tokio::test]
async fn unhealthy_instance_gets_no_traffic_until_it_recovers() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, endpoints: [{}], health_check: {{ path: /v1/models, interval: 100ms, expect_status: 200 }} }}\nmodels:\n  m: {{ provider: p }}\n",
        endpoints(&[&a, &b])
    ));
    let health_checks = |m: &MockProvider| {
        m.requests()
            .iter()
            .filter(|r| r.path == "/v1/models")
            .count()
    };
    // b goes down: its health endpoint (and everything else) answers 503.
    b.set_default(Behaviour::Json {
        status: 503,
        body: json!({"error": "down"}),
    });
    b.clear_requests();
    assert!(
        eventually(Duration::from_secs(5), || health_checks(&b) >= 2).await,
        "no health checks seen"
    );
    b.clear_requests();
    for _ in 0..20 {
        let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(posts(&b), 0, "an unhealthy instance got traffic");
    // b recovers.
    b.set_default(Behaviour::Reply);
    b.clear_requests();
    assert!(eventually(Duration::from_secs(5), || health_checks(&b) >= 2).await);
    for _ in 0..20 {
        let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        assert_eq!(status, 200);
    }
    assert!(
        posts(&b) >= 5,
        "the recovered instance got no traffic: {}",
        posts(&b)
    );
}

async fn concurrent_load(gw: &GatewayProcess, total: usize, concurrency: usize) -> Vec<u16> {
    let url = gw.url("/v1/chat/completions");
    let mut statuses = Vec::new();
    for _ in 0..total / concurrency {
        let batch = (0..concurrency).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, &chat()).await.0 })
        });
        for h in batch {
            statuses.push(h.await.unwrap());
        }
    }
    statuses
}

#[tokio::test]
async fn one_of_three_refusing_or_failing_causes_no_client_errors() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let refused = free_port();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [{}, \"http://127.0.0.1:{refused}/v1\"] }}\nmodels:\n  m: {{ provider: p }}\n",
        endpoints(&[&a, &b])
    ));
    let statuses = concurrent_load(&gw, 60, 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(posts(&a) + posts(&b), 60);

    let (a, b, c) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    c.set_default(Behaviour::Json {
        status: 503,
        body: json!({"error": {"message": "overloaded"}}),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [{}] }}\nmodels:\n  m: {{ provider: p }}\n",
        endpoints(&[&a, &b, &c])
    ));
    let statuses = concurrent_load(&gw, 60, 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(posts(&a) + posts(&b), 60);
    // The circuit opened after a few 503s: c stopped getting traffic (without it, c would get a
    // third of the 60 first attempts).
    assert!(
        posts(&c) <= 10,
        "the failing instance kept getting traffic: {}",
        posts(&c)
    );
}

#[tokio::test]
async fn retry_after_opens_the_circuit_and_400_is_never_retried() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, circuit_breaker: {{ cooldown: 500ms }}, endpoints: [{}] }}\nmodels:\n  m: {{ provider: p }}\n",
        endpoints(&[&a, &b])
    ));
    let limited = Behaviour::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: r#"{"error":{"message":"slow down","type":"requests"}}"#.into(),
        headers: vec![("retry-after".into(), "2".into())],
    };
    a.set_default(limited.clone());
    b.set_default(limited);
    // Whichever instance is first answers 429 and is retried on the other, which also does.
    let (status, headers, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "x-dragoman-attempts"), "2");
    a.set_default(Behaviour::Reply);
    b.set_default(Behaviour::Reply);
    a.clear_requests();
    b.clear_requests();
    // The model is set aside on both instances for Retry-After (2 s), longer than the 500 ms
    // cooldown (their circuits stay closed: a 429 is no instance failure).
    let started = Instant::now();
    let (status, headers, err) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(header(&headers, "retry-after"), "2");
    assert_eq!(posts(&a) + posts(&b), 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Poll until the set-asides end.
    let reopened_after = loop {
        let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        if status == 200 {
            break started.elapsed();
        }
        assert_eq!(status, 429);
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "circuits never closed again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reopened_after >= Duration::from_millis(1900),
        "circuit closed after {reopened_after:?}, before Retry-After"
    );
    assert_eq!(
        posts(&a) + posts(&b),
        1,
        "only the probe reached an instance"
    );

    a.clear_requests();
    b.clear_requests();
    a.push(Behaviour::Json {
        status: 400,
        body: json!({"error": {"message": "bad request"}}),
    });
    b.push(Behaviour::Json {
        status: 400,
        body: json!({"error": {"message": "bad request"}}),
    });
    let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 400);
    assert_eq!(posts(&a) + posts(&b), 1, "a 400 was retried");
}

#[tokio::test]
async fn fallback_to_another_provider_kind() {
    let (openai, anthropic) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    openai.set_default(Behaviour::Json {
        status: 503,
        body: json!({"error": {"message": "down"}}),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n  oai: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"{}/v1\"] }}\n  ant: {{ kind: anthropic, api_key: k, endpoints: [\"{}\"] }}\nmodels:\n  m: {{ provider: oai, fallbacks: [claude] }}\n  claude: {{ provider: ant, model: claude-3-5-haiku-latest }}\n",
        openai.url(), anthropic.url()
    ));
    let (status, headers, answer) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hi"
    );
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(header(&headers, "x-dragoman-model"), "claude");
    assert_eq!(header(&headers, "x-dragoman-provider"), "ant");
    assert_eq!(header(&headers, "x-dragoman-attempts"), "2");
    assert_eq!(posts(&openai), 1);
    let sent = anthropic.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.json()["model"], "claude-3-5-haiku-latest");

    // A 400 is the client's problem, not a reason to fall back.
    openai.push(Behaviour::Json {
        status: 400,
        body: json!({"error": {"message": "bad"}}),
    });
    let before = posts(&anthropic);
    let (status, headers, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "x-dragoman-model"), "m");
    assert_eq!(posts(&anthropic), before);

    // ...unless it says the prompt is too long for the model.
    openai.push(Behaviour::Json { status: 400, body: json!({"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}) });
    let (status, headers, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-dragoman-model"), "claude");
}

#[tokio::test]
async fn slow_instances_hit_the_model_timeout_within_the_deadline() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    for m in [&a, &b] {
        m.set_default(Behaviour::Delay {
            delay: Duration::from_secs(10),
            then: Box::new(Behaviour::Reply),
        });
    }
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, max_attempts: 3, endpoints: [{}] }}\nmodels:\n  m: {{ provider: p, timeout: 1s }}\n",
        endpoints(&[&a, &b])
    ));
    let started = Instant::now();
    let (status, headers, err) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{err}");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert_eq!(header(&headers, "x-dragoman-model"), "m");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1800),
        "took {took:?}"
    );
    assert!(
        a.wait_connection_closed(Duration::from_secs(3)).await
            || b.wait_connection_closed(Duration::from_secs(3)).await
    );
}

#[tokio::test]
async fn hedged_request_wins_on_the_fast_instance_and_cancels_the_slow_one() {
    let (slow, fast) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    slow.set_default(Behaviour::Delay {
        delay: Duration::from_secs(10),
        then: Box::new(Behaviour::Reply),
    });
    fast.set_default(Behaviour::Delay {
        delay: Duration::from_millis(100),
        then: Box::new(Behaviour::Reply),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n  s: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"{}/v1\"] }}\n  f: {{ kind: openai, auth: none, endpoints: [\"{}/v1\"] }}\nmodels:\n  m: {{ provider: s, hedge: {{ after: 300ms, max: 1 }}, fallbacks: [backup] }}\n  backup: {{ provider: f }}\n",
        slow.url(), fast.url()
    ));
    // Hedging applies to streams, whose first byte is the first token.
    let started = Instant::now();
    let (status, headers, answer) = post_stream(&gw.url("/v1/chat/completions")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("data: [DONE]\n\n"), "{answer}");
    assert_eq!(header(&headers, "x-dragoman-model"), "backup");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(posts(&slow), 1);
    assert_eq!(posts(&fast), 1);
    assert!(
        slow.wait_connection_closed(Duration::from_secs(3)).await,
        "the slow upstream request was not cancelled"
    );
}

#[tokio::test]
async fn hedge_goes_to_another_instance_of_the_same_provider() {
    let (slow, fast) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    slow.set_default(Behaviour::Delay {
        delay: Duration::from_secs(10),
        then: Box::new(Behaviour::Reply),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [{}] }}\nmodels:\n  m: {{ provider: p, hedge: {{ after: 200ms }} }}\n",
        endpoints(&[&slow, &fast])
    ));
    for _ in 0..4 {
        let started = Instant::now();
        let (status, _, answer) = post_stream(&gw.url("/v1/chat/completions")).await;
        assert_eq!(status, 200);
        assert!(answer.ends_with("data: [DONE]\n\n"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(posts(&fast), 4);
    assert!(
        posts(&slow) >= 1,
        "round robin never tried the slow instance first"
    );
    assert!(slow.wait_connection_closed(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_started_stream_is_never_retried() {
    let (a, b) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"},\"finish_reason\":null}]}\n\n";
    for m in [&a, &b] {
        m.set_default(Behaviour::SseThenDrop {
            events: vec![chunk.to_string()],
        });
    }
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [{}] }}\nmodels:\n  m: {{ provider: p, fallbacks: [other] }}\n  other: {{ provider: p }}\n",
        endpoints(&[&a, &b])
    ));
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap_or_default();
    assert!(text.starts_with(chunk), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert_eq!(
        posts(&a) + posts(&b),
        1,
        "a stream that had started was sent again"
    );
}

#[tokio::test]
async fn ewma_balancing_sheds_load_from_a_slow_instance() {
    let (slow, fast) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    slow.set_default(Behaviour::Delay {
        delay: Duration::from_millis(300),
        then: Box::new(Behaviour::Reply),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, auth: none, balance: ewma, endpoints: [{}] }}\nmodels:\n  m: {{ provider: p }}\n",
        endpoints(&[&slow, &fast])
    ));
    for _ in 0..20 {
        let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        assert_eq!(status, 200);
    }
    assert!(posts(&slow) >= 1, "the slow instance was never measured");
    assert!(
        posts(&slow) <= 3,
        "ewma kept sending to the slow instance: {}",
        posts(&slow)
    );
    assert_eq!(posts(&slow) + posts(&fast), 20);
}
