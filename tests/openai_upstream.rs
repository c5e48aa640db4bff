//! OpenAI-kind and Azure upstreams: bodies pass through with only `model` rewritten, keys are
//! placed per provider, answers and errors reach the client faithfully.
mod common;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "sk-upstream-key-0123456789";

async fn setup() -> (MockProvider, GatewayProcess) {
    let mock = MockProvider::start_with(MockOptions {
        key: Some(KEY.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = GatewayProcess::start(&format!(
        r#"
providers:
  local: {{ kind: openai, endpoints: ["{url}/v1"], api_key: "{KEY}", timeout: 2s }}
  azure: {{ kind: azure-openai, endpoints: ["{url}"], api_key: "{KEY}", api_version: "2024-10-21" }}
models:
  llama: {{ provider: local, model: meta-llama/Meta-Llama-3-8B-Instruct }}
  gpt-4o-mini: {{ provider: azure, model: my-deployment }}
  slow: {{ provider: local, timeout: 300ms }}
"#,
        url = mock.url()
    ));
    (mock, gw)
}

#[tokio::test]
async fn body_passes_through_with_only_the_model_rewritten() {
    let (mock, gw) = setup().await;
    // Odd spacing, key order and unknown fields must survive byte for byte.
    let body = r#"{ "messages":[{"role":"user","content":"hi"}],"model" :  "llama", "x_vendor": {"a": [1, 2.50]}, "temperature":0.2 }"#;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer client-key")
        .header("x-api-key", "client-key")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "x-dragoman-model"), "llama");
    assert_eq!(header(resp.headers(), "x-dragoman-provider"), "local");
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hi"
    );

    let got = mock.last_request().unwrap();
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        got.header("x-api-key"),
        None,
        "client credentials must not reach upstream"
    );
    assert_eq!(got.header("host"), Some(mock.addr().to_string().as_str()));
    assert_eq!(
        std::str::from_utf8(&got.body).unwrap(),
        r#"{ "messages":[{"role":"user","content":"hi"}],"model" :  "meta-llama/Meta-Llama-3-8B-Instruct", "x_vendor": {"a": [1, 2.50]}, "temperature":0.2 }"#
    );
}

#[tokio::test]
async fn upstream_response_reaches_the_client_unchanged() {
    let (mock, gw) = setup().await;
    let upstream = json!({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1717171717,
        "model": "meta-llama/Meta-Llama-3-8B-Instruct", "system_fingerprint": "fp_x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            "finish_reason": "tool_calls", "logprobs": null}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    });
    mock.push(Behaviour::Json {
        status: 200,
        body: upstream.clone(),
    });
    let (status, _, answer) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "llama", "messages": [{"role": "user", "content": "weather?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer, upstream);
}

/// The answer's head as an HTTP/1 client reads it off the wire: the gateway's headers once each,
/// standard names in title case and the others lowercase (the upstream's spelling is not kept).
#[tokio::test]
async fn the_answer_head_on_the_wire_names_each_header_once() {
    use std::io::{Read, Write};
    let (_mock, gw) = setup().await;
    let body = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;
    let port = gw.port;
    // Blocking reads off the test's runtime, where the mock provider runs.
    let answer = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
             X-Request-Id: wire-1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert!(lines[0].starts_with("HTTP/1.1 200"), "{answer}");
    for expected in [
        "Content-Type: application/json",
        "x-dragoman-model: llama",
        "x-dragoman-provider: local",
        "x-dragoman-attempts: 1",
        "x-request-id: wire-1",
    ] {
        let name = expected.split(':').next().unwrap_or_default();
        let named: Vec<&&str> = lines
            .iter()
            .filter(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .collect();
        assert_eq!(named, [&expected], "{head}");
    }
}

#[tokio::test]
async fn azure_gets_deployment_path_version_and_api_key_header() {
    let (mock, gw) = setup().await;
    let (status, headers, answer) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&headers, "x-dragoman-provider"), "azure");
    let got = mock.last_request().unwrap();
    assert_eq!(
        got.path,
        "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(got.header("api-key"), Some(KEY));
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.json()["model"], "my-deployment");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "mock reply to: hello"
    );
}

#[tokio::test]
async fn streaming_passes_through() {
    let (mock, gw) = setup().await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "llama", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(resp.headers(), "content-type").starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        mock.last_request().unwrap().header("accept"),
        Some("text/event-stream")
    );
}

#[tokio::test]
async fn models_are_listed() {
    let (_mock, gw) = setup().await;
    let resp = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["gpt-4o-mini", "llama", "slow"]);
    assert_eq!(list["data"][0]["object"], "model");
}

