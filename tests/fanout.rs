//! `POST /v1/compare` (one request to several models at once, each translated for its provider)
//! and `POST /v1/batch` (many requests at once, under a per-batch and a global bound, answered in
//! input order).
mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn post(gw: &GatewayProcess, path: &str, body: &Value, key: &str) -> (u16, Value) {
    let resp = client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {key}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn compare_answers_every_model_also_when_one_fails() {
    let openai = MockProvider::start().await.unwrap();
    let anthropic = MockProvider::start().await.unwrap();
    let broken = MockProvider::start().await.unwrap();
    broken.set_default(Behaviour::json(
        400,
        json!({"error": {"message": "unsupported parameter", "type": "invalid_request_error", "code": null}}),
    ));
    let gw = GatewayProcess::start(&format!(
        "providers:\n  po: {{ kind: openai, api_key: key-o, endpoints: [\"{}/v1\"] }}\n  \
         pa: {{ kind: anthropic, api_key: key-a, endpoints: [\"{}\"] }}\n  \
         pb: {{ kind: openai, api_key: key-b, endpoints: [\"{}/v1\"] }}\n\
         models:\n  gpt: {{ provider: po, model: gpt-upstream }}\n  claude: {{ provider: pa }}\n  broken: {{ provider: pb }}\n\
         keys:\n  all: {{ key: key-all }}\n  gpt-only: {{ key: key-gpt, models: [gpt] }}\n",
        openai.url(),
        anthropic.url(),
        broken.url()
    ));
    let request = json!({
        "models": ["gpt", "claude", "broken"],
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 20,
        "temperature": 0.2,
    });
    let (status, body) = post(&gw, "/v1/compare", &request, "key-all").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "compare");
    let results = body["results"].as_array().expect("results");
    let models: Vec<&str> = results
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["gpt", "claude", "broken"]);
    for ok in &results[..2] {
        assert_eq!(ok["status"], 200, "{ok}");
        // Each model's answer in OpenAI's format, the Anthropic one translated.
        assert_eq!(ok["response"]["object"], "chat.completion", "{ok}");
        assert!(ok["usage"]["total_tokens"].as_u64().is_some(), "{ok}");
        assert!(ok["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{ok}");
        assert!(ok.get("error").is_none(), "{ok}");
    }
    assert_eq!(results[2]["status"], 400);
    assert_eq!(results[2]["error"]["message"], "unsupported parameter");
    assert!(results[2].get("response").is_none());
    // Each model got the request once, as its own provider speaks it.
    let sent = openai.last_request().expect("openai request");
    assert_eq!(openai.request_count(), 1);
    assert_eq!(sent.json()["model"], "gpt-upstream");
    assert!(sent.json().get("models").is_none(), "{}", sent.body_text());
    assert_eq!(sent.json()["temperature"], 0.2);
    let sent = anthropic.last_request().expect("anthropic request");
    assert_eq!(sent.path_only(), "/v1/messages");
    assert_eq!(sent.json()["max_tokens"], 20);
    assert_eq!(broken.request_count(), 1);
    // Each model's request is counted under that model, as a client's would be.
    let requests = |model: &'static str, key: &'static str, class: &'static str| {
        let gw = &gw;
        async move {
            let labels = [("model", model), ("key", key), ("status_class", class)];
            metric(gw, "dragoman_requests_total", &labels).await
        }
    };
    assert_eq!(requests("gpt", "all", "2xx").await, Some(1.0));
    assert_eq!(requests("claude", "all", "2xx").await, Some(1.0));
    assert_eq!(requests("broken", "all", "4xx").await, Some(1.0));
    let seconds = "gen_ai_client_operation_duration_seconds_count";
    let gpt_timed = metric(&gw, seconds, &[("gen_ai_request_model", "gpt")]).await;
    assert_eq!(gpt_timed, Some(1.0));

    // A key answers for each model on its own: the model it may not use gets its 403, the other
    // its answer.
    let request =
        json!({"models": ["gpt", "claude"], "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = post(&gw, "/v1/compare", &request, "key-gpt").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], 200);
    assert_eq!(body["results"][1]["status"], 403);
    assert_eq!(body["results"][1]["error"]["code"], "model_not_allowed");
    assert_eq!(anthropic.request_count(), 1, "a forbidden model was called");
    assert_eq!(requests("gpt", "gpt-only", "2xx").await, Some(1.0));
    assert_eq!(requests("claude", "gpt-only", "4xx").await, Some(1.0));
    // The compare requests themselves are not counted under a model.
    let unknown = metric(&gw, "dragoman_requests_total", &[("model", "unknown")]).await;
    assert_eq!(unknown, None);
}

#[tokio::test]
async fn malformed_compare_and_batch_requests_are_refused_whole() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, api_key: k, endpoints: [\"{}/v1\"] }}\n\
         models:\n  m: {{ provider: p }}\n\
         compare: {{ max_models: 2 }}\nbatch: {{ max_requests: 3 }}\n",
        mock.url()
    ));
    let messages = json!([{"role": "user", "content": "hi"}]);
    for (path, body, needle) in [
        (
            "/v1/compare",
            json!({"messages": messages}),
            "`models` is required",
        ),
        (
            "/v1/compare",
            json!({"model": "m", "messages": messages}),
            "not `model`",
        ),
        (
            "/v1/compare",
            json!({"models": ["m", "m"], "messages": messages}),
            "twice",
        ),
        (
            "/v1/compare",
            json!({"models": ["a", "b", "c"], "messages": messages}),
            "from 1 to 2",
        ),
        ("/v1/batch", json!({"requests": []}), "from 1 to 3"),
        (
            "/v1/batch",
            json!({"requests": [{}, {}, {}, {}]}),
            "from 1 to 3",
        ),
        ("/v1/batch", json!([]), "`requests`"),
    ] {
        let (status, answer) = post(&gw, path, &body, "unused").await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{path} {body}: {answer}");
    }
    assert_eq!(mock.request_count(), 0);
}

