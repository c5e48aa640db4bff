//! Observability end to end: known traffic (two providers, a retried failure, a fallback, streams,
//! an unknown model, a wrong key) read back exactly from `/metrics` and from the access log;
//! request ids from the client and made by the gateway, on answers, errors and upstream; and no
//! key in either output.
mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PROVIDER_KEY_A: &str = "provider-secret-aaaa";
const PROVIDER_KEY_C: &str = "provider-secret-cccc";

/// One gateway, its mocks, and its access log file.
struct Setup {
    gw: GatewayProcess,
    /// The two instances of provider `pa` (OpenAI kind), and `pc` (Anthropic), `pd` (OpenAI,
    /// always failing).
    a: MockProvider,
    b: MockProvider,
    c: MockProvider,
    d: MockProvider,
    log: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn setup(extra: &str) -> Setup {
    let (a, b, c, d) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    d.set_default(Behaviour::json(
        500,
        json!({"error": {"message": "d is down"}}),
    ));
    let log = std::env::temp_dir().join(format!(
        "dragoman-access-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    let gw = GatewayProcess::start(&format!(
        "access_log: {{ path: {log} }}\n{extra}\
         keys:\n  team: {{ key: {CLIENT_KEY} }}\n\
         providers:\n\
         \x20 pa: {{ kind: openai, api_key: {PROVIDER_KEY_A}, retry_backoff: 1ms, health_check: {{ enabled: false }}, endpoints: [\"{a}/v1\", \"{b}/v1\"] }}\n\
         \x20 pc: {{ kind: anthropic, api_key: {PROVIDER_KEY_C}, endpoints: [\"{c}\"] }}\n\
         \x20 pd: {{ kind: openai, api_key: {PROVIDER_KEY_A}, endpoints: [\"{d}/v1\"] }}\n\
         models:\n\
         \x20 alpha: {{ provider: pa }}\n\
         \x20 beta: {{ provider: pc }}\n\
         \x20 gamma: {{ provider: pd, fallbacks: [beta] }}\n",
        log = log.display(),
        a = a.url(),
        b = b.url(),
        c = c.url(),
        d = d.url(),
    ));
    Setup {
        gw,
        a,
        b,
        c,
        d,
        log,
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Sends a request; (status, headers, body text).
async fn send(
    gw: &GatewayProcess,
    key: &str,
    body: &Value,
    request_id: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=opaque")
        .json(body);
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// The requests of the scenario, in order: what each one is, and the id the client gave.
struct Sent {
    what: &'static str,
    status: u16,
    request_id: String,
    body: String,
}

/// The known traffic:
/// 1. `alpha`, non-streamed: 200 from one of pa's instances (usage 12 in, 7 out, 4 cached, 2
///    reasoning);
/// 2. `alpha`, non-streamed: 500 from the first instance, retried on the other, 500 again;
/// 3. `alpha`, streamed, pass-through (the client asked for no usage): 200, usage 10/5;
/// 4. `beta`, streamed, translated from Anthropic: 200, usage 10/5;
/// 5. `gamma`: 500 from pd, then its fallback `beta` answers 200, usage 10/5;
/// 6. `nope`: 404 (no such model);
/// 7. a wrong gateway key: 401.
async fn run_traffic(s: &Setup) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut push = |what, (status, headers, body): (u16, reqwest::header::HeaderMap, String)| {
        sent.push(Sent {
            what,
            status,
            request_id: header(&headers, "x-request-id").to_string(),
            body,
        })
    };
    let usage = json!({"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "alpha",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 2}}});
    s.a.push(Behaviour::json(200, usage.clone()));
    s.b.push(Behaviour::json(200, usage));
    push(
        "alpha",
        send(
            &s.gw,
            CLIENT_KEY,
            &chat("alpha", false),
            Some("client-id-1"),
        )
        .await,
    );
    // Whichever instance did not answer still holds its reply.
    s.a.clear_queue();
    s.b.clear_queue();
    let down = || Behaviour::json(500, json!({"error": {"message": "down"}}));
    s.a.push(down());
    s.b.push(down());
    push(
        "alpha-retried",
        send(
            &s.gw,
            CLIENT_KEY,
            &chat("alpha", false),
            Some("client-id-2"),
        )
        .await,
    );
    push(
        "alpha-stream",
        send(&s.gw, CLIENT_KEY, &chat("alpha", true), None).await,
    );
    push(
        "beta-stream",
        send(&s.gw, CLIENT_KEY, &chat("beta", true), None).await,
    );
    push(
        "gamma",
        send(&s.gw, CLIENT_KEY, &chat("gamma", false), None).await,
    );
    push(
        "nope",
        send(
            &s.gw,
            CLIENT_KEY,
            &chat("nope", false),
            Some("bad id with spaces"),
        )
        .await,
    );
    push(
        "wrong-key",
        send(&s.gw, "not-a-key-at-all", &chat("alpha", false), None).await,
    );
    let statuses: Vec<(&str, u16)> = sent.iter().map(|s| (s.what, s.status)).collect();
    assert_eq!(
        statuses,
        [
            ("alpha", 200),
            ("alpha-retried", 500),
            ("alpha-stream", 200),
            ("beta-stream", 200),
            ("gamma", 200),
            ("nope", 404),
            ("wrong-key", 401)
        ],
        "{:?}",
        sent.iter().map(|s| &s.body).collect::<Vec<_>>()
    );
    sent
}

/// Prometheus text as `name{sorted labels}` -> value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels: Vec<&str> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect();
                labels.sort();
                (name, labels.join(","))
            }
            None => (series, String::new()),
        };
        out.insert(format!("{name}{{{labels}}}"), value);
    }
    out
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(gw: &GatewayProcess) -> String {
    let resp = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics text")
}

/// Scrapes until nothing is in flight (the last request's session may end just after its
/// answer reached the client).
async fn settled_metrics(gw: &GatewayProcess) -> (String, BTreeMap<String, f64>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(gw).await;
        let m = parse_metrics(&text);
        let idle = m.get("dragoman_requests_in_flight{}") == Some(&0.0)
            && m.get("dragoman_streams_in_flight{}") == Some(&0.0);
        if idle {
            return (text, m);
        }
        assert!(
            Instant::now() < deadline,
            "requests stay in flight:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gen_ai(model: &str, provider: &str) -> Vec<(&'static str, String)> {
    vec![
        ("gen_ai_operation_name", "chat".to_string()),
        ("gen_ai_provider_name", provider.to_string()),
        ("gen_ai_request_model", model.to_string()),
    ]
}

fn get(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = series(name, labels);
    *m.get(&key).unwrap_or_else(|| {
        let near: Vec<&String> = m.keys().filter(|k| k.starts_with(name)).collect();
        panic!("no series {key}; {name} has: {near:#?}")
    })
}

/// `dragoman_upstream_attempts_total` of one model, provider and outcome.
fn attempts(m: &BTreeMap<String, f64>, model: &str, provider: &str, outcome: &str) -> f64 {
    let labels = [
        ("model", model),
        ("provider", provider),
        ("outcome", outcome),
    ];
    get(m, "dragoman_upstream_attempts_total", &labels)
}

#[tokio::test]
async fn metrics_match_the_known_traffic_exactly() {
    let s = setup("").await;
    run_traffic(&s).await;
    let (text, m) = settled_metrics(&s.gw).await;

    let requests = |model, provider, key, class| {
        get(
            &m,
            "dragoman_requests_total",
            &[
                ("model", model),
                ("provider", provider),
                ("key", key),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(requests("alpha", "pa", "team", "2xx"), 2.0);
    assert_eq!(requests("alpha", "pa", "team", "5xx"), 1.0);
    assert_eq!(requests("beta", "pc", "team", "2xx"), 1.0);
    assert_eq!(requests("gamma", "pd", "team", "2xx"), 1.0);
    assert_eq!(requests("unknown", "unknown", "team", "4xx"), 1.0);
    assert_eq!(requests("unknown", "unknown", "", "4xx"), 1.0);
    let total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("dragoman_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 7.0, "{text}");

    let attempts = |model, provider, outcome| attempts(&m, model, provider, outcome);
    assert_eq!(attempts("alpha", "pa", "ok"), 2.0);
    assert_eq!(attempts("alpha", "pa", "server_error"), 2.0);
    assert_eq!(attempts("beta", "pc", "ok"), 2.0);
    assert_eq!(attempts("gamma", "pd", "server_error"), 1.0);
    assert_eq!(
        get(
            &m,
            "dragoman_upstream_retries_total",
            &[("model", "alpha"), ("provider", "pa")]
        ),
        1.0
    );
    assert!(!text.contains("dragoman_upstream_retries_total{model=\"beta\""));
    assert_eq!(
        get(
            &m,
            "dragoman_fallbacks_total",
            &[("model", "gamma"), ("outcome", "won")]
        ),
        1.0
    );
    assert!(!text.contains("dragoman_fallbacks_total{model=\"gamma\",outcome=\"lost\""));
    assert!(!text.contains("dragoman_hedges_total{"));

    let with = |base: &[(&'static str, String)], extra: &[(&'static str, &'static str)]| {
        let mut labels: Vec<(&str, String)> = base.to_vec();
        labels.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        labels
    };
    let get_owned = |name: &str, labels: &[(&str, String)]| {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        get(&m, name, &labels)
    };
    // Durations: every request that named a configured model; time to first token: streams.
    let duration = "gen_ai_client_operation_duration_seconds_count";
    assert_eq!(get_owned(duration, &gen_ai("alpha", "pa")), 3.0);
    assert_eq!(get_owned(duration, &gen_ai("beta", "pc")), 1.0);
    assert_eq!(get_owned(duration, &gen_ai("gamma", "pd")), 1.0);
    let ttft = "gen_ai_server_time_to_first_token_seconds_count";
    assert_eq!(get_owned(ttft, &gen_ai("alpha", "pa")), 1.0);
    assert_eq!(get_owned(ttft, &gen_ai("beta", "pc")), 1.0);
    // gamma's answer was whole, not streamed.
    assert_eq!(get_owned(ttft, &gen_ai("gamma", "pd")), 0.0);

    // Tokens, from whole answers and streams alike, on the model that served them.
    let tokens = |model, provider, kind: &'static str| {
        let labels = with(&gen_ai(model, provider), &[("gen_ai_token_type", kind)]);
        (
            get_owned("gen_ai_client_token_usage_sum", &labels),
            get_owned("gen_ai_client_token_usage_count", &labels),
        )
    };
    assert_eq!(tokens("alpha", "pa", "input"), (22.0, 2.0));
    assert_eq!(tokens("alpha", "pa", "output"), (12.0, 2.0));
    assert_eq!(tokens("alpha", "pa", "cached_input"), (4.0, 1.0));
    assert_eq!(tokens("alpha", "pa", "reasoning"), (2.0, 1.0));
    assert_eq!(tokens("beta", "pc", "input"), (20.0, 2.0));
    assert_eq!(tokens("beta", "pc", "output"), (10.0, 2.0));
    // gamma served nothing itself: its fallback's tokens are beta's.
    assert_eq!(tokens("gamma", "pd", "input"), (0.0, 0.0));

    let overhead = |model, provider| {
        get(
            &m,
            "dragoman_gateway_overhead_seconds_count",
            &[("model", model), ("provider", provider)],
        )
    };
    assert_eq!(overhead("alpha", "pa"), 3.0);
    assert_eq!(overhead("unknown", "unknown"), 2.0);
    // Bounded: the time in the gateway is far below each request's duration.
    let overhead_sum: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("dragoman_gateway_overhead_seconds_sum{"))
        .map(|(_, v)| v)
        .sum();
    assert!(overhead_sum < 1.0, "{overhead_sum}");

    // Every instance is healthy (no checks) with its circuit closed; pd's one failure in a row
    // opens nothing.
    for instance in [&s.a, &s.b] {
        let labels = [
            ("provider", "pa"),
            ("instance", &*instance.addr().to_string()),
        ];
        assert_eq!(get(&m, "dragoman_instance_up", &labels), 1.0);
        assert_eq!(get(&m, "dragoman_circuit_state", &labels), 0.0);
    }
    let d = s.d.addr().to_string();
    assert_eq!(
        get(
            &m,
            "dragoman_circuit_state",
            &[("provider", "pd"), ("instance", &d)]
        ),
        0.0
    );
    // The pass-through stream asked for usage on the client's behalf and hid it from the client.
    let streamed =
        s.a.requests()
            .into_iter()
            .chain(s.b.requests())
            .find(|r| r.json()["stream"] == true)
            .expect("the stream reached pa");
    assert_eq!(streamed.json()["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn pass_through_streams_hide_the_usage_they_were_asked_for() {
    let s = setup("").await;
    let (status, _, body) = send(&s.gw, CLIENT_KEY, &chat("alpha", true), None).await;
    assert_eq!(status, 200);
    assert!(!body.contains("\"usage\":{"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // A client that asks for usage gets it, as the upstream sent it.
    let mut asked = chat("alpha", true);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = send(&s.gw, CLIENT_KEY, &asked, None).await;
    assert!(body.contains("\"prompt_tokens\":10"), "{body}");
}

/// The access log's lines, once `n` are written.
async fn access_lines(path: &PathBuf, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= n {
            assert_eq!(lines.len(), n, "{text}");
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} lines:\n{text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_with_every_field() {
    let s = setup("").await;
    let sent = run_traffic(&s).await;
    let lines = access_lines(&s.log, sent.len()).await;
    let a = s.a.addr().to_string();
    let b = s.b.addr().to_string();
    let c = s.c.addr().to_string();
    let mut by_id = BTreeMap::new();
    for line in &lines {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "time",
            "request_id",
            "key",
            "protocol",
            "endpoint",
            "model",
            "served_model",
            "experiment",
            "variant",
            "provider",
            "instance",
            "status",
            "attempts",
            "fallback",
            "hedge",
            "stream",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "ttfb_ms",
            "duration_ms",
            "overhead_ms",
        ];
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        expected.sort();
        assert_eq!(keys_sorted, expected, "{line}");
        let time = line["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time}"
        );
        assert_eq!(line["protocol"], "openai");
        assert_eq!(line["endpoint"], "chat_completions");
        let duration = line["duration_ms"].as_f64().unwrap();
        let overhead = line["overhead_ms"].as_f64().unwrap();
        assert!(
            duration > 0.0 && (0.0..=duration).contains(&overhead),
            "{line}"
        );
        by_id.insert(
            line["request_id"].as_str().unwrap().to_string(),
            line.clone(),
        );
    }
    let line = |i: usize| {
        by_id
            .get(&sent[i].request_id)
            .unwrap_or_else(|| panic!("no line for {}", sent[i].what))
    };
    let either = |l: &Value| l["instance"] == a.as_str() || l["instance"] == b.as_str();

    let l = line(0);
    assert_eq!(l["request_id"], "client-id-1");
    assert_eq!(
        (&l["key"], &l["model"], &l["served_model"], &l["provider"]),
        (
            &json!("team"),
            &json!("alpha"),
            &json!("alpha"),
            &json!("pa")
        )
    );
    assert!(either(l), "{l}");
    assert_eq!((&l["status"], &l["attempts"]), (&json!(200), &json!(1)));
    assert_eq!(
        (&l["fallback"], &l["hedge"], &l["stream"]),
        (&json!(false), &json!(false), &json!(false))
    );
    assert_eq!(
        (
            &l["input_tokens"],
            &l["output_tokens"],
            &l["cached_tokens"],
            &l["reasoning_tokens"]
        ),
        (&json!(12), &json!(7), &json!(4), &json!(2))
    );
    let ttfb = l["ttfb_ms"].as_f64().unwrap();
    assert!(
        ttfb > 0.0 && ttfb <= l["duration_ms"].as_f64().unwrap(),
        "{l}"
    );

    let l = line(1);
    assert_eq!(l["request_id"], "client-id-2");
    assert_eq!((&l["status"], &l["attempts"]), (&json!(500), &json!(2)));
    assert_eq!(l["served_model"], "alpha");
    assert!(either(l), "{l}");
    assert_eq!(l["input_tokens"], Value::Null);

    let l = line(2);
    assert_eq!((&l["status"], &l["stream"]), (&json!(200), &json!(true)));
    assert_eq!(
        (&l["input_tokens"], &l["output_tokens"]),
        (&json!(10), &json!(5))
    );
    assert!(either(l), "{l}");

    let l = line(3);
    assert_eq!(
        (&l["model"], &l["provider"], &l["instance"], &l["stream"]),
        (&json!("beta"), &json!("pc"), &json!(c), &json!(true))
    );
    assert_eq!(
        (&l["input_tokens"], &l["output_tokens"]),
        (&json!(10), &json!(5))
    );

    let l = line(4);
    assert_eq!(
        (&l["model"], &l["served_model"], &l["provider"]),
        (&json!("gamma"), &json!("beta"), &json!("pc"))
    );
    assert_eq!(
        (&l["status"], &l["attempts"], &l["fallback"], &l["instance"]),
        (&json!(200), &json!(2), &json!(true), &json!(c))
    );
    assert_eq!(
        (&l["input_tokens"], &l["output_tokens"]),
        (&json!(10), &json!(5))
    );

    let l = line(5);
    assert_eq!(
        (
            &l["status"],
            &l["model"],
            &l["served_model"],
            &l["provider"]
        ),
        (&json!(404), &json!("nope"), &Value::Null, &Value::Null)
    );
    assert_eq!((&l["attempts"], &l["instance"]), (&json!(0), &Value::Null));
    assert_eq!((&l["key"], &l["ttfb_ms"]), (&json!("team"), &Value::Null));

    let l = line(6);
    assert_eq!(
        (&l["status"], &l["key"], &l["model"]),
        (&json!(401), &Value::Null, &Value::Null)
    );
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_go_everywhere() {
    let s = setup("").await;
    let sent = run_traffic(&s).await;
    // A client's acceptable id comes back, on a success and on an error.
    assert_eq!(sent[0].request_id, "client-id-1");
    assert_eq!(sent[1].request_id, "client-id-2");
    // Made ids: 32 hex digits, all different, on answers and on the gateway's own errors (an
    // unacceptable client id is replaced).
    let made: Vec<&str> = sent[2..].iter().map(|s| s.request_id.as_str()).collect();
    for id in &made {
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{made:?}"
        );
    }
    let distinct: std::collections::BTreeSet<&&str> = made.iter().collect();
    assert_eq!(distinct.len(), made.len());
    assert_ne!(sent[5].request_id, "bad id with spaces");

    // Upstream: each call carries its request's id (both attempts of the retried one, both
    // legs of the fallback), and the W3C trace context unchanged.
    let upstream: Vec<RecordedRequest> = [&s.a, &s.b, &s.c, &s.d]
        .iter()
        .flat_map(|m| m.requests())
        .filter(|r| r.method == "POST")
        .collect();
    let ids_of = |id: &str| {
        upstream
            .iter()
            .filter(|r| r.header("x-request-id") == Some(id))
            .count()
    };
    assert_eq!(ids_of("client-id-1"), 1);
    assert_eq!(ids_of("client-id-2"), 2);
    assert_eq!(ids_of(&sent[2].request_id), 1);
    assert_eq!(ids_of(&sent[3].request_id), 1);
    assert_eq!(ids_of(&sent[4].request_id), 2);
    assert_eq!(upstream.len(), 7);
    for r in &upstream {
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == "x-request-id")
                .count(),
            1
        );
        assert_eq!(
            r.header("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(r.header("tracestate"), Some("vendor=opaque"));
    }
    // An upstream's own id is passed on under another name.
    s.c.push(Behaviour::Raw {
        status: 200,
        content_type: "application/json".into(),
        body: serde_json::to_vec(
            &json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": "beta", "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1}}),
        )
        .unwrap()
        .into(),
        headers: vec![("x-request-id".into(), "req_upstream_1".into())],
    });
    let (status, headers, _) = send(&s.gw, CLIENT_KEY, &chat("beta", false), Some("mine")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-request-id"), "mine");
    assert_eq!(header(&headers, "x-upstream-request-id"), "req_upstream_1");
    // The models list and an unknown path carry one too.
    let resp = client()
        .get(s.gw.url("/v1/models"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-request-id", "list-1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(resp.headers(), "x-request-id"), "list-1");
    let resp = client().get(s.gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(header(resp.headers(), "x-request-id").len(), 32);
    // The access log has the same ids.
    let lines = access_lines(&s.log, sent.len() + 3).await;
    for sent in &sent {
        assert!(
            lines
                .iter()
                .any(|l| l["request_id"] == sent.request_id.as_str()),
            "{}",
            sent.what
        );
    }
}

#[tokio::test]
async fn no_key_appears_in_metrics_or_the_access_log() {
    let s = setup("").await;
    let sent = run_traffic(&s).await;
    let (text, _) = settled_metrics(&s.gw).await;
    access_lines(&s.log, sent.len()).await;
    let log = std::fs::read_to_string(&s.log).unwrap();
    for secret in [
        PROVIDER_KEY_A,
        PROVIDER_KEY_C,
        CLIENT_KEY,
        "not-a-key-at-all",
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
        assert!(!log.contains(secret), "{secret} in the access log");
    }
    // Nor the prompt or the answer.
    assert!(
        !log.contains("hi\"") && !log.contains("mock reply"),
        "{log}"
    );
}

#[tokio::test]
async fn metrics_off_counts_nothing_and_ids_still_work() {
    let s = setup("metrics: false\n").await;
    let sent = run_traffic(&s).await;
    let text = scrape(&s.gw).await;
    assert!(!text.contains("dragoman_requests_total"), "{text}");
    assert!(!text.contains("gen_ai_client_token_usage"), "{text}");
    assert_eq!(sent[0].request_id, "client-id-1");
    // The access log still has its tokens: streams are still asked for their usage.
    let lines = access_lines(&s.log, sent.len()).await;
    let stream = lines
        .iter()
        .find(|l| l["request_id"] == sent[2].request_id.as_str())
        .unwrap();
    assert_eq!(stream["input_tokens"], 10);
}

#[tokio::test]
async fn refused_connections_and_timeouts_are_attempt_outcomes() {
    let slow = MockProvider::start().await.unwrap();
    slow.set_default(Behaviour::delay(Duration::from_secs(5), Behaviour::Reply));
    // A port nothing listens on: the connection is refused.
    let closed = free_port();
    let gw = GatewayProcess::start(&format!(
        "providers:\n\
         \x20 dead: {{ kind: openai, auth: none, max_attempts: 1, health_check: {{ enabled: false }}, endpoints: [\"http://127.0.0.1:{closed}/v1\"] }}\n\
         \x20 slow: {{ kind: openai, auth: none, max_attempts: 1, endpoints: [\"{}/v1\"] }}\n\
         models:\n  refused: {{ provider: dead }}\n  stalled: {{ provider: slow, timeout: 300ms }}\n",
        slow.url()
    ));
    let (status, _, _) = send(&gw, CLIENT_KEY, &chat("refused", false), None).await;
    assert_eq!(status, 502);
    let (status, _, _) = send(&gw, CLIENT_KEY, &chat("stalled", false), None).await;
    assert_eq!(status, 504);
    let (_, m) = settled_metrics(&gw).await;
    let attempts = |model, provider, outcome| attempts(&m, model, provider, outcome);
    assert_eq!(attempts("refused", "dead", "connect_error"), 1.0);
    assert_eq!(attempts("stalled", "slow", "timeout"), 1.0);
    let requests = |model, provider| {
        get(
            &m,
            "dragoman_requests_total",
            &[
                ("model", model),
                ("provider", provider),
                ("key", ""),
                ("status_class", "5xx"),
            ],
        )
    };
    assert_eq!(requests("refused", "dead"), 1.0);
    assert_eq!(requests("stalled", "slow"), 1.0);
}

#[test]
fn an_access_log_that_cannot_be_opened_stops_the_start_naming_the_key() {
    let dir = std::env::temp_dir().join(format!(
        "dragoman-obs-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("dragoman.yaml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\npid_file: {d}/pid\n\
             upgrade_sock: {d}/upgrade.sock\naccess_log: {d}/no/such/dir/access.log\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let (status, out) = run_dragoman_within(
        &["-c", config.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, Some(false), "{out}");
    assert!(out.contains("access_log.path: cannot open"), "{out}");
}

#[tokio::test]
async fn a_hedge_that_wins_is_counted_and_logged() {
    let (slow, fast) = (
        MockProvider::start().await.unwrap(),
        MockProvider::start().await.unwrap(),
    );
    slow.set_default(Behaviour::delay(Duration::from_secs(3), Behaviour::Reply));
    let log = std::env::temp_dir().join(format!(
        "dragoman-access-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    // One instance: the hedge goes to the next fallback.
    let gw = GatewayProcess::start(&format!(
        "access_log: {{ path: {} }}\nproviders:\n\
         \x20 slow: {{ kind: openai, auth: none, endpoints: [\"{}/v1\"] }}\n\
         \x20 fast: {{ kind: openai, auth: none, endpoints: [\"{}/v1\"] }}\n\
         models:\n  h: {{ provider: slow, fallbacks: [f], hedge: {{ after: 100ms }} }}\n  f: {{ provider: fast }}\n",
        log.display(),
        slow.url(),
        fast.url()
    ));
    let (status, headers, body) = send(&gw, CLIENT_KEY, &chat("h", true), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-dragoman-model"), "f");
    let (_, m) = settled_metrics(&gw).await;
    assert_eq!(
        get(
            &m,
            "dragoman_hedges_total",
            &[("model", "h"), ("outcome", "won")]
        ),
        1.0
    );
    assert!(!m.keys().any(|k| k.starts_with("dragoman_fallbacks_total{")));
    let lines = access_lines(&log, 1).await;
    let _ = std::fs::remove_file(&log);
    let l = &lines[0];
    assert_eq!(
        (&l["model"], &l["served_model"], &l["hedge"], &l["fallback"]),
        (&json!("h"), &json!("f"), &json!(true), &json!(false))
    );
    assert_eq!(l["instance"], fast.addr().to_string());
    assert_eq!(
        (&l["input_tokens"], &l["output_tokens"]),
        (&json!(10), &json!(5))
    );
}