#[tokio::test]
async fn complete_endpoint_over_openai() {
    let (mock, gw) = setup().await;
    let (status, headers, answer) = post_json(
        &gw.url("/v1/complete"),
        &json!({"text": "write a haiku", "model_type": "llama"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"data": "mock reply to: write a haiku", "model_used": "llama"})
    );
    assert_eq!(header(&headers, "x-dragoman-model"), "llama");
    let sent = mock.last_request().unwrap().json();
    assert_eq!(sent["model"], "meta-llama/Meta-Llama-3-8B-Instruct");
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "write a haiku"}])
    );
}

#[tokio::test]
async fn client_errors_are_openai_errors() {
    let (mock, gw) = setup().await;
    let url = gw.url("/v1/chat/completions");
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{not json", 400, "not a valid"),
        ("[]", 400, "not a valid"),
        (r#"{"messages": []}"#, 400, "'model'"),
        (r#"{"model": 7}"#, 400, "'model'"),
        (r#"{"model": "llama", "stream": "yes"}"#, 400, "not a valid"),
        (
            r#"{"model": "gpt-5-imaginary", "messages": []}"#,
            404,
            "gpt-5-imaginary",
        ),
    ];
    for (body, want, needle) in cases {
        let resp = client().post(&url).body(body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{body}");
        let err: Value = resp.json().await.unwrap();
        let msg = err["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {err}");
        assert!(err["error"]["type"].is_string(), "{err}");
        assert!(err["error"].as_object().unwrap().contains_key("param"));
        assert!(err["error"].as_object().unwrap().contains_key("code"));
    }
    // An unknown path and a wrong method: the README's `unknown_url`, in OpenAI's shape.
    for (request, want) in [
        (client().get(gw.url("/v1/nothing-here")), 404),
        (client().get(gw.url("/v1/chat/completions")), 405),
        (client().post(gw.url("/v1/models")), 405),
    ] {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "unknown_url", "{err}");
        assert!(err["error"]["type"].is_string(), "{err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    assert!(
        mock.requests().is_empty(),
        "no bad request may reach the upstream"
    );
}

#[tokio::test]
async fn upstream_errors_keep_status_and_message_in_any_shape() {
    let (mock, gw) = setup().await;
    let url = gw.url("/v1/chat/completions");
    let req = json!({"model": "llama", "messages": [{"role": "user", "content": "x"}]});
    let cases = vec![
        (
            Behaviour::Json {
                status: 422,
                body: json!({"detail": "max_tokens must be positive"}),
            },
            422,
            "max_tokens must be positive",
            None,
        ),
        (
            Behaviour::Raw {
                status: 503,
                content_type: "text/plain".into(),
                body: "upstream overloaded, try later".into(),
                headers: vec![],
            },
            503,
            "upstream overloaded, try later",
            None,
        ),
        (
            Behaviour::Json {
                status: 401,
                body: json!({"error": {"message": format!("Incorrect API key provided: {KEY}."), "type": "invalid_request_error", "code": "invalid_api_key"}}),
            },
            401,
            "Incorrect API key provided",
            Some("invalid_api_key"),
        ),
        (
            Behaviour::Json {
                status: 429,
                body: json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
            },
            429,
            "Rate limit reached for requests",
            Some("rate_limit_exceeded"),
        ),
    ];
    for (behaviour, want, message, code) in cases {
        mock.push(behaviour);
        let (status, headers, err) = post_json(&url, &req).await;
        assert_eq!(status, want, "{err}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(message), "{err}");
        assert!(!msg.contains(KEY), "provider key leaked: {err}");
        assert_eq!(err["error"]["code"].as_str(), code, "{err}");
        assert_eq!(header(&headers, "x-dragoman-model"), "llama");
    }
}

#[tokio::test]
async fn timeout_is_504_and_connect_failure_is_502() {
    let (mock, gw) = setup().await;
    mock.push(Behaviour::Delay {
        delay: std::time::Duration::from_secs(3),
        then: Box::new(Behaviour::Reply),
    });
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "slow", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 504, "{err}");
    assert_eq!(err["error"]["code"], "upstream_timeout");

    let dead = free_port();
    let gw2 = GatewayProcess::start(&format!(
        "providers:\n  gone: {{ kind: openai, endpoints: [\"http://127.0.0.1:{dead}/v1\"], api_key: k, health_check: {{ enabled: false }} }}\nmodels:\n  m: {{ provider: gone }}\n"
    ));
    let (status, headers, err) = post_json(
        &gw2.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 502, "{err}");
    assert_eq!(err["error"]["code"], "upstream_unreachable");
    assert_eq!(header(&headers, "x-dragoman-provider"), "gone");
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "internal addresses leak: {err}"
    );
}

/// An unreachable instance is logged in one short line per event, naming the provider and the
/// instance, never Pingora's dump of the peer and its options (over 1 KB a line): both when a
/// request's connect fails and when an active health check marks the instance down.
#[tokio::test]
async fn an_unreachable_instance_is_logged_in_one_short_line() {
    let dead = free_port();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  \
         gone: {{ kind: openai, endpoints: [\"http://127.0.0.1:{dead}/v1\"], api_key: sk-gone-key-1, health_check: {{ enabled: false }} }}\n  \
         checked: {{ kind: anthropic, endpoints: [\"http://127.0.0.1:{dead}\"], api_key: sk-checked-key-1, health_check: {{ interval: 100ms }} }}\n\
         models:\n  m: {{ provider: gone }}\n"
    ));
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 502, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log = loop {
        let log = gw.stderr();
        if log.contains("Fail to proxy") && log.contains("becomes unhealthy") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let about =
        |needle: &str| -> Vec<&str> { log.lines().filter(|l| l.contains(needle)).collect() };
    let failed = about("Fail to proxy");
    let unhealthy = about("becomes unhealthy");
    assert_eq!(failed.len(), 1, "{log}");
    assert_eq!(unhealthy.len(), 1, "{log}");
    let instance = format!("instance http://127.0.0.1:{dead}");
    for (line, provider) in [(failed[0], "gone"), (unhealthy[0], "checked")] {
        assert!(line.len() < 300, "{} bytes: {line}", line.len());
        assert!(
            line.contains(&format!("provider `{provider}` {instance}")),
            "{line}"
        );
        assert!(line.contains("ConnectRefused"), "{line}");
    }
    for line in log.lines() {
        assert!(line.len() < 300, "{} bytes: {line}", line.len());
    }
}

#[tokio::test]
async fn dropped_upstream_connection_is_a_502() {
    let (mock, gw) = setup().await;
    mock.push(Behaviour::Drop);
    mock.push(Behaviour::Drop);
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "llama", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 502, "{err}");
    assert!(err["error"]["message"].is_string());
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "max_request_bytes: 1000\nproviders:\n  p: {{ kind: openai, endpoints: [\"{}/v1\"], auth: none }}\nmodels:\n  m: {{ provider: p }}\n",
        mock.url()
    ));
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let (status, _, err) = post_json(&gw.url("/v1/chat/completions"), &big).await;
    assert_eq!(status, 413);
    assert_eq!(err["error"]["code"], "request_too_large");
    // Chunked bodies (no content-length) are bounded too.
    let stream =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.to_string().into_bytes())]);
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(mock.requests().is_empty());
    let small = json!({"model": "m", "messages": [{"role": "user", "content": "ok"}]});
    let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &small).await;
    assert_eq!(status, 200);
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        None,
        "auth: none sends no key"
    );
}

