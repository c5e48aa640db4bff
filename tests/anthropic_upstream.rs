//! OpenAI clients over an Anthropic upstream: the exact request the provider receives and the
//! exact answer the client gets, for the golden fixtures in tests/fixtures/anthropic.
mod common;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "ant-api03-secret-key";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/anthropic/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

async fn setup() -> (MockProvider, GatewayProcess) {
    let mock = MockProvider::start_with(MockOptions {
        key: Some(KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  anthropic: {{ kind: anthropic, endpoints: [\"{}\"], api_key: {KEY} }}\nmodels:\n  claude-fast: {{ provider: anthropic, model: claude-sonnet-4-5-20250929 }}\n",
        mock.url()
    ));
    (mock, gw)
}

#[tokio::test]
async fn requests_arrive_translated() {
    let (mock, gw) = setup().await;
    for name in [
        "request_text_system",
        "request_images",
        "request_tools",
        "request_assistant_text_and_tool",
    ] {
        let (status, headers, answer) = post_json(
            &gw.url("/v1/chat/completions"),
            &fixture(&format!("{name}.openai")),
        )
        .await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(header(&headers, "x-dragoman-provider"), "anthropic");
        let got = mock.last_request().unwrap();
        assert_eq!(got.path, "/v1/messages", "{name}");
        assert_eq!(got.header("x-api-key"), Some(KEY));
        assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(
            got.header("authorization"),
            None,
            "client key leaked upstream"
        );
        assert_eq!(got.json(), fixture(&format!("{name}.anthropic")), "{name}");
    }
}

#[tokio::test]
async fn responses_arrive_translated() {
    let (mock, gw) = setup().await;
    for name in [
        "response_text",
        "response_tool_use",
        "response_thinking",
        "response_refusal_empty",
    ] {
        let upstream = fixture(&format!("{name}.anthropic"));
        let names_model = upstream.get("model").is_some();
        mock.push(Behaviour::Json {
            status: 200,
            body: upstream,
        });
        let (status, headers, mut answer) = post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(header(&headers, "x-dragoman-model"), "claude-fast");
        assert!(header(&headers, "content-type").starts_with("application/json"));
        let mut expected = fixture(&format!("{name}.openai"));
        // `created` is the gateway's clock.
        assert!(answer["created"].as_u64().unwrap() > 1_700_000_000);
        answer["created"] = expected["created"].take();
        expected["created"] = answer["created"].clone();
        if !names_model {
            // A response without `model` reports the configured upstream id.
            expected["model"] = json!("claude-sonnet-4-5-20250929");
        }
        assert_eq!(answer, expected, "{name}");
    }
}

#[tokio::test]
async fn default_mock_reply_round_trip() {
    let (_mock, gw) = setup().await;
    let (status, _, answer) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "claude-fast", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hello there"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 10);
    assert_eq!(answer["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn anthropic_errors_keep_status_and_message() {
    let (mock, gw) = setup().await;
    let req = json!({"model": "claude-fast", "messages": [{"role": "user", "content": "x"}]});
    for (status, kind, message) in [
        (529, "overloaded_error", "Overloaded"),
        (
            400,
            "invalid_request_error",
            "messages: text content blocks must be non-empty",
        ),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
    ] {
        mock.push(Behaviour::Json {
            status,
            body: json!({"type": "error", "error": {"type": kind, "message": message}}),
        });
        let (got, _, err) = post_json(&gw.url("/v1/chat/completions"), &req).await;
        assert_eq!(got, status, "{err}");
        assert_eq!(err["error"]["message"], message);
        assert_eq!(err["error"]["type"], kind);
    }
}

#[tokio::test]
async fn wrong_key_surfaces_as_401_without_the_key() {
    let mock = MockProvider::start_with(MockOptions {
        key: Some("the-right-key".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  a: {{ kind: anthropic, endpoints: [\"{}\"], api_key: the-wrong-key }}\nmodels:\n  c: {{ provider: a }}\n",
        mock.url()
    ));
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "c", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["type"], "authentication_error");
    assert!(!err.to_string().contains("the-wrong-key"));
}

#[tokio::test]
async fn streaming_is_translated_to_openai_chunks() {
    let (mock, gw) = setup().await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "claude-fast", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(resp.headers(), "content-type").starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or(e))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "mock reply to: hello");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 10);
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    for c in &chunks {
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["created"], chunks[0]["created"]);
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["stream"], true);
}

#[tokio::test]
async fn complete_endpoint_over_anthropic() {
    let (mock, gw) = setup().await;
    let (status, _, answer) = post_json(
        &gw.url("/v1/complete"),
        &json!({"text": "2+2?", "model_type": "claude-fast"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"data": "mock reply to: 2+2?", "model_used": "claude-fast"})
    );
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["max_tokens"], 4096);
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "2+2?"}])
    );
}

#[tokio::test]
async fn translation_errors_are_400_and_never_reach_upstream() {
    let (mock, gw) = setup().await;
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "claude-fast", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{broken"}}]}
        ]}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["param"]
            .as_str()
            .unwrap()
            .contains("arguments"),
        "{err}"
    );
    assert!(mock.requests().is_empty());
}

/// A translated answer has no length, so Pingora writes its head, its body and the closing
/// chunk separately; the gateway corks the client's socket so they leave as one segment
/// (src/proxy/cork.rs). This counts the segments the client receives.
#[tokio::test]
async fn a_translated_answer_reaches_the_client_in_one_segment() {
    use std::io::{Read, Write};
    let (mock, gw) = setup().await;
    let body = json!({"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let port = gw.port;
    let (segments, answer) = tokio::task::spawn_blocking(move || {
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut results = Vec::new();
        // Several requests on one connection: each answer must come in one segment.
        for _ in 0..5 {
            let before = data_segments_in(&client);
            client.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            while !answer.ends_with(b"0\r\n\r\n") {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed early");
                answer.extend_from_slice(&buf[..n]);
            }
            results.push((data_segments_in(&client) - before, answer));
        }
        results
    })
    .await
    .unwrap()
    .into_iter()
    .map(|(n, answer)| (n, String::from_utf8_lossy(&answer).into_owned()))
    .unzip::<_, _, Vec<u32>, Vec<String>>();
    assert!(
        answer.iter().all(|a| a.starts_with("HTTP/1.1 200")
            && a.to_ascii_lowercase()
                .contains("transfer-encoding: chunked")),
        "{answer:?}"
    );
    assert_eq!(segments, [1; 5], "segments per answer; answers: {answer:?}");
    assert_eq!(mock.requests().len(), 5);
}

#[tokio::test]
async fn a_stream_error_that_echoes_the_key_reaches_the_client_redacted() {
    let (mock, gw) = setup().await;
    mock.push(Behaviour::sse([
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n".to_string(),
        format!("event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"key {KEY} is overloaded\"}}}}\n\n"),
    ]));
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "claude-fast", "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("overloaded"), "no error event: {text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(
        !text.contains(KEY),
        "the provider key reached the client: {text}"
    );
}
