//! The Anthropic Messages front door (`/v1/messages`) over OpenAI, Gemini and Anthropic upstreams:
//! the exact upstream request, the exact Anthropic answer, streams and errors in Anthropic's shape.
mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/anthropic_api/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

async fn setup() -> (MockProvider, GatewayProcess) {
    let mock = MockProvider::start().await.unwrap();
    let url = mock.url();
    let gw = GatewayProcess::start(&format!(
        r#"
providers:
  oai: {{ kind: openai, endpoints: ["{url}/v1"], api_key: oai-key }}
  gem: {{ kind: gemini, endpoints: ["{url}"], api_key: gem-key }}
  ant: {{ kind: anthropic, endpoints: ["{url}"], api_key: ant-key, forward_headers: [anthropic-beta] }}
models:
  claude-sonnet-4-5: {{ provider: oai, model: gpt-4.1 }}
  vision: {{ provider: oai, model: gpt-4o }}
  m: {{ provider: oai }}
  gemini-flash: {{ provider: gem, model: gemini-2.0-flash }}
  real-claude: {{ provider: ant, model: claude-3-5-haiku-latest }}
"#
    ));
    (mock, gw)
}

async fn post_messages(
    gw: &GatewayProcess,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "client-key-must-not-leak")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn requests_reach_an_openai_upstream_translated() {
    let (mock, gw) = setup().await;
    for (name, upstream_model) in [
        ("request_text_system", "gpt-4.1"),
        ("request_images", "gpt-4o"),
        ("request_tools", "gpt-4.1"),
        ("request_tool_result_image", "m"),
    ] {
        let mut req = fixture(&format!("{name}.anthropic"));
        req["stream"] = json!(false);
        let (status, headers, answer) = post_messages(&gw, &req).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["type"], "message", "{name}");
        assert_eq!(header(&headers, "x-dragoman-provider"), "oai");
        let got = mock.last_request().unwrap();
        assert_eq!(got.path, "/v1/chat/completions");
        assert_eq!(got.header("authorization"), Some("Bearer oai-key"));
        assert_eq!(got.header("x-api-key"), None);
        let mut expected = fixture(&format!("{name}.openai"));
        expected["model"] = json!(upstream_model);
        let obj = expected.as_object_mut().unwrap();
        obj.remove("top_k"); // OpenAI rejects it
        obj.remove("stream_options");
        obj.insert("stream".into(), json!(false));
        let mut sent = got.json();
        sent.as_object_mut().unwrap().remove("stream_options");
        assert_eq!(sent, expected, "{name}");
    }
}

#[tokio::test]
async fn answers_come_back_in_anthropic_format() {
    let (mock, gw) = setup().await;
    for name in ["response_text", "response_thinking", "response_tool_calls"] {
        mock.push(Behaviour::Json {
            status: 200,
            body: fixture(&format!("{name}.openai")),
        });
        let (status, _, answer) = post_messages(
            &gw,
            &json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer, fixture(&format!("{name}.anthropic")), "{name}");
    }
}

#[tokio::test]
async fn gemini_upstream_non_streaming() {
    let (mock, gw) = setup().await;
    let (status, headers, answer) = post_messages(
        &gw,
        &json!({"model": "gemini-flash", "max_tokens": 50, "system": "be brief",
                "messages": [{"role": "user", "content": "hello gemini"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-provider"), "gem");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(
        answer["content"][0],
        json!({"type": "text", "text": "mock reply to: hello gemini"})
    );
    assert_eq!(answer["stop_reason"], "end_turn");
    let got = mock.last_request().unwrap();
    assert_eq!(got.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(got.header("x-goog-api-key"), Some("gem-key"));
    let sent = got.json();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 50);
}

#[tokio::test]
async fn anthropic_upstream_passes_through() {
    let (mock, gw) = setup().await;
    let body = r#"{"model":"real-claude","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"enabled","budget_tokens":1024},"x_future_field":[1]}"#;
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "client-key")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["id"], "msg_mock");
    let got = mock.last_request().unwrap();
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some("ant-key"));
    assert_eq!(
        got.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14")
    );
    assert_eq!(
        std::str::from_utf8(&got.body).unwrap(),
        body.replace("\"real-claude\"", "\"claude-3-5-haiku-latest\"")
    );
}

#[tokio::test]
async fn count_tokens_for_anthropic_models_only() {
    let (mock, gw) = setup().await;
    mock.push(Behaviour::Json {
        status: 200,
        body: json!({"input_tokens": 42}),
    });
    let req =
        json!({"model": "real-claude", "messages": [{"role": "user", "content": "count me"}]});
    let resp = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"input_tokens": 42})
    );
    let got = mock.last_request().unwrap();
    assert_eq!(got.path, "/v1/messages/count_tokens");
    assert_eq!(got.json()["model"], "claude-3-5-haiku-latest");
    // The mock's own answer (what the offline demo gets), through the gateway.
    let resp = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"input_tokens": 10})
    );
    let resp = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn errors_are_in_anthropic_shape() {
    let (mock, gw) = setup().await;
    let (status, _, err) = post_messages(
        &gw,
        &json!({"model": "nope", "max_tokens": 5, "messages": []}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "not_found_error");
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));

    // A wrong method, or an Anthropic path the gateway does not serve: Anthropic's shape still.
    for (request, want, kind) in [
        (
            client().get(gw.url("/v1/messages")),
            405,
            "invalid_request_error",
        ),
        (
            client().get(gw.url("/v1/messages/count_tokens")),
            405,
            "invalid_request_error",
        ),
        (
            client().post(gw.url("/v1/messages/batches")),
            404,
            "not_found_error",
        ),
    ] {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["error"]["type"], kind, "{err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }

    let (status, _, err) = post_messages(
        &gw,
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{err}"
    );

    mock.push(Behaviour::Json {
        status: 429,
        body: json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
    });
    let (status, _, err) = post_messages(
        &gw,
        &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    assert_eq!(err["error"]["message"], "Rate limit reached");
}

/// Parses Anthropic SSE into (event name, data) pairs.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn streaming_over_openai_and_gemini_upstreams() {
    let (_mock, gw) = setup().await;
    for model in ["m", "gemini-flash"] {
        let resp = client()
            .post(gw.url("/v1/messages"))
            .json(&json!({"model": model, "max_tokens": 50, "stream": true,
                          "messages": [{"role": "user", "content": "stream please"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(header(resp.headers(), "content-type").starts_with("text/event-stream"));
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while let Some(c) = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .unwrap()
        {
            text.push_str(&String::from_utf8_lossy(&c.unwrap()));
        }
        let evs = events(&text);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"message_start"), "{model}: {text}");
        assert_eq!(names.iter().filter(|n| **n == "message_start").count(), 1);
        assert_eq!(names.last(), Some(&"message_stop"), "{model}: {text}");
        assert!(names.contains(&"content_block_start") && names.contains(&"content_block_stop"));
        let text_out: String = evs
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "text_delta")
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text_out, "mock reply to: stream please", "{model}");
        let delta = &evs.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        for (name, data) in &evs {
            assert_eq!(data["type"], name.as_str());
        }
    }
}