#[tokio::test]
async fn embeddings_pass_through_to_openai_and_azure() {
    let (mock, gw) = setup().await;
    let (status, _, answer) = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "llama", "input": ["a", "b"], "encoding_format": "float"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    let got = mock.last_request().unwrap();
    assert_eq!(got.path, "/v1/embeddings");
    assert_eq!(got.json()["model"], "meta-llama/Meta-Llama-3-8B-Instruct");
    let (status, _, _) = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "gpt-4o-mini", "input": "a"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        mock.last_request().unwrap().path,
        "/openai/deployments/my-deployment/embeddings?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn provider_key_never_reaches_the_log() {
    let (mock, gw) = setup().await;
    mock.push(Behaviour::Drop);
    mock.push(Behaviour::Json {
        status: 500,
        body: json!({"error": {"message": format!("bad key {KEY}")}}),
    });
    for _ in 0..2 {
        post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "llama", "messages": []}),
        )
        .await;
    }
    let log = gw.stderr();
    assert!(!log.is_empty());
    assert!(!log.contains(KEY), "{log}");
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_metrics() {
    let (_mock, gw) = setup().await;
    let get = |path: &str| client().get(gw.admin_url(path)).send();
    let health = get("/healthz").await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), 200, "every provider resolves to loopback");
    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(header(metrics.headers(), "content-type").starts_with("text/plain"));
    assert_eq!(get("/v1/models").await.unwrap().status(), 404);
    // The admin endpoints are not on the public listener.
    let public = client().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn unresolvable_upstream_is_not_ready_and_answers_503() {
    let gw = GatewayProcess::start(
        "providers:\n  nowhere: { kind: openai, auth: none, endpoints: [\"http://dragoman-test.invalid/v1\"] }\nmodels:\n  m: { provider: nowhere }\n",
    );
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("nowhere"));
    let (status, _, err) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "upstream_unavailable");
}

