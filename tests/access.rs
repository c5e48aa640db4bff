//! Gateway keys: who may call, and which models, presented as each SDK presents them; and a
//! gateway that other hosts can reach refuses to start without keys unless told `auth: none`.
mod common;
use common::*;
use serde_json::{json, Value};

/// `team-b`'s key; the config holds only its SHA-256.
const KEY_B: &str = "kb-team-batch";
const KEY_B_SHA256: &str = "f01883e8e08296490124c778aaacef39342518713e24d10804b54f0bd1639f60";

async fn gateway(mock: &MockProvider) -> GatewayProcess {
    GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, api_key: upstream-key, endpoints: [\"{}/v1\"] }}\n\
         models:\n  m1: {{ provider: p }}\n  m2: {{ provider: p }}\n\
         keys:\n  team-a: {{ key: ka-team-all }}\n  team-b: {{ key_sha256: \"{KEY_B_SHA256}\", models: [m1] }}\n",
        mock.url()
    ))
}

/// Sends `body` to `path` with `headers`; (status, body as JSON).
async fn send(
    gw: &GatewayProcess,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = match &body {
        Some(body) => client().post(gw.url(path)).json(body),
        None => client().get(gw.url(path)),
    };
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn chat(model: &str) -> Option<Value> {
    Some(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
}

#[tokio::test]
async fn requests_without_a_known_key_are_401_in_the_clients_protocol() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("x-api-key", "ka-team-al")],
        vec![("authorization", "Basic a2EtdGVhbS1hbGw=")],
    ] {
        let (status, body) = send(&gw, "/v1/chat/completions", &headers, chat("m1")).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        let (status, body) = send(&gw, "/v1/models", &headers, None).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
    }
    // An Anthropic client hears it in Anthropic's error format.
    let messages =
        json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = send(&gw, "/v1/messages", &[], Some(messages)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(
        mock.requests().len(),
        0,
        "an unauthenticated request went upstream"
    );
}

#[tokio::test]
async fn keys_are_read_where_each_sdk_sends_them_and_never_go_upstream() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock).await;
    for header in [
        ("authorization", "Bearer ka-team-all"),
        ("x-api-key", "ka-team-all"),
        ("api-key", "ka-team-all"),
        ("x-goog-api-key", "ka-team-all"),
    ] {
        let (status, body) = send(&gw, "/v1/chat/completions", &[header], chat("m2")).await;
        assert_eq!(status, 200, "{header:?}: {body}");
        let upstream = mock.last_request().expect("the request went upstream");
        let seen = format!("{:?} {}", upstream.headers, upstream.path);
        assert!(
            !seen.contains("ka-team-all"),
            "the gateway key went upstream: {seen}"
        );
        assert!(
            seen.contains("upstream-key"),
            "the provider key was not sent: {seen}"
        );
    }
}

#[tokio::test]
async fn a_key_uses_only_its_models_and_lists_only_them() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock).await;
    let bearer_b = format!("Bearer {KEY_B}");
    let b = [("authorization", bearer_b.as_str())];
    let (status, body) = send(&gw, "/v1/chat/completions", &b, chat("m1")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&gw, "/v1/chat/completions", &b, chat("m2")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed", "{body}");
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(
        mock.requests().len(),
        1,
        "a model the key may not use went upstream"
    );

    let ids = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, body) = send(&gw, "/v1/models", &b, None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), ["m1"]);
    let (_, body) = send(&gw, "/v1/models", &[("x-api-key", "ka-team-all")], None).await;
    assert_eq!(ids(&body), ["m1", "m2"]);
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "dragoman-access-{}-{name}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn an_open_listener_needs_keys_or_an_explicit_auth_none() {
    let port = free_port();
    let base = format!("listen: 0.0.0.0:{port}\nproviders:\n  p: {{ kind: openai, api_key: k }}\nmodels:\n  m: {{ provider: p }}\n");
    let open = config_file("open", &base);
    let (ok, out) = run_dragoman(&["-t", "-c", open.to_str().unwrap()], &[]);
    assert!(!ok, "an open relay started: {out}");
    assert!(out.contains("keys") && out.contains("auth: none"), "{out}");
    for (name, extra) in [
        ("none", "auth: none\n"),
        ("keys", "keys:\n  a: { key: secret-a }\n"),
    ] {
        let path = config_file(name, &format!("{base}{extra}"));
        let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
        assert!(ok, "{name}: {out}");
        assert!(!out.contains("secret-a"), "{out}");
    }
    for path in ["open", "none", "keys"] {
        let _ = std::fs::remove_file(config_file(path, ""));
    }
}

#[test]
fn every_gateways_log_is_checked_for_the_keys_in_its_config() {
    // GatewayProcess's drop fails the test when its log holds one of these.
    let found = secrets_in(
        "providers:\n  p: { kind: openai, api_key: sk-provider-1, api_keys: [sk-second-2, { file: /k }] }\n\
         \x20 q: { kind: openai, api_key: \"${FROM_ENV}\" }\n\
         keys:\n  a: { key: gateway-key-3 }\n  b: { key_sha256: \"00\" }\n",
    );
    assert_eq!(
        found,
        [CLIENT_KEY, "sk-provider-1", "sk-second-2", "gateway-key-3"]
    );
}
