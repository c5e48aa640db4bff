//! Bodies far past Pingora's 64 KiB retry buffer: routed on `model`, translated, and re-sent in
//! full when the first instance refuses the connection.
mod common;
use common::*;
use serde_json::{json, Value};

/// A chat request of about `size` bytes: a long text plus a base64 image.
fn big_request(model: &str, size: usize) -> Value {
    let image = "A".repeat(size / 2);
    let text = "long context ".repeat(size / 2 / 13);
    json!({
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}
        ]}]
    })
}

async fn assert_translated_big_body_arrives(size: usize) {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  a: {{ kind: anthropic, endpoints: [\"{}\"], api_key: ant-key }}\nmodels:\n  claude: {{ provider: a, model: claude-3-5-haiku-latest }}\n",
        mock.url()
    ));
    let req = big_request("claude", size);
    let (status, headers, answer) = post_json(&gw.url("/v1/chat/completions"), &req).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-provider"), "a");
    assert_eq!(answer["object"], "chat.completion");
    let got = mock.last_request().unwrap();
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    let sent = got.json();
    assert_eq!(sent["model"], "claude-3-5-haiku-latest");
    let blocks = &sent["messages"][0]["content"];
    assert_eq!(blocks[0]["text"], req["messages"][0]["content"][0]["text"]);
    assert_eq!(blocks[1]["source"]["type"], "base64");
    assert_eq!(
        blocks[1]["source"]["data"].as_str().unwrap().len(),
        size / 2
    );
}

#[tokio::test]
async fn one_mebibyte_translated() {
    assert_translated_big_body_arrives(1 << 20).await;
}

#[tokio::test]
async fn twenty_mebibytes_translated() {
    assert_translated_big_body_arrives(20 << 20).await;
}

#[tokio::test]
async fn twenty_mebibytes_resent_after_a_refused_connection() {
    let mock = MockProvider::start().await.unwrap();
    let refused = free_port();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  a: {{ kind: anthropic, api_key: ant-key, health_check: {{ enabled: false }}, endpoints: [\"http://127.0.0.1:{refused}\", \"{}\"] }}\nmodels:\n  claude: {{ provider: a }}\n",
        mock.url()
    ));
    let req = big_request("claude", 20 << 20);
    // Round robin starts on either instance; two requests put one first on the dead one.
    for _ in 0..2 {
        let (status, _, answer) = post_json(&gw.url("/v1/chat/completions"), &req).await;
        assert_eq!(status, 200, "{answer}");
    }
    let got = mock.requests();
    assert_eq!(got.len(), 2);
    for r in got {
        let sent = r.json();
        assert_eq!(
            sent["messages"][0]["content"][1]["source"]["data"]
                .as_str()
                .unwrap()
                .len(),
            10 << 20
        );
    }
    assert!(
        gw.stderr().contains("ConnectRefused"),
        "the dead instance was never tried"
    );
}

#[tokio::test]
async fn twenty_mebibytes_passed_through_to_openai() {
    let mock = MockProvider::start().await.unwrap();
    let refused = free_port();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  o: {{ kind: openai, auth: none, health_check: {{ enabled: false }}, endpoints: [\"http://127.0.0.1:{refused}/v1\", \"{}/v1\"] }}\nmodels:\n  m: {{ provider: o, model: upstream-m }}\n",
        mock.url()
    ));
    let req = big_request("m", 20 << 20);
    let raw = serde_json::to_vec(&req).unwrap();
    for _ in 0..2 {
        let (status, _, answer) = post_json(&gw.url("/v1/chat/completions"), &req).await;
        assert_eq!(status, 200, "{answer}");
    }
    for r in mock.requests() {
        let expected =
            String::from_utf8(raw.clone())
                .unwrap()
                .replacen("\"m\"", "\"upstream-m\"", 1);
        assert_eq!(r.body.len(), expected.len());
        assert!(
            r.body == expected.as_bytes(),
            "body changed beyond the model"
        );
    }
    assert_eq!(mock.requests().len(), 2);
}
