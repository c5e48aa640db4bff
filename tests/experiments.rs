//! A/B experiments through the gateway: a model name served by one of two models, each user
//! always by the same one, in the configured shares, named in `x-dragoman-variant`.
mod common;
use common::*;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Arm `a` on one mock, arm `b` on another, so each mock's request count is its arm's share.
async fn two_arms() -> (MockProvider, MockProvider) {
    let a = MockProvider::start().await.unwrap();
    let b = MockProvider::start().await.unwrap();
    // Only counts are read: the bodies need not be kept.
    a.set_record(false);
    b.set_record(false);
    (a, b)
}

fn config(a: &MockProvider, b: &MockProvider, experiment: &str) -> String {
    format!(
        "providers:\n  pa: {{ kind: openai, api_key: key-a, endpoints: [\"{}/v1\"] }}\n  \
         pb: {{ kind: openai, api_key: key-b, endpoints: [\"{}/v1\"] }}\n\
         models:\n  model-a: {{ provider: pa }}\n  model-b: {{ provider: pb }}\n\
         experiments:\n  {experiment}\n",
        a.url(),
        b.url()
    )
}

fn chat(model: &str, user: Option<&str>) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let Some(user) = user {
        body["user"] = json!(user);
    }
    body
}

/// (status, x-dragoman-variant, x-dragoman-model) of one request.
async fn ask(
    gw: &GatewayProcess,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut req = client().post(gw.url(path)).json(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let variant = header(resp.headers(), "x-dragoman-variant").to_string();
    let model = header(resp.headers(), "x-dragoman-model").to_string();
    let _ = resp.bytes().await;
    (status, variant, model)
}

#[tokio::test]
async fn each_user_stays_in_one_arm_and_the_arms_get_their_weights() {
    let (a, b) = two_arms().await;
    let gw = GatewayProcess::start(&config(
        &a,
        &b,
        "chat: { split: [{ model: model-a, weight: 80 }, { model: model-b, weight: 20 }] }",
    ));
    const USERS: usize = 2000;
    // Users who ask a second time, after everyone asked once.
    const AGAIN: usize = 400;
    let mut arm_of: HashMap<usize, String> = HashMap::new();
    for (round, users) in [(0, USERS), (1, AGAIN)] {
        let answers: Vec<(usize, (u16, String, String))> = stream::iter(0..users)
            .map(|u| {
                let gw = &gw;
                async move {
                    let body = chat("chat", Some(&format!("user-{u}")));
                    (u, ask(gw, "/v1/chat/completions", &body, &[]).await)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (u, (status, variant, model)) in answers {
            assert_eq!(status, 200, "user-{u}");
            // The arm that served is the one reported.
            assert_eq!(variant, model, "user-{u}");
            match arm_of.get(&u) {
                None => assert_eq!(round, 0),
                Some(first) => assert_eq!(*first, variant, "user-{u} changed arms"),
            }
            arm_of.insert(u, variant);
        }
    }
    let in_b = arm_of.values().filter(|v| *v == "model-b").count();
    // 2,000 users: a 20% share has a standard deviation of 0.9 points; 3 points is over 3 of
    // them. The assignment is a fixed function of the user names, so this cannot flicker.
    let share = in_b as f64 / USERS as f64;
    assert!((share - 0.20).abs() < 0.03, "arm b got {share}");
    let again_in_b = (0..AGAIN).filter(|u| arm_of[u] == "model-b").count();
    assert_eq!(b.request_count(), in_b + again_in_b);
    assert_eq!(a.request_count(), USERS + AGAIN - in_b - again_in_b);
    // The arms, in the metrics.
    for (variant, count) in [
        ("model-a", a.request_count()),
        ("model-b", b.request_count()),
    ] {
        let labels = [("experiment", "chat"), ("variant", variant)];
        let counted = metric(&gw, "dragoman_experiment_requests_total", &labels).await;
        assert_eq!(counted, Some(count as f64), "{variant}");
    }
}

#[tokio::test]
async fn the_sticky_header_then_the_gateway_key_name_the_user() {
    let (a, b) = two_arms().await;
    let experiment = "chat: { split: [{ model: model-a, weight: 1 }, { model: model-b, weight: 1 }], sticky_header: x-end-user }";
    let gw = GatewayProcess::start(&format!(
        "{}keys:\n  k1: {{ key: key-one }}\n  k2: {{ key: key-two }}\n  k3: {{ key: key-three }}\n  k4: {{ key: key-four }}\n",
        config(&a, &b, experiment)
    ));
    // The header wins over the request's `user`: the same header, whatever the user field.
    let mut by_header = HashMap::new();
    for u in 0..40 {
        let id = format!("end-user-{u}");
        let mut arms = Vec::new();
        for user in ["x", "y", "z"] {
            let (status, variant, _) = ask(
                &gw,
                "/v1/chat/completions",
                &chat("chat", Some(user)),
                &[("x-end-user", &id), ("authorization", "Bearer key-one")],
            )
            .await;
            assert_eq!(status, 200);
            arms.push(variant);
        }
        assert!(arms.iter().all(|v| *v == arms[0]), "{id}: {arms:?}");
        by_header.insert(id, arms[0].clone());
    }
    // Both arms are in use (40 users at 50/50: all in one arm is a 1 in 10^12 event).
    assert!(
        by_header.values().any(|v| v == "model-a") && by_header.values().any(|v| v == "model-b")
    );
    // Without header or user field, the key decides, the same way every time.
    for key in ["key-one", "key-two", "key-three", "key-four"] {
        let bearer = format!("Bearer {key}");
        let mut arms = Vec::new();
        for _ in 0..5 {
            let (status, variant, _) = ask(
                &gw,
                "/v1/chat/completions",
                &chat("chat", None),
                &[("authorization", &bearer)],
            )
            .await;
            assert_eq!(status, 200);
            arms.push(variant);
        }
        assert!(arms.iter().all(|v| *v == arms[0]), "{key}: {arms:?}");
    }
}

#[tokio::test]
async fn anthropic_clients_are_assigned_by_their_metadata_user_id() {
    let (a, b) = two_arms().await;
    let gw = GatewayProcess::start(&config(
        &a,
        &b,
        "chat: { split: [{ model: model-a, weight: 1 }, { model: model-b, weight: 1 }] }",
    ));
    let mut seen = Vec::new();
    for u in 0..30 {
        let body = json!({
            "model": "chat", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": format!("person-{u}")},
        });
        let first = ask(&gw, "/v1/messages", &body, &[]).await;
        let second = ask(&gw, "/v1/messages", &body, &[]).await;
        assert_eq!(first.0, 200, "{first:?}");
        assert_eq!(first.1, second.1, "person-{u} changed arms");
        seen.push(first.1);
    }
    assert!(seen.iter().any(|v| v == "model-a") && seen.iter().any(|v| v == "model-b"));
}

#[tokio::test]
async fn errors_name_the_variant_and_the_experiment_is_listed_and_permitted_by_name() {
    let (a, b) = two_arms().await;
    b.set_default(Behaviour::json(
        400,
        json!({"error": {"message": "bad", "type": "invalid_request_error", "code": null}}),
    ));
    let gw = GatewayProcess::start(&format!(
        "{}keys:\n  allowed: {{ key: key-allowed, models: [chat] }}\n  arms-only: {{ key: key-arms, models: [model-a, model-b] }}\n",
        config(
            &a,
            &b,
            "chat: { split: [{ model: model-a, weight: 0 }, { model: model-b, weight: 1 }] }",
        )
    ));
    let (status, variant, _) = ask(
        &gw,
        "/v1/chat/completions",
        &chat("chat", Some("u")),
        &[("authorization", "Bearer key-allowed")],
    )
    .await;
    assert_eq!((status, variant.as_str()), (400, "model-b"));
    // A key allowed only the arms may not ask for the experiment by its name.
    let (status, _, _) = ask(
        &gw,
        "/v1/chat/completions",
        &chat("chat", Some("u")),
        &[("authorization", "Bearer key-arms")],
    )
    .await;
    assert_eq!(status, 403);
    // The experiment is a model clients can list, for the keys that may use it.
    let list = |key: &'static str| {
        let gw = &gw;
        async move {
            let v: Value = client()
                .get(gw.url("/v1/models"))
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("key-allowed").await, ["chat"]);
    assert_eq!(list("key-arms").await, ["model-a", "model-b"]);
    assert_eq!(a.request_count(), 0, "an arm of weight 0 was used");
}

#[tokio::test]
async fn the_access_log_names_the_experiment_and_the_arm() {
    let (a, b) = two_arms().await;
    let log = std::env::temp_dir().join(format!(
        "dragoman-experiment-access-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    let gw = GatewayProcess::start(&format!(
        "access_log: {}\n{}",
        log.display(),
        config(
            &a,
            &b,
            "chat: { split: [{ model: model-a, weight: 1 }, { model: model-b, weight: 1 }] }",
        )
    ));
    let (status, variant, _) = ask(
        &gw,
        "/v1/chat/completions",
        &chat("chat", Some("someone")),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    // The line is written when the request ends, just after its answer: poll for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line: Value = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str(line).expect("a JSON line");
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let _ = std::fs::remove_file(&log);
    assert_eq!(line["experiment"], "chat", "{line}");
    assert_eq!(line["variant"], variant.as_str(), "{line}");
    assert_eq!(line["served_model"], variant.as_str(), "{line}");
}
