//! OpenAI clients over a Gemini upstream: the exact request the provider receives and the exact
//! answer the client gets, for the golden fixtures in tests/fixtures/gemini; embeddings; key
//! placement in a header (default) or the query string.
mod common;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "AIzaSy-gemini-secret";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/gemini/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

async fn setup(auth: &str) -> (MockProvider, GatewayProcess) {
    let mock = MockProvider::start_with(MockOptions {
        key: Some(KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  google: {{ kind: gemini, endpoints: [\"{}\"], api_key: {KEY} {auth} }}\nmodels:\n  gemini-2.5-flash: {{ provider: google }}\n  embed: {{ provider: google, model: text-embedding-004 }}\n",
        mock.url()
    ));
    (mock, gw)
}

/// Generated ids differ per call: check their form, then blank them.
fn blank_ids(v: &mut Value) {
    let id = v["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("chatcmpl-"), "{v}");
    v["id"] = json!("<id>");
    for choice in v["choices"].as_array_mut().into_iter().flatten() {
        for call in choice["message"]["tool_calls"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            call["id"] = json!("<id>");
        }
    }
}

#[tokio::test]
async fn requests_arrive_translated() {
    let (mock, gw) = setup("").await;
    for name in [
        "request_text_system",
        "request_images",
        "request_tools",
        "request_tool_results",
        "request_generation_config",
    ] {
        let (status, headers, answer) = post_json(
            &gw.url("/v1/chat/completions"),
            &fixture(&format!("{name}.openai")),
        )
        .await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(header(&headers, "x-dragoman-provider"), "google");
        let got = mock.last_request().unwrap();
        assert_eq!(
            got.path, "/v1beta/models/gemini-2.5-flash:generateContent",
            "{name}"
        );
        assert_eq!(got.header("x-goog-api-key"), Some(KEY));
        assert_eq!(got.header("authorization"), None);
        assert_eq!(got.json(), fixture(&format!("{name}.gemini")), "{name}");
    }
}

#[tokio::test]
async fn responses_arrive_translated() {
    let (mock, gw) = setup("").await;
    for name in [
        "response_text",
        "response_function_call",
        "response_thinking",
        "response_blocked",
        "response_multiple_candidates",
    ] {
        mock.push(Behaviour::Json {
            status: 200,
            body: fixture(&format!("{name}.gemini")),
        });
        let (status, _, mut answer) = post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {answer}");
        let mut expected = fixture(&format!("{name}.openai"));
        blank_ids(&mut answer);
        blank_ids(&mut expected);
        answer["created"] = expected["created"].clone();
        assert_eq!(answer, expected, "{name}");
    }
}

#[tokio::test]
async fn key_in_the_query_string_when_configured() {
    let (mock, gw) = setup(", auth: { query: key }").await;
    let (status, _, answer) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "q"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = mock.last_request().unwrap();
    assert_eq!(
        got.path,
        format!("/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}")
    );
    assert_eq!(got.header("x-goog-api-key"), None);
    assert!(!gw.stderr().contains(KEY), "key in the gateway's log");
}

#[tokio::test]
async fn gemini_errors_keep_status_and_message() {
    let (mock, gw) = setup("").await;
    mock.push(Behaviour::Json {
        status: 429,
        body: json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}),
    });
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        err["error"]["message"],
        "Resource has been exhausted (e.g. check quota)."
    );
    assert_eq!(err["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn embeddings_single_and_batch_float_and_base64() {
    let (mock, gw) = setup("").await;
    let (status, _, single) = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "embed", "input": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{single}");
    let got = mock.last_request().unwrap();
    assert_eq!(got.path, "/v1beta/models/text-embedding-004:embedContent");
    assert_eq!(
        got.json(),
        json!({"content": {"parts": [{"text": "hello"}]}})
    );
    assert_eq!(single["object"], "list");
    assert_eq!(single["model"], "embed");
    assert_eq!(single["data"][0]["object"], "embedding");
    assert_eq!(single["data"][0]["index"], 0);
    let floats: Vec<f64> = single["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(!floats.is_empty());

    let (status, _, batch) = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "embed", "input": ["a", "b"], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let got = mock.last_request().unwrap();
    assert_eq!(
        got.path,
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    );
    assert_eq!(
        got.json()["requests"][1],
        json!({"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}})
    );
    assert_eq!(batch["data"].as_array().unwrap().len(), 2);
    assert_eq!(batch["data"][1]["index"], 1);
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(batch["data"][1]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len() % 4, 0);
    assert_eq!(raw.len() / 4, floats.len());
}