/// A gateway with `batch: {settings}` in front of a mock that takes 100 ms per answer: slow
/// enough that, unbounded, every request of a batch would be waiting on it at once.
async fn slow_upstream_with_batches(settings: &str) -> (MockProvider, GatewayProcess) {
    let mock = MockProvider::start().await.unwrap();
    mock.set_record(false);
    mock.set_default(Behaviour::Delay {
        delay: Duration::from_millis(100),
        then: Box::new(Behaviour::Reply),
    });
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, api_key: k, endpoints: [\"{}/v1\"] }}\n\
         models:\n  m: {{ provider: p }}\n\
         batch: {{ {settings} }}\n",
        mock.url()
    ));
    (mock, gw)
}

#[tokio::test]
async fn a_batch_of_500_keeps_its_order_and_its_concurrency_bound() {
    let (mock, gw) = slow_upstream_with_batches("max_requests: 500, concurrency: 16").await;
    // Every seventh request names a model that does not exist, and every eleventh wants a
    // stream: their results must be at exactly those places.
    let requests: Vec<Value> = (0..500)
        .map(|i| {
            let model = if i % 7 == 3 { "ghost" } else { "m" };
            let mut r = json!({"model": model, "messages": [{"role": "user", "content": format!("request {i}")}]});
            if i % 11 == 5 {
                r["stream"] = json!(true);
            }
            r
        })
        .collect();
    let (status, body) = post(&gw, "/v1/batch", &json!({"requests": requests}), "unused").await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "batch");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 500);
    let mut answered = 0;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i, "{r}");
        // A request that wants a stream is refused before its model is looked up.
        let want = match i {
            _ if i % 11 == 5 => 400,
            _ if i % 7 == 3 => 404,
            _ => 200,
        };
        assert_eq!(r["status"], want, "request {i}: {r}");
        if want == 200 {
            answered += 1;
            assert_eq!(r["response"]["object"], "chat.completion");
        } else {
            assert!(r["error"]["message"].is_string(), "{r}");
        }
    }
    assert_eq!(mock.request_count(), answered);
    // Each request counted under its model: a refused stream under the model it named, an
    // unknown model under `unknown`.
    let streams_refused = (0..500).filter(|i| i % 11 == 5 && i % 7 != 3).count();
    let ghosts = (0..500).filter(|i| i % 7 == 3).count();
    for (model, class, count) in [
        ("m", "2xx", answered),
        ("m", "4xx", streams_refused),
        ("unknown", "4xx", ghosts),
    ] {
        let labels = [("model", model), ("status_class", class)];
        let counted = metric(&gw, "dragoman_requests_total", &labels).await;
        assert_eq!(counted, Some(count as f64), "{model} {class}");
    }
    // Its progress, in the metrics: all done, by status class; nothing waiting or running.
    let done = "dragoman_batch_requests_total";
    let ok = metric(&gw, done, &[("status_class", "2xx")]).await;
    assert_eq!(ok, Some(answered as f64));
    let refused = metric(&gw, done, &[("status_class", "4xx")]).await;
    assert_eq!(refused, Some((500 - answered) as f64));
    assert_eq!(
        metric(&gw, "dragoman_batch_requests_waiting", &[]).await,
        Some(0.0)
    );
    assert_eq!(
        metric(&gw, "dragoman_batch_requests_running", &[]).await,
        Some(0.0)
    );
    let most = mock.most_concurrent();
    assert!(most <= 16, "the mock saw {most} requests at once");
    // And the batch did run requests side by side.
    assert!(most >= 2, "the mock saw {most} requests at once");
}