/// Credentials, account selectors and hop-by-hop fields never reach the upstream; other client
/// headers do.
#[tokio::test]
async fn client_credentials_and_hop_by_hop_headers_stay_behind() {
    let (mock, gw) = setup().await;
    let stripped = [
        ("authorization", "Bearer client-key"),
        ("proxy-authorization", "Basic cHJveHk="),
        ("x-api-key", "client-key"),
        ("api-key", "client-key"),
        ("x-goog-api-key", "client-key"),
        ("cookie", "session=1"),
        ("openai-organization", "org-client"),
        ("openai-project", "proj-client"),
        ("anthropic-version", "2023-06-01"),
        ("accept-encoding", "gzip"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
    ];
    let mut request = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-trace-id", "t-1")
        .json(&json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}));
    for (name, value) in stripped {
        request = request.header(name, value);
    }
    let resp = request.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = mock.last_request().unwrap();
    for (name, _) in stripped {
        let expected = (name == "authorization").then_some(format!("Bearer {KEY}"));
        assert_eq!(got.header(name).map(str::to_owned), expected, "{name}");
    }
    assert_eq!(got.header("x-trace-id"), Some("t-1"));
}

/// Reads one HTTP/1.1 request with a `Content-Length` body from `conn`; `None` at a clean EOF.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if request.len() >= head_end + 4 + length {
                return Some(request);
            }
        }
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
    }
}

/// Pingora writes a request's head and body with a send each; the gateway corks the upstream
/// socket so both leave as one segment (src/proxy/cork.rs). A bare upstream counts the segments
/// each proxied request arrives in.
#[tokio::test]
async fn a_proxied_request_reaches_the_upstream_in_one_segment() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let segments = Arc::new(Mutex::new(Vec::new()));
    let seen = segments.clone();
    // Runs until the test's runtime ends; health checks connect and leave, which ends their task.
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // A new connection has received no data; the next request waits for this answer.
                let mut before = 0;
                loop {
                    if read_request(&mut conn).await.is_none() {
                        return;
                    }
                    let after = data_segments_in(&conn);
                    seen.lock().unwrap().push(after - before);
                    before = after;
                    let answer = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = GatewayProcess::start(&format!(
        r#"
providers:
  bare: {{ kind: openai, auth: none, endpoints: ["http://127.0.0.1:{port}/v1"] }}
models:
  m: {{ provider: bare }}
"#
    ));
    // A 4 KB body: a head and a body that fit one loopback segment together.
    let text = "x".repeat(4000);
    let client = client();
    for _ in 0..5 {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["choices"][0]["message"]["content"],
            "ok"
        );
    }
    assert_eq!(
        *segments.lock().unwrap(),
        [1; 5],
        "segments per upstream request"
    );
}

#[tokio::test]
async fn headers_that_reveal_the_operators_account_are_not_passed_to_clients() {
    let (mock, gw) = setup().await;
    let reply = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]});
    mock.push(Behaviour::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: reply.to_string().into(),
        headers: [
            ("openai-organization", "acme-corp-org"),
            ("openai-project", "proj_secret"),
            ("anthropic-organization-id", "org-uuid"),
            ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("anthropic-ratelimit-tokens-remaining", "1000"),
            ("set-cookie", "__cf_bm=abc"),
            ("openai-processing-ms", "12"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    });
    let (status, headers, body) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "llama", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for hidden in [
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "anthropic-ratelimit-tokens-remaining",
        "set-cookie",
    ] {
        assert!(headers.get(hidden).is_none(), "{hidden} reached the client");
    }
    // Harmless upstream headers still do.
    assert_eq!(header(&headers, "openai-processing-ms"), "12");
}

#[tokio::test]
async fn a_passed_through_stream_that_echoes_the_key_reaches_the_client_redacted() {
    let (mock, gw) = setup().await;
    // The key split across two writes of the upstream, and whole in a later event.
    let (head, tail) = KEY.split_at(KEY.len() / 2);
    for model in ["llama", "gpt-4o-mini"] {
        mock.push(Behaviour::Sse {
            events: vec![
                "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n".to_string(),
                format!("data: {{\"error\":{{\"message\":\"key {head}"),
                format!("{tail} is over quota; {KEY}\",\"type\":\"insufficient_quota\"}}}}\n\n"),
                "data: [DONE]\n\n".to_string(),
            ],
            interval: std::time::Duration::from_millis(5),
            hold_after: None,
        });
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.contains("over quota"), "{model}: {text}");
        assert_eq!(text.matches("[redacted]").count(), 2, "{model}: {text}");
        assert!(
            !text.contains(KEY),
            "{model}: the provider key reached the client: {text}"
        );
        assert!(!text.contains(head), "{model}: {text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{model}: {text}");
    }
}
