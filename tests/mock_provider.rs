//! The mock provider: each protocol's reply, the auth check, every behaviour, the control API.

use std::time::{Duration, Instant};

use dragoman_mock::ProviderKind;
use dragoman_mock::{Behaviour, MockOptions, MockProvider};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(mock: &MockProvider, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn post_with(
    mock: &MockProvider,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> reqwest::Response {
    let mut rb = client().post(format!("{}{path}", mock.url())).json(&body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// `(event name, data)` pairs of an SSE body with `event:` lines.
fn sse_named(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap()
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn chat_body(text: &str) -> Value {
    json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": text},
    ]})
}

fn anthropic_body(text: &str) -> Value {
    json!({"model": "claude-test", "max_tokens": 100,
           "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]})
}

fn gemini_body(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

const AV: (&str, &str) = ("anthropic-version", "2023-06-01");

// ---------------------------------------------------------------------------------------------
// Protocol replies

#[tokio::test]
async fn openai_chat_reply_is_exact_and_recorded() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post_with(
        &mock,
        "/v1/chat/completions",
        &[("X-Custom", "yes")],
        chat_body("hello"),
    )
    .await;
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-test",
            "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "mock reply to: hello"},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = mock.last_request().unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.header("X-CUSTOM"), Some("yes"));
    assert!(r.headers.iter().all(|(k, _)| k == &k.to_lowercase()));
    assert_eq!(r.json(), chat_body("hello"));
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn openai_chat_reply_reads_text_parts_and_any_prefix() {
    let mock = MockProvider::start().await.unwrap();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "b"}]}]});
    let (status, v) = json_of(post(&mock, "/compat/chat/completions", body).await).await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: ab");
}

#[tokio::test]
async fn openai_chat_stream_with_usage() {
    let mock = MockProvider::start().await.unwrap();
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.len(), 5);
    for c in &chunks {
        assert_eq!(c["id"], "chatcmpl-mock");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["created"], 1700000000);
        assert_eq!(c["model"], "gpt-test");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "mock reply to: hi");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[3]["usage"], Value::Null);
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );
}

