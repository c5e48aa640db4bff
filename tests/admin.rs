//! The admin listener: the status page and the data behind it, the instances, the running
//! configuration without secrets, the admin token, and readiness.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client().get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

async fn chat(gw: &GatewayProcess, model: &str) -> u16 {
    post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .0
}

/// The values of `attr="..."` in `html`, in order.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        rest = &rest[at + needle.len()..];
        let end = rest.find('"').expect("closing quote");
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// The text of the element carrying `data-k="path"`.
fn shown<'a>(html: &'a str, path: &str) -> &'a str {
    let at = html
        .find(&format!("data-k=\"{path}\""))
        .unwrap_or_else(|| panic!("no element for {path}"));
    let rest = &html[at..];
    let start = rest.find('>').expect("tag end") + 1;
    let end = rest[start..].find('<').expect("element end");
    &rest[start..start + end]
}

fn pointer<'a>(status: &'a Value, path: &str) -> Option<&'a Value> {
    status.pointer(&format!("/{}", path.replace('.', "/")))
}

#[tokio::test]
async fn the_status_page_renders_models_providers_and_instances_from_its_status_data() {
    let ok = MockProvider::start().await.unwrap();
    let flaky = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        r#"providers:
  good: {{ kind: openai, endpoints: ["{ok}"], auth: none, health_check: {{ enabled: false }} }}
  flaky:
    kind: openai
    endpoints: ["{flaky}"]
    auth: none
    max_attempts: 1
    health_check: {{ enabled: false }}
    circuit_breaker: {{ consecutive_failures: 1, cooldown: 1h }}
models:
  alpha: {{ provider: good }}
  "beta<b>": {{ provider: flaky }}
"#,
        ok = ok.url(),
        flaky = flaky.url()
    ));
    for _ in 0..3 {
        assert_eq!(chat(&gw, "alpha").await, 200);
    }
    flaky.push(Behaviour::json(500, json!({})));
    assert_eq!(chat(&gw, "beta<b>").await, 500);

    let (status, headers, html) = get(&gw.admin_url("/")).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert!(header(&headers, "content-security-policy").contains("default-src 'none'"));
    // Self-contained: no asset from anywhere, only its own status endpoint. (The instances'
    // endpoints are shown as text.)
    let without_endpoints = html.replace(&ok.url(), "").replace(&flaky.url(), "");
    for external in ["http://", "https://", " src=", " href=", "@import", "url("] {
        assert!(
            !without_endpoints.contains(external),
            "the page refers to {external}"
        );
    }
    assert!(html.contains("fetch(\"/admin/status\""));
    assert!(html.contains("alpha") && html.contains("beta&lt;b&gt;"));
    assert!(!html.contains("beta<b>"));

    let status: Value = client()
        .get(gw.admin_url("/admin/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Every value the page shows, and every counter it turns into a rate, is in the data it
    // refreshes from, at the place the page names.
    let live = attribute_values(&html, "data-k");
    let rates = attribute_values(&html, "data-rate");
    assert!(live.len() >= 20 && rates.len() >= 4, "{live:?} {rates:?}");
    for path in live.iter().chain(&rates) {
        assert!(
            pointer(&status, path).is_some(),
            "{path} is not in /admin/status"
        );
    }
    for path in &rates {
        assert!(
            pointer(&status, path).unwrap().is_u64(),
            "{path} is no counter"
        );
    }
    let provider = |name: &str| {
        status["providers"]
            .as_array()
            .unwrap()
            .iter()
            .position(|p| p["name"] == name)
            .unwrap()
    };
    let (g, f) = (provider("good"), provider("flaky"));
    assert_eq!(
        shown(&html, &format!("providers.{f}.instances.0.circuit")),
        "open"
    );
    assert_eq!(
        shown(&html, &format!("providers.{g}.instances.0.circuit")),
        "closed"
    );
    assert_eq!(
        shown(&html, &format!("providers.{g}.instances.0.healthy")),
        "true"
    );
    assert_eq!(shown(&html, "ready"), "false");

    let good = &status["providers"][g]["instances"][0];
    assert_eq!(good["address"], ok.addr().to_string());
    assert_eq!(good["attempts"], 3);
    assert_eq!(good["failures"], 0);
    assert_eq!(good["in_flight"], 0);
    assert!(
        good["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{good}"
    );
    let bad = &status["providers"][f]["instances"][0];
    assert_eq!(
        (bad["circuit"].as_str(), bad["usable"].as_bool()),
        (Some("open"), Some(false))
    );
    assert_eq!(bad["failures_by_kind"]["status_5xx"], 1);
    assert_eq!(bad["recent_error_rate"], 1.0);
    assert_eq!(status["models"][0]["name"], "alpha");
    assert_eq!(status["models"][0]["usable_instances"], 1);
    assert_eq!(status["ready"], false);
    assert!(status["ready_reason"]
        .as_str()
        .unwrap()
        .contains("beta<b> (provider flaky)"));

    // The same instances, one list, with the models each serves.
    let (_, _, body) = get(&gw.admin_url("/admin/instances")).await;
    let instances: Value = serde_json::from_str(&body).unwrap();
    let list = instances["instances"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let flaky_one = list.iter().find(|i| i["provider"] == "flaky").unwrap();
    assert_eq!(flaky_one["models"], json!(["beta<b>"]));
    assert_eq!(flaky_one["circuit"], "open");
    for field in [
        "healthy",
        "in_flight",
        "latency_ms",
        "recent_error_rate",
        "address",
        "endpoint",
    ] {
        assert!(flaky_one.get(field).is_some(), "{field} missing");
    }

    // Wrong methods and unknown paths.
    let resp = client()
        .get(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(get(&gw.admin_url("/admin/nope")).await.0, 404);
}

/// The status page's script, run against the page by node (when the machine has it) with a
/// minimal DOM: it fills every value in from `/admin/status` and turns counters into rates.
#[tokio::test]
async fn the_status_page_script_refreshes_values_in_place() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  p: {{ kind: openai, endpoints: [\"{}\"], auth: none }}\nmodels:\n  m: {{ provider: p }}\n",
        mock.url()
    ));
    let (_, _, html) = get(&gw.admin_url("/")).await;
    let dir = std::env::temp_dir().join(format!("dragoman-page-{}", gw.port));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("page.html"), &html).unwrap();
    let harness = r#"
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const url = process.argv[3];
const script = html.split("<script>")[1].split("</script>")[0];
const generation = Number(/data-generation="(\d+)"/.exec(html)[1]);
// Elements with data-k / data-rate, as the page has them.
const elements = [];
for (const m of html.matchAll(/<span data-(k|rate)="([^"]+)"[^>]*>/g)) {
  elements.push({ kind: m[1], path: m[2], textContent: "", className: "", dataset: m[1] === "k" ? { k: m[2] } : { rate: m[2] } });
}
const err = { textContent: "" };
globalThis.document = {
  body: { dataset: { generation: String(generation) } },
  getElementById: () => err,
  querySelectorAll: (sel) => elements.filter((e) => (sel === "[data-k]" ? e.kind === "k" : e.kind === "rate")),
};
globalThis.location = { reload: () => { console.log("RELOAD"); process.exit(3); } };
const realFetch = globalThis.fetch;
globalThis.fetch = (path, opts) => realFetch(url + path, opts);
let ticks = 0;
globalThis.setInterval = (f) => {
  const again = async () => { await new Promise((r) => setTimeout(r, 300)); await f(); ticks++; if (ticks < 2) again(); else done(); };
  again();
};
function done() {
  if (err.textContent) { console.log("ERR " + err.textContent); process.exit(2); }
  console.log(JSON.stringify(elements.map((e) => [e.kind, e.path, e.textContent, e.className])));
  process.exit(0);
}
eval(script);
"#;
    std::fs::write(dir.join("harness.js"), harness).unwrap();
    // Traffic between the script's fetches, so that a rate is above zero.
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    // Node.js is installed by `.ci/run`; without it this test fails rather than pass unchecked.
    let run = tokio::spawn(
        tokio::process::Command::new("node")
            .arg(dir.join("harness.js"))
            .arg(dir.join("page.html"))
            .arg(&admin)
            .kill_on_drop(true)
            .output(),
    );
    // Bounded: the script makes three fetches 300 ms apart.
    for _ in 0..1000 {
        if run.is_finished() {
            break;
        }
        assert_eq!(chat(&gw, "m").await, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the script ends")
        .unwrap()
        .expect("node runs (apt-get install -y nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elements: Vec<(String, String, String, String)> =
        serde_json::from_str(stdout.trim()).unwrap();
    let value = |path: &str| {
        elements
            .iter()
            .find(|e| e.0 == "k" && e.1 == path)
            .map(|e| (e.2.clone(), e.3.clone()))
            .unwrap()
    };
    assert_eq!(value("ready"), ("true".into(), "v-true".into()));
    assert_eq!(
        value("providers.0.instances.0.circuit"),
        ("closed".into(), "v-closed".into())
    );
    let attempts: u64 = value("providers.0.instances.0.attempts").0.parse().unwrap();
    assert!(attempts >= 1, "attempts shown: {attempts}");
    let rate = elements
        .iter()
        .find(|e| e.0 == "rate" && e.1 == "providers.0.instances.0.attempts")
        .unwrap();
    assert!(rate.2.parse::<f64>().unwrap() > 0.0, "rate shown: {rate:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

const ADMIN_TOKEN: &str = "admin-token-must-not-leak";

#[tokio::test]
async fn a_configured_admin_token_is_required_except_by_probes() {
    let gw = GatewayProcess::start(&format!("admin_token: \"{ADMIN_TOKEN}\"\n"));
    for open in ["/healthz", "/readyz"] {
        let status = get(&gw.admin_url(open)).await.0;
        assert!(status == 200 || status == 503, "{open}: {status}");
    }
    for path in [
        "/",
        "/admin/status",
        "/admin/instances",
        "/admin/config",
        "/metrics",
    ] {
        let (status, headers, _) = get(&gw.admin_url(path)).await;
        assert_eq!(status, 401, "{path} without the token");
        assert!(header(&headers, "www-authenticate").contains("Basic"));
        let wrong = client()
            .get(gw.admin_url(path))
            .bearer_auth("admin-token-must-not-lea")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = client()
            .get(gw.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path} with the token");
        // A browser's Basic authentication: the token as the password.
        let basic = client()
            .get(gw.admin_url(path))
            .basic_auth("anyone", Some(ADMIN_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 200, "{path} with Basic");
    }
    let reload = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 401);
    let reload = client()
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
}

#[test]
fn an_admin_listener_other_hosts_can_reach_needs_a_token() {
    let dir = std::env::temp_dir().join(format!("dragoman-admin-t-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    let path_text = path.to_str().unwrap();
    std::fs::write(&path, "admin_listen: 0.0.0.0:9999\n").unwrap();
    let (ok, out) = run_dragoman(&["-t", "-c", path_text], &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("admin_token: required when admin_listen is 0.0.0.0:9999"),
        "{out}"
    );
    std::fs::write(
        &path,
        "admin_listen: 0.0.0.0:9999\nadmin_token: \"${TOKEN}\"\n",
    )
    .unwrap();
    let (ok, out) = run_dragoman(&["-t", "-c", path_text], &[("TOKEN", ADMIN_TOKEN)]);
    assert!(ok, "{out}");
    assert!(!out.contains(ADMIN_TOKEN));
    std::fs::write(&path, "admin_token: \"\"\n").unwrap();
    let (ok, out) = run_dragoman(&["-t", "-c", path_text], &[]);
    assert!(
        !ok && out.contains("admin_token: must not be empty"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_running_config_holds_no_secret() {
    let mock = MockProvider::start().await.unwrap();
    let gateway_key = "gateway-key-secret-123";
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let gw = GatewayProcess::start(&format!(
        r#"admin_token: "{ADMIN_TOKEN}"
limits: {{ store: "redis://user:redis-password-secret@127.0.0.1:1/0" }}
keys:
  team: {{ key: "{gateway_key}" }}
  batch: {{ key_sha256: "{digest}" }}
providers:
  literal: {{ kind: openai, endpoints: ["{url}"], api_key: "provider-key-secret-1", headers: {{ x-extra-auth: header-secret-value }} }}
  rotating: {{ kind: openai, endpoints: ["{url}"], api_keys: ["rotating-key-secret-1", "rotating-key-secret-2"] }}
  command: {{ kind: openai, endpoints: ["{url}"], api_key_command: [sh, -c, "echo command-token-secret # argument-secret"] }}
models:
  m: {{ provider: literal }}
"#,
        url = mock.url()
    ));
    let resp = client()
        .get(gw.admin_url("/admin/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for secret in [
        ADMIN_TOKEN,
        gateway_key,
        digest,
        "redis-password-secret",
        "provider-key-secret-1",
        "header-secret-value",
        "rotating-key-secret-1",
        "rotating-key-secret-2",
        "command-token-secret",
        "argument-secret",
    ] {
        assert!(
            !text.contains(secret),
            "/admin/config shows {secret}:\n{text}"
        );
    }
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["admin_token"], "[redacted]");
    assert_eq!(
        config["limits"]["store"],
        "redis://[redacted]@127.0.0.1:1/0"
    );
    assert_eq!(config["keys"]["team"]["key"], "[redacted]");
    assert_eq!(
        config["providers"]["literal"]["keys"][0]["key"],
        "[redacted]"
    );
    assert_eq!(
        config["providers"]["literal"]["headers"]["x-extra-auth"],
        "[redacted]"
    );
    assert_eq!(config["providers"]["command"]["keys"][0]["command"], "sh");
    assert_eq!(
        config["providers"]["literal"]["endpoints"][0]["url"],
        mock.url()
    );
    assert_eq!(config["models"]["m"]["provider"], "literal");
    assert_eq!(
        config["admin_listen"],
        format!("127.0.0.1:{}", gw.admin_port)
    );
}

#[tokio::test]
async fn readyz_needs_a_model_and_a_usable_instance_for_each() {
    // No model at all.
    let empty = GatewayProcess::start("");
    let (status, _, body) = get(&empty.admin_url("/readyz")).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: no model configured\n")
    );
    drop(empty);

    // One model's only instance refuses connections (found by the TCP health check); the
    // other's is fine.
    let mock = MockProvider::start().await.unwrap();
    let closed = free_port();
    let gw = GatewayProcess::start(&format!(
        r#"providers:
  up: {{ kind: openai, endpoints: ["{up}"], auth: none }}
  down: {{ kind: openai, endpoints: ["http://127.0.0.1:{closed}"], auth: none, health_check: {{ interval: 100ms }} }}
models:
  fine: {{ provider: up }}
  refused: {{ provider: down }}
"#,
        up = mock.url()
    ));
    let mut last = String::new();
    wait_for(
        "/readyz to name the refused model",
        Duration::from_secs(10),
        async || {
            let (status, _, body) = get(&gw.admin_url("/readyz")).await;
            last = body;
            status == 503
        },
    )
    .await;
    assert!(
        last.contains("refused (provider down)") && !last.contains("fine"),
        "{last}"
    );
    drop(gw);

    // A model whose every circuit is open; then, ready once that model is gone.
    let flaky = MockProvider::start().await.unwrap();
    let body = |with_flaky: bool| {
        format!(
            r#"providers:
  up: {{ kind: openai, endpoints: ["{up}"], auth: none }}
  flaky: {{ kind: openai, endpoints: ["{flaky}"], auth: none, max_attempts: 1, health_check: {{ enabled: false }}, circuit_breaker: {{ consecutive_failures: 1, cooldown: 1h }} }}
models:
  fine: {{ provider: up }}
{}"#,
            if with_flaky {
                "  tripped: { provider: flaky }\n"
            } else {
                ""
            },
            up = mock.url(),
            flaky = flaky.url()
        )
    };
    let mut gw = GatewayProcess::start(&body(true));
    assert_eq!(get(&gw.admin_url("/readyz")).await.0, 200);
    flaky.push(Behaviour::json(500, json!({})));
    assert_eq!(chat(&gw, "tripped").await, 500);
    let (status, _, reason) = get(&gw.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(reason.contains("tripped (provider flaky)"), "{reason}");
    gw.rewrite_config(&body(false));
    let resp = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _, body) = get(&gw.admin_url("/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}