#[tokio::test]
async fn batches_together_stay_under_the_global_bound() {
    let (mock, gw) = slow_upstream_with_batches("concurrency: 8, global_concurrency: 5").await;
    let batch = json!({"requests": (0..20).map(|i| json!({"model": "m", "messages": [{"role": "user", "content": format!("{i}")}]})).collect::<Vec<_>>()});
    let (a, b, c) = tokio::join!(
        post(&gw, "/v1/batch", &batch, "unused"),
        post(&gw, "/v1/batch", &batch, "unused"),
        post(&gw, "/v1/batch", &batch, "unused"),
    );
    for (status, body) in [a, b, c] {
        assert_eq!(status, 200);
        assert!(
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == 200),
            "{body}"
        );
    }
    assert_eq!(mock.request_count(), 60);
    let most = mock.most_concurrent();
    assert!(
        (2..=5).contains(&most),
        "the mock saw {most} requests at once"
    );
}

#[tokio::test]
async fn a_streamed_compare_tags_every_models_chunks_and_failures() {
    let openai = MockProvider::start().await.unwrap();
    let anthropic = MockProvider::start().await.unwrap();
    let broken = MockProvider::start().await.unwrap();
    broken.set_default(Behaviour::json(
        400,
        json!({"error": {"message": "no streams here", "type": "invalid_request_error", "code": null}}),
    ));
    let gw = GatewayProcess::start(&format!(
        "providers:\n  po: {{ kind: openai, api_key: key-o, endpoints: [\"{}/v1\"] }}\n  \
         pa: {{ kind: anthropic, api_key: key-a, endpoints: [\"{}\"] }}\n  \
         pb: {{ kind: openai, api_key: key-b, endpoints: [\"{}/v1\"] }}\n\
         models:\n  gpt: {{ provider: po }}\n  claude: {{ provider: pa }}\n  broken: {{ provider: pb }}\n",
        openai.url(),
        anthropic.url(),
        broken.url()
    ));
    let request = json!({
        "models": ["gpt", "claude", "broken", "ghost"],
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": true,
    });
    let resp = client()
        .post(gw.url("/v1/compare"))
        .json(&request)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-type"), "text/event-stream");
    let text = resp.text().await.expect("stream");
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("a data line"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let events: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("JSON event"))
        .collect();
    let of =
        |model: &str| -> Vec<&Value> { events.iter().filter(|e| e["model"] == model).collect() };
    for model in ["gpt", "claude"] {
        let mine = of(model);
        let (last, chunks) = mine.split_last().expect("events");
        assert_eq!(last["done"], true, "{model}: {text}");
        assert!(!chunks.is_empty(), "{model}: {text}");
        // Each chunk as the model's stream gave it, in OpenAI's format (Anthropic's translated).
        for c in chunks {
            assert_eq!(
                c["chunk"]["object"], "chat.completion.chunk",
                "{model}: {c}"
            );
        }
        let content: String = chunks
            .iter()
            .filter_map(|c| c["chunk"]["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(!content.is_empty(), "{model}: {text}");
    }
    let broken_events = of("broken");
    assert_eq!(broken_events.len(), 1, "{text}");
    assert_eq!(broken_events[0]["status"], 400);
    assert_eq!(broken_events[0]["error"]["message"], "no streams here");
    let ghost = of("ghost");
    assert_eq!(ghost.len(), 1, "{text}");
    assert_eq!(ghost[0]["status"], 404);
    assert_eq!(ghost[0]["error"]["code"], "model_not_found");
    assert_eq!(openai.last_request().unwrap().json()["stream"], true);
    assert_eq!(anthropic.last_request().unwrap().json()["stream"], true);
    for (model, class) in [
        ("gpt", "2xx"),
        ("claude", "2xx"),
        ("broken", "4xx"),
        ("unknown", "4xx"),
    ] {
        let labels = [("model", model), ("status_class", class)];
        let counted = metric(&gw, "dragoman_requests_total", &labels).await;
        assert_eq!(counted, Some(1.0), "{model} {class}");
    }
}