#[tokio::test]
async fn openai_chat_stream_without_usage_has_no_usage_chunk() {
    let mock = MockProvider::start().await.unwrap();
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let text = post(&mock, "/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert_eq!(data.len(), 5);
    assert_eq!(data[4], "[DONE]");
    for d in &data[..4] {
        let c: Value = serde_json::from_str(d).unwrap();
        assert!(c.get("usage").is_none());
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn azure_chat_uses_deployment_and_requires_api_version() {
    let mock = MockProvider::start().await.unwrap();
    let path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let (status, v) = json_of(
        post(
            &mock,
            path,
            json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["model"], "my-gpt");
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: x");
    assert_eq!(mock.last_request().unwrap().path, path);

    let (status, v) = json_of(
        post(
            &mock,
            "/openai/deployments/my-gpt/chat/completions",
            chat_body("x"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api-version"));
}

#[tokio::test]
async fn anthropic_messages_reply_is_exact() {
    let mock = MockProvider::start().await.unwrap();
    let (status, v) =
        json_of(post_with(&mock, "/v1/messages", &[AV], anthropic_body("bonjour")).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-test",
               "content": [{"type": "text", "text": "mock reply to: bonjour"}],
               "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 10, "output_tokens": 5}})
    );
}

#[tokio::test]
async fn anthropic_count_tokens_answers_in_anthropics_shape() {
    let mock = MockProvider::start_with(keyed()).await.unwrap();
    let path = "/v1/messages/count_tokens";
    let body = json!({"model": "claude-test", "messages": [{"role": "user", "content": "x"}]});
    let headers = [AV, ("x-api-key", "sekret")];
    let (status, v) = json_of(post_with(&mock, path, &headers, body.clone()).await).await;
    assert_eq!((status, v), (200, json!({"input_tokens": 10})));
    // Anthropic's auth and validation, as for `/v1/messages`.
    let (status, v) = json_of(post_with(&mock, path, &[AV], body).await).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["type"], "authentication_error");
    let (status, v) =
        json_of(post_with(&mock, path, &headers, json!({"model": "claude-test"})).await).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_requires_version_header_and_max_tokens() {
    let mock = MockProvider::start().await.unwrap();
    let (status, v) = json_of(post(&mock, "/v1/messages", anthropic_body("x")).await).await;
    assert_eq!(status, 400);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic-version"));

    let mut body = anthropic_body("x");
    body.as_object_mut().unwrap().remove("max_tokens");
    let (status, v) = json_of(post_with(&mock, "/v1/messages", &[AV], body).await).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn anthropic_stream_event_sequence() {
    let mock = MockProvider::start().await.unwrap();
    let mut body = anthropic_body("yo");
    body["stream"] = json!(true);
    let resp = post_with(&mock, "/v1/messages", &[AV], body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_named(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    assert_eq!(events[0].1["message"]["id"], "msg_mock");
    assert_eq!(events[0].1["message"]["model"], "claude-test");
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 10);
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "text_delta", "text": "mock reply to: yo"})
    );
    assert_eq!(events[5].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[5].1["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn gemini_generate_content_reply() {
    let mock = MockProvider::start().await.unwrap();
    let (status, v) = json_of(
        post(
            &mock,
            "/v1beta/models/gemini-test:generateContent",
            gemini_body("ciao"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let c = &v["candidates"][0];
    assert_eq!(c["content"]["parts"][0]["text"], "mock reply to: ciao");
    assert_eq!(c["content"]["role"], "model");
    assert_eq!(c["finishReason"], "STOP");
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15})
    );
    assert_eq!(v["modelVersion"], "gemini-test");
}

#[tokio::test]
async fn gemini_stream_sse_and_json_array() {
    let mock = MockProvider::start().await.unwrap();
    let resp = post(
        &mock,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
        gemini_body("ciao"),
    )
    .await;
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let chunks: Vec<Value> = sse_data(&resp.text().await.unwrap())
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks.len(), 2);
    let text: String = chunks
        .iter()
        .map(|c| {
            c["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "mock reply to: ciao");
    assert!(chunks[0]["candidates"][0].get("finishReason").is_none());
    assert_eq!(chunks[1]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(chunks[1]["usageMetadata"]["totalTokenCount"], 15);
    assert!(chunks.iter().all(|c| c["modelVersion"] == "gemini-test"));

    // Without alt=sse: the same chunks as one JSON array.
    let (status, v) = json_of(
        post(
            &mock,
            "/v1beta/models/gemini-test:streamGenerateContent",
            gemini_body("ciao"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v, Value::Array(chunks));
}

#[tokio::test]
async fn embeddings_openai_azure_and_gemini() {
    let mock = MockProvider::start().await.unwrap();
    let (status, v) = json_of(
        post(
            &mock,
            "/v1/embeddings",
            json!({"model": "emb", "input": ["a", "b"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().unwrap().len(), 3);
    }

    // base64, as the official SDKs ask for: 3 little-endian f32s.
    let (_, v) = json_of(
        post(
            &mock,
            "/v1/embeddings",
            json!({"model": "emb", "input": "a", "encoding_format": "base64"}),
        )
        .await,
    )
    .await;
    assert_eq!(v["data"][0]["embedding"], "zczMPc3MTD6amZk+");

    let (status, v) = json_of(
        post(
            &mock,
            "/openai/deployments/emb-dep/embeddings?api-version=2024-10-21",
            json!({"input": "a"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["model"], "emb-dep");

    let (status, v) = json_of(
        post(
            &mock,
            "/v1beta/models/text-embedding-004:embedContent",
            json!({"content": {"parts": [{"text": "a"}]}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["embedding"]["values"].as_array().unwrap().len(), 3);

    let req = json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}});
    let (status, v) = json_of(
        post(
            &mock,
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            json!({"requests": [req.clone(), req.clone(), req]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let embs = v["embeddings"].as_array().unwrap();
    assert_eq!(embs.len(), 3);
    assert!(embs
        .iter()
        .all(|e| e["values"].as_array().unwrap().len() == 3));
}

#[tokio::test]
async fn models_list_and_unknown_paths() {
    let mock = MockProvider::start().await.unwrap();
    let resp = client()
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "mock-model");
    assert_eq!(v["data"].as_array().unwrap().len(), 1);

    for path in [
        "/nope",
        "/v1beta/models/x:unknownAction",
        "/openai/deployments/",
    ] {
        let (status, v) = json_of(post(&mock, path, json!({})).await).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(v, json!({"error": "not found"}));
    }
    let resp = client()
        .get(format!("{}/v1/chat/completions", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(mock.requests().len(), 5);
}

#[tokio::test]
async fn bad_json_is_400_in_each_providers_shape() {
    let mock = MockProvider::start().await.unwrap();
    let send = |path: &'static str, body: &'static str| {
        let url = format!("{}{path}", mock.url());
        async move {
            let resp = client()
                .post(url)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            json_of(resp).await
        }
    };
    let (status, v) = send("/v1/chat/completions", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], Value::Null);

    let (status, v) = send("/v1/messages", "").await;
    assert_eq!(status, 400);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let (status, v) = send("/v1beta/models/g:generateContent", "[1,2]").await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], 400);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");

    // Valid JSON, missing required fields.
    let (status, v) = send("/v1/chat/completions", r#"{"model":"m"}"#).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));
    let (status, _) = send("/v1beta/models/g:generateContent", "{}").await;
    assert_eq!(status, 400);

    // Binary garbage in the body is not a crash either.
    let resp = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .body(vec![0xff, 0xfe, 0x00, 0x80])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(mock.requests().len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Auth

fn keyed() -> MockOptions {
    MockOptions {
        key: Some("sekret".into()),
        ..MockOptions::default()
    }
}

#[tokio::test]
async fn openai_auth() {
    let mock = MockProvider::start_with(keyed()).await.unwrap();
    let path = "/v1/chat/completions";
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let (status, v) = json_of(post_with(&mock, path, &headers, chat_body("x")).await).await;
        assert_eq!(status, 401);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["param"], Value::Null);
        assert!(v["error"]["message"].is_string());
    }
    let resp = post_with(
        &mock,
        path,
        &[("authorization", "Bearer sekret")],
        chat_body("x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // Every request is recorded, rejected or not.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].header("authorization"), Some("Bearer wrong"));
}

#[tokio::test]
async fn azure_auth() {
    let mock = MockProvider::start_with(keyed()).await.unwrap();
    let path = "/openai/deployments/d/chat/completions?api-version=2024-10-21";
    // A bearer token is not the api-key header.
    let (status, v) = json_of(
        post_with(
            &mock,
            path,
            &[("authorization", "Bearer sekret")],
            chat_body("x"),
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let resp = post_with(&mock, path, &[("api-key", "sekret")], chat_body("x")).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn anthropic_auth() {
    let mock = MockProvider::start_with(keyed()).await.unwrap();
    for key in [None, Some("wrong")] {
        let mut headers = vec![AV];
        if let Some(k) = key {
            headers.push(("x-api-key", k));
        }
        let (status, v) =
            json_of(post_with(&mock, "/v1/messages", &headers, anthropic_body("x")).await).await;
        assert_eq!(status, 401);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(v["error"]["message"].is_string());
    }
    let resp = post_with(
        &mock,
        "/v1/messages",
        &[AV, ("x-api-key", "sekret")],
        anthropic_body("x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn gemini_auth_header_or_query() {
    let mock = MockProvider::start_with(keyed()).await.unwrap();
    let path = "/v1beta/models/g:generateContent";
    let (status, v) =
        json_of(post_with(&mock, path, &[("x-goog-api-key", "bad")], gemini_body("x")).await).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert!(v["error"]["message"].is_string());
    let (status, _) =
        json_of(post(&mock, &format!("{path}?key=bad"), gemini_body("x")).await).await;
    assert_eq!(status, 401);

    let resp = post_with(
        &mock,
        path,
        &[("x-goog-api-key", "sekret")],
        gemini_body("x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = post(&mock, &format!("{path}?key=sekret"), gemini_body("x")).await;
    assert_eq!(resp.status(), 200);
    let resp = post(
        &mock,
        "/v1beta/models/g:streamGenerateContent?alt=sse&key=sekret",
        gemini_body("x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn per_kind_keys_override_the_shared_key() {
    let mock = MockProvider::start_with(MockOptions {
        key: Some("shared".into()),
        kind_keys: vec![(ProviderKind::Anthropic, "ant".into())],
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let ok = post_with(
        &mock,
        "/v1/messages",
        &[AV, ("x-api-key", "ant")],
        anthropic_body("x"),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let bad = post_with(
        &mock,
        "/v1/messages",
        &[AV, ("x-api-key", "shared")],
        anthropic_body("x"),
    )
    .await;
    assert_eq!(bad.status(), 401);
    let ok = post_with(
        &mock,
        "/v1/chat/completions",
        &[("authorization", "Bearer shared")],
        chat_body("x"),
    )
    .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn explicit_behaviours_skip_the_auth_check() {
    let mock = MockProvider::start_with(keyed()).await.unwrap();
    mock.push(Behaviour::json(200, json!({"ok": true})));
    let (status, v) = json_of(post(&mock, "/v1/chat/completions", chat_body("x")).await).await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"ok": true}));
    // The queue is empty again: Reply, with the auth check.
    let resp = post(&mock, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(resp.status(), 401);
}

// ---------------------------------------------------------------------------------------------
// Behaviours

#[tokio::test]
async fn pushed_behaviours_are_consumed_in_order_then_default() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::json(429, json!({"n": 1})));
    mock.push(Behaviour::json(503, json!({"n": 2})));
    let (s1, v1) = json_of(post(&mock, "/anything", json!({})).await).await;
    let (s2, v2) = json_of(post(&mock, "/anything", json!({})).await).await;
    assert_eq!((s1, v1), (429, json!({"n": 1})));
    assert_eq!((s2, v2), (503, json!({"n": 2})));
    let (s3, _) = json_of(post(&mock, "/v1/chat/completions", chat_body("x")).await).await;
    assert_eq!(s3, 200);

    mock.set_default(Behaviour::json(500, json!({"default": true})));
    mock.push(Behaviour::json(201, json!({})));
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 201);
    for _ in 0..2 {
        let (s, v) = json_of(post(&mock, "/x", json!({})).await).await;
        assert_eq!((s, v), (500, json!({"default": true})));
    }
    mock.set_default(Behaviour::Reply);
    mock.push(Behaviour::json(418, json!({})));
    mock.clear_queue();
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 404);
}

#[tokio::test]
async fn json_behaviour() {
    let mock = MockProvider::start().await.unwrap();
    let body = json!({"error": {"message": "overloaded", "type": "overloaded_error"}});
    mock.push(Behaviour::Json {
        status: 529,
        body: body.clone(),
    });
    let resp = post(&mock, "/v1/messages", anthropic_body("x")).await;
    assert_eq!(resp.status(), 529);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(resp.json::<Value>().await.unwrap(), body);
}

#[tokio::test]
async fn raw_behaviour_with_headers() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::Raw {
        status: 502,
        content_type: "text/html".into(),
        body: bytes::Bytes::from_static(b"<h1>bad gateway</h1>"),
        headers: vec![
            ("retry-after".into(), "7".into()),
            ("x-extra".into(), "1".into()),
        ],
    });
    let resp = post(&mock, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["x-extra"], "1");
    assert_eq!(resp.text().await.unwrap(), "<h1>bad gateway</h1>");

    // Invalid input never panics the server: it says so with a 500.
    mock.push(Behaviour::raw(1000, "text/plain", "x"));
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 500);
    mock.push(Behaviour::Raw {
        status: 200,
        content_type: "text/plain".into(),
        body: bytes::Bytes::new(),
        headers: vec![("bad header".into(), "v".into())],
    });
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 500);
    assert_eq!(post(&mock, "/v1/models", json!({})).await.status(), 404);
}

#[tokio::test]
async fn delay_behaviour_then_behaves() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::delay(
        Duration::from_millis(200),
        Behaviour::json(503, json!({"late": true})),
    ));
    let t = Instant::now();
    let (status, v) = json_of(post(&mock, "/x", json!({})).await).await;
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!((status, v), (503, json!({"late": true})));

    // Delay then Reply: the normal reply, late.
    mock.push(Behaviour::delay(
        Duration::from_millis(100),
        Behaviour::Reply,
    ));
    let t = Instant::now();
    let (status, v) = json_of(post(&mock, "/v1/chat/completions", chat_body("z")).await).await;
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: z");
}

#[tokio::test]
async fn drop_behaviour_closes_without_response() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::Drop);
    let err = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&chat_body("x"))
        .send()
        .await;
    assert!(err.is_err(), "expected an error, got {err:?}");
    // The request was read and recorded.
    assert_eq!(mock.last_request().unwrap().json(), chat_body("x"));
    // The mock still serves the next request.
    assert_eq!(
        post(&mock, "/v1/chat/completions", chat_body("x"))
            .await
            .status(),
        200
    );
    // A dropped request is not a client that went away.
    assert_eq!(mock.connections_closed_early(), 0);
}

#[tokio::test]
async fn sse_behaviour_writes_events_verbatim() {
    let mock = MockProvider::start().await.unwrap();
    let events = vec![
        "data: {\"a\":1}\n\n".to_owned(),
        ": comment\n\n".to_owned(),
        "event: x\ndata: 2\n\n".to_owned(),
    ];
    mock.push(Behaviour::Sse {
        events: events.clone(),
        interval: Duration::from_millis(20),
        hold_after: None,
    });
    let t = Instant::now();
    let resp = post(&mock, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.text().await.unwrap(), events.concat());
    assert!(t.elapsed() >= Duration::from_millis(40));
}

#[tokio::test]
async fn held_stream_waits_for_release() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::Sse {
        events: vec![
            "data: 1\n\n".into(),
            "data: 2\n\n".into(),
            "data: 3\n\n".into(),
        ],
        interval: Duration::ZERO,
        hold_after: Some(1),
    });
    let mut resp = post(&mock, "/v1/chat/completions", chat_body("x")).await;
    let mut got = String::new();
    while got.len() < "data: 1\n\n".len() {
        got.push_str(std::str::from_utf8(&resp.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert_eq!(got, "data: 1\n\n");
    // Held: nothing more arrives (a bounded wait proves the negative).
    let more = tokio::time::timeout(Duration::from_millis(150), resp.chunk()).await;
    assert!(more.is_err(), "the stream should be held, got {more:?}");
    mock.release();
    while let Some(c) = resp.chunk().await.unwrap() {
        got.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert_eq!(got, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
}

#[tokio::test]
async fn release_before_the_hold_point_counts_but_earlier_releases_do_not() {
    let mock = MockProvider::start().await.unwrap();
    mock.release(); // before the request: does not count
    mock.push(Behaviour::Sse {
        events: vec!["data: 1\n\n".into(), "data: 2\n\n".into()],
        interval: Duration::ZERO,
        hold_after: Some(2), // after every event, before the end
    });
    let mut resp = post(&mock, "/x", json!({})).await;
    let mut got = String::new();
    while got.len() < 18 {
        got.push_str(std::str::from_utf8(&resp.chunk().await.unwrap().unwrap()).unwrap());
    }
    let end = tokio::time::timeout(Duration::from_millis(150), resp.chunk()).await;
    assert!(end.is_err(), "the stream should not end before release");
    mock.release();
    assert!(resp.chunk().await.unwrap().is_none());
    assert_eq!(got, "data: 1\n\ndata: 2\n\n");

    // A release after the request arrived but before its hold point lets it through.
    mock.push(Behaviour::delay(
        Duration::from_millis(100),
        Behaviour::Sse {
            events: vec!["data: a\n\n".into(), "data: b\n\n".into()],
            interval: Duration::ZERO,
            hold_after: Some(1),
        },
    ));
    let pending = tokio::spawn(post_owned(mock.url(), "/x"));
    while mock.request_count() < 2 {
        tokio::task::yield_now().await;
    }
    mock.release();
    let text = pending.await.unwrap();
    assert_eq!(text, "data: a\n\ndata: b\n\n");
}

async fn post_owned(base: String, path: &'static str) -> String {
    client()
        .post(format!("{base}{path}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn sse_then_drop_cuts_the_stream() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::SseThenDrop {
        events: vec!["data: 1\n\n".into(), "data: 2\n\n".into()],
    });
    let mut resp = post(&mock, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(resp.status(), 200);
    let mut got = String::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(c)) => got.push_str(std::str::from_utf8(&c).unwrap()),
            Ok(None) => panic!("the stream ended cleanly"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, "data: 1\n\ndata: 2\n\n");
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );
    assert_eq!(mock.connections_closed_early(), 0);
}

#[tokio::test]
async fn client_dropping_mid_stream_is_seen() {
    let mock = MockProvider::start().await.unwrap();
    assert!(!mock.wait_connection_closed(Duration::from_millis(20)).await);
    mock.push(Behaviour::Sse {
        events: vec!["data: 1\n\n".into(), "data: 2\n\n".into()],
        interval: Duration::ZERO,
        hold_after: Some(1),
    });
    let mut resp = post(&mock, "/v1/chat/completions", chat_body("x")).await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: 1"));
    drop(resp); // the client goes away while the mock holds the rest
    assert!(mock.wait_connection_closed(Duration::from_secs(10)).await);
    assert_eq!(mock.connections_closed_early(), 1);
}

#[tokio::test]
async fn client_dropping_during_a_delay_is_seen() {
    let mock = MockProvider::start().await.unwrap();
    mock.push(Behaviour::delay(Duration::from_secs(30), Behaviour::Reply));
    let resp = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .timeout(Duration::from_millis(100))
        .json(&chat_body("x"))
        .send()
        .await;
    assert!(resp.unwrap_err().is_timeout());
    assert!(mock.wait_connection_closed(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn completed_streams_are_not_early_closes() {
    let mock = MockProvider::start().await.unwrap();
    let mut body = chat_body("x");
    body["stream"] = json!(true);
    let text = post(&mock, "/v1/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(!mock.wait_connection_closed(Duration::from_millis(50)).await);
}

// ---------------------------------------------------------------------------------------------
// Server

#[tokio::test]
async fn keep_alive_reuses_connections() {
    let mock = MockProvider::start().await.unwrap();
    let c = client();
    for _ in 0..5 {
        let resp = c
            .post(format!("{}/v1/chat/completions", mock.url()))
            .json(&chat_body("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!(mock.connections_accepted(), 1);
    assert_eq!(mock.requests().len(), 5);
}

#[tokio::test]
async fn recording_can_be_turned_off() {
    let mock = MockProvider::start_with(MockOptions {
        record: false,
        ..MockOptions::default()
    })
    .await
    .unwrap();
    for _ in 0..3 {
        post(&mock, "/v1/chat/completions", chat_body("x")).await;
    }
    assert!(mock.requests().is_empty());
    assert!(mock.last_request().is_none());
    assert_eq!(mock.request_count(), 3);
    mock.set_record(true);
    post(&mock, "/v1/chat/completions", chat_body("x")).await;
    assert_eq!(mock.requests().len(), 1);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn concurrent_requests_are_all_recorded() {
    let mock = MockProvider::start().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = format!("{}/v1/chat/completions", mock.url());
        tasks.push(tokio::spawn(async move {
            let v: Value = client()
                .post(url)
                .json(&chat_body(&format!("n{i}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), format!("mock reply to: n{i}"));
    }
    assert_eq!(mock.requests().len(), 20);
}

#[tokio::test]
async fn dropping_the_provider_closes_the_listener() {
    let mock = MockProvider::start().await.unwrap();
    let addr = mock.addr();
    assert_eq!(mock.url(), format!("http://127.0.0.1:{}", addr.port()));
    drop(mock);
    // Either the connect is refused, or (if it raced the close) the connection is reset unanswered.
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        client()
            .get(format!("http://{addr}/v1/models"))
            .send()
            .await
    })
    .await
    .expect("no answer within 10s");
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn only_loopback_addresses() {
    let err = MockProvider::start_with(MockOptions {
        addr: Some("0.0.0.0:0".parse().unwrap()),
        ..MockOptions::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

// ---------------------------------------------------------------------------------------------
// Control API

#[tokio::test]
async fn control_api_over_http() {
    let mock = MockProvider::start().await.unwrap();
    let c = client();
    let ctl = |m: reqwest::Method, p: &str| c.request(m, format!("{}/_mock/{p}", mock.url()));

    // Queue: an error, a delay, a drop.
    let v: Value = ctl(reqwest::Method::POST, "behaviour")
        .json(&json!([
            {"status": 503, "body": {"error": "busy"}},
            {"delay_ms": 100},
            {"drop": true},
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"queued": 3}));

    let (s, v) = json_of(post(&mock, "/v1/chat/completions", chat_body("a")).await).await;
    assert_eq!((s, v), (503, json!({"error": "busy"})));
    let t = Instant::now();
    let (s, v) = json_of(post(&mock, "/v1/chat/completions", chat_body("b")).await).await;
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(s, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: b");
    let dropped = c
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&chat_body("c"))
        .send()
        .await;
    assert!(dropped.is_err());

    // Raw, SSE, times, default.
    let resp = ctl(reqwest::Method::POST, "behaviour")
        .json(&json!([
            {"status": 500, "body": "oops", "content_type": "text/plain", "times": 2},
            {"sse": ["data: x\n\n"], "interval_ms": 0},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"queued": 3}));
    for _ in 0..2 {
        let resp = post(&mock, "/x", json!({})).await;
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.text().await.unwrap(), "oops");
    }
    assert_eq!(
        post(&mock, "/x", json!({})).await.text().await.unwrap(),
        "data: x\n\n"
    );
    ctl(reqwest::Method::POST, "behaviour")
        .json(&json!({"status": 418, "body": {}, "default": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 418);
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 418);
    ctl(reqwest::Method::DELETE, "behaviour")
        .send()
        .await
        .unwrap();
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 404);

    // A bad spec is a 400 and queues nothing.
    let resp = ctl(reqwest::Method::POST, "behaviour")
        .json(&json!([{"status": 200}, {"status": "nope"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = ctl(reqwest::Method::POST, "behaviour")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(post(&mock, "/x", json!({})).await.status(), 404);

    // Recorded requests: control requests are not among them.
    let list: Value = ctl(reqwest::Method::GET, "requests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 10);
    assert_eq!(list[0]["method"], "POST");
    assert_eq!(list[0]["path"], "/v1/chat/completions");
    assert_eq!(list[0]["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(list[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, chat_body("a"));
    assert_eq!(mock.requests().len(), 10);

    let stats: Value = ctl(reqwest::Method::GET, "stats")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 10);
    assert_eq!(stats["recorded"], 10);

    let v: Value = ctl(reqwest::Method::DELETE, "requests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"cleared": 10}));
    assert!(mock.requests().is_empty());
    assert_eq!(
        ctl(reqwest::Method::GET, "nope")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn control_api_release_and_hold() {
    let mock = MockProvider::start().await.unwrap();
    let c = client();
    c.post(format!("{}/_mock/behaviour", mock.url()))
        .json(&json!({"sse": ["data: 1\n\n", "data: 2\n\n"], "hold_after": 1}))
        .send()
        .await
        .unwrap();
    let mut resp = post(&mock, "/x", json!({})).await;
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"data: 1\n\n");
    let r = c
        .post(format!("{}/_mock/release", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"data: 2\n\n");
    assert!(resp.chunk().await.unwrap().is_none());
}
