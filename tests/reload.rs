//! Hot reload under load: the config file is rewritten and reloaded by SIGHUP and by
//! `POST /admin/reload` while clients keep calling, streams among them.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `check` until it holds, failing with `what` after `limit`.
async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("admin json")
}

async fn reload_by_api(gw: &GatewayProcess) -> (u16, Value) {
    let resp = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .expect("reload");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("reload json"))
}

async fn chat(gw: &GatewayProcess, model: &str) -> (u16, Value) {
    let (status, _, body) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    (status, body)
}

async fn listed_models(gw: &GatewayProcess) -> Vec<String> {
    let body = get_json(&gw.url("/v1/models")).await;
    body["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|m| m["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The instances of `provider` in `GET /admin/instances`.
async fn instances_of(gw: &GatewayProcess, provider: &str) -> Vec<Value> {
    let all = get_json(&gw.admin_url("/admin/instances")).await;
    all["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["provider"] == provider)
        .cloned()
        .collect()
}

fn health_checks(mock: &MockProvider) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.path == "/health")
        .count()
}

/// Clients calling `model` in a loop (every other request a stream) until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, model: &'static str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let client = client();
        let workers = (0..workers)
            .map(|w| {
                let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut i = 0usize;
                    // Bounded: each worker stops at the flag, or after 20,000 requests at most.
                    while !stop.load(Ordering::Relaxed) && i < 20_000 {
                        let stream = (i + w).is_multiple_of(2);
                        i += 1;
                        let outcome = async {
                            let resp = client
                                .post(&url)
                                .header("authorization", format!("Bearer {CLIENT_KEY}"))
                                .json(&json!({"model": model, "stream": stream,
                                    "messages": [{"role": "user", "content": "load"}]}))
                                .send()
                                .await
                                .map_err(|e| format!("send: {e}"))?;
                            let status = resp.status().as_u16();
                            let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
                            if status != 200 {
                                return Err(format!("status {status}: {body}"));
                            }
                            if stream && !body.ends_with("data: [DONE]\n\n") {
                                return Err(format!("stream cut short: {body}"));
                            }
                            if !stream && !body.contains("chat.completion") {
                                return Err(format!("not an answer: {body}"));
                            }
                            Ok(())
                        }
                        .await;
                        if let Err(why) = outcome {
                            failures.lock().unwrap().push(why);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            workers,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("load worker");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

fn providers(
    main: &MockProvider,
    flaky: &MockProvider,
    sick: &MockProvider,
    p1_timeout: &str,
) -> String {
    format!(
        r#"providers:
  p1:
    kind: openai
    endpoints: ["{main}"]
    auth: none
    timeout: {p1_timeout}
    health_check: {{ path: /health, interval: 200ms, expect_status: 404 }}
  flaky:
    kind: openai
    endpoints: ["{flaky}"]
    auth: none
    max_attempts: 1
    health_check: {{ enabled: false }}
    circuit_breaker: {{ consecutive_failures: 1, cooldown: 1h }}
  sick:
    kind: openai
    endpoints: ["{sick}"]
    auth: none
    health_check: {{ path: /health, interval: 1h, expect_status: 200 }}
"#,
        main = main.url(),
        flaky = flaky.url(),
        sick = sick.url(),
    )
}

fn provider_b(b: &MockProvider) -> String {
    format!(
        r#"  p2:
    kind: openai
    endpoints: ["{b}"]
    api_key_command: [sh, -c, "echo tok-b"]
    health_check: {{ path: /health, interval: 200ms, expect_status: 404 }}
"#,
        b = b.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_change_models_and_keep_pools_without_failing_a_request() {
    let main = MockProvider::start().await.unwrap();
    let flaky = MockProvider::start().await.unwrap();
    let sick = MockProvider::start().await.unwrap();
    let b = MockProvider::start().await.unwrap();
    // The sick instance fails its first health check, and would pass every later one.
    sick.push(Behaviour::json(500, json!({})));

    let base_models = "models:\n  steady: { provider: p1 }\n  flaky-m: { provider: flaky }\n  sick-m: { provider: sick }\n";
    let start_body = format!(
        "{}{base_models}  old: {{ provider: p1 }}\n",
        providers(&main, &flaky, &sick, "30s")
    );
    let mut gw = GatewayProcess::start(&start_body);

    // The sick instance is found unhealthy; then its endpoint recovers (no check for an hour).
    wait_for(
        "the sick instance's first check",
        Duration::from_secs(10),
        async || health_checks(&sick) >= 1,
    )
    .await;
    sick.set_default(Behaviour::json(200, json!({})));
    wait_for(
        "the sick instance marked down",
        Duration::from_secs(10),
        async || {
            instances_of(&gw, "sick")
                .await
                .first()
                .is_some_and(|i| i["healthy"] == false)
        },
    )
    .await;
    // One 500 opens the flaky instance's circuit for an hour.
    flaky.push(Behaviour::json(500, json!({"error": {"message": "boom"}})));
    assert_eq!(chat(&gw, "flaky-m").await.0, 500);
    let flaky_calls = flaky.request_count();
    assert_eq!(instances_of(&gw, "flaky").await[0]["circuit"], "open");

    let load = Load::start(gw.url("/v1/chat/completions"), "steady", 8);
    wait_for("load under way", Duration::from_secs(20), async || {
        load.done.load(Ordering::Relaxed) >= 100
    })
    .await;

    // 1. SIGHUP: a provider (its key from a command) and two models added, p1's timeout changed.
    let body1 = format!(
        "{}{}{base_models}  old: {{ provider: p1 }}\n  new-a: {{ provider: p1 }}\n  new-b: {{ provider: p2 }}\n",
        providers(&main, &flaky, &sick, "40s"),
        provider_b(&b)
    );
    gw.rewrite_config(&body1);
    gw.signal(libc::SIGHUP);
    wait_for("new-b listed", Duration::from_secs(10), async || {
        listed_models(&gw).await.contains(&"new-b".to_string())
    })
    .await;
    // At once: the new models answer, with the key the command printed during the reload.
    let (status, answer) = chat(&gw, "new-b").await;
    assert_eq!(status, 200, "{answer}");
    let to_b = b
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/chat/completions"));
    assert_eq!(
        to_b.expect("new-b reached p2").header("authorization"),
        Some("Bearer tok-b")
    );
    assert_eq!(chat(&gw, "new-a").await.0, 200);
    // The new pool's health checks run.
    wait_for("p2 health checks", Duration::from_secs(10), async || {
        health_checks(&b) >= 1
    })
    .await;

    // 2. The admin API: `old` removed, `steady` pointed at another upstream model, flaky's
    // timeout changed (its endpoints not), and restart-only keys changed.
    let body2 = format!(
        "{}{}models:\n  steady: {{ provider: p1, model: steady-v2 }}\n  flaky-m: {{ provider: flaky }}\n  sick-m: {{ provider: sick }}\n  new-a: {{ provider: p1 }}\n  new-b: {{ provider: p2 }}\nedge: {{ max_connections: 50 }}\n",
        providers(&main, &flaky, &sick, "40s").replace("max_attempts: 1", "max_attempts: 1\n    timeout: 45s"),
        provider_b(&b)
    );
    gw.rewrite_config(&body2);
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        text.replacen("threads: 2", "threads: 3", 1),
    )
    .unwrap();
    let (status, report) = reload_by_api(&gw).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["status"], "reloaded");
    assert_eq!(report["models"]["removed"], json!(["old"]));
    for kept in ["p1", "p2", "flaky", "sick"] {
        assert!(
            report["providers"]["pools_kept"]
                .as_array()
                .unwrap()
                .contains(&json!(kept)),
            "{kept} pool kept: {report}"
        );
    }
    let restart = report["restart_required"].as_array().unwrap();
    assert!(restart.contains(&json!("edge.max_connections")), "{report}");
    assert!(restart.contains(&json!("threads")), "{report}");
    let (status, gone) = chat(&gw, "old").await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "model_not_found");
    let (status, answer) = chat(&gw, "steady").await;
    assert_eq!((status, answer["model"].as_str()), (200, Some("steady-v2")));
    let generation = get_json(&gw.admin_url("/admin/status")).await["generation"].clone();

    // 3. Invalid files change nothing, and say why: by the admin API...
    gw.rewrite_config(&body2.replace(
        "models:\n",
        "  p3: { kind: openai, endpoints: [\"http://127.0.0.1:1\"], api_key_command: [sh, -c, \"exit 3\"] }\nmodels:\n",
    ));
    let (status, report) = reload_by_api(&gw).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["status"], "rejected");
    let why = report["error"].as_str().unwrap();
    assert!(why.contains("providers.p3.api_key_command"), "{why}");
    gw.rewrite_config(&body2.replace("  new-b: { provider: p2 }\n", "  new-b: { provider: p9 }\n"));
    let (status, report) = reload_by_api(&gw).await;
    assert_eq!(status, 422, "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("models.new-b.provider"),
        "{report}"
    );
    // ... and by SIGHUP (the reason is logged).
    gw.rewrite_config("models: [");
    gw.signal(libc::SIGHUP);
    wait_for(
        "the SIGHUP rejection logged",
        Duration::from_secs(10),
        async || gw.stderr().contains("reload (SIGHUP) rejected"),
    )
    .await;
    assert!(gw.stderr().contains("invalid YAML"), "{}", gw.stderr());
    assert_eq!(
        get_json(&gw.admin_url("/admin/status")).await["generation"],
        generation
    );
    assert_eq!(chat(&gw, "new-b").await.0, 200);
    assert_eq!(chat(&gw, "old").await.0, 404);

    // 4. SIGHUP: p2 and new-b removed.
    let body3 = body2
        .replace(&provider_b(&b), "")
        .replace("  new-b: { provider: p2 }\n", "");
    gw.rewrite_config(&body3);
    gw.signal(libc::SIGHUP);
    wait_for("new-b gone", Duration::from_secs(10), async || {
        !listed_models(&gw).await.contains(&"new-b".to_string())
    })
    .await;
    let (status, gone) = chat(&gw, "new-b").await;
    assert_eq!(
        (status, gone["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    // The removed pool's checks stop while the kept ones go on (both every 200 ms): once a
    // check in progress at the swap is done, p2 gets none while p1 gets three.
    for round in 0..2 {
        let b_checks = health_checks(&b);
        let main_checks = health_checks(&main);
        wait_for(
            "three more p1 health checks",
            Duration::from_secs(10),
            async || health_checks(&main) >= main_checks + 3,
        )
        .await;
        if round == 1 {
            assert_eq!(
                health_checks(&b),
                b_checks,
                "p2 is still checked after its removal"
            );
        }
    }

    // Enough traffic went through the reloads.
    wait_for("2000 requests", Duration::from_secs(60), async || {
        load.done.load(Ordering::Relaxed) >= 2000
    })
    .await;
    let (done, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {done} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Kept pools kept their state through four reloads: the circuit is still open (no request
    // reaches the instance) and the sick instance is still down, though its endpoint would pass
    // a check now (a rebuilt pool starts healthy and checks at once: p1 was checked 3 times
    // since the last reload).
    assert_eq!(instances_of(&gw, "flaky").await[0]["circuit"], "open");
    assert_eq!(chat(&gw, "flaky-m").await.0, 503);
    assert_eq!(flaky.request_count(), flaky_calls);
    assert_eq!(instances_of(&gw, "sick").await[0]["healthy"], false);
    assert_eq!(health_checks(&sick), 1);
}

#[tokio::test]
async fn a_provider_added_by_reload_follows_its_key_file() {
    let mock = MockProvider::start().await.unwrap();
    let mut gw = GatewayProcess::start("");
    let dir = std::env::temp_dir().join(format!("dragoman-reload-key-{}", gw.port));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, "file-key-1\n").unwrap();
    gw.rewrite_config(&format!(
        "providers:\n  p: {{ kind: openai, endpoints: [\"{}\"], api_key_file: {}, key_file_poll: 50ms }}\nmodels:\n  m: {{ provider: p }}\n",
        mock.url(),
        key_file.display()
    ));
    let (status, report) = reload_by_api(&gw).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(chat(&gw, "m").await.0, 200);
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some("Bearer file-key-1")
    );
    std::fs::write(&key_file, "file-key-2\n").unwrap();
    wait_for("the new key in use", Duration::from_secs(10), async || {
        chat(&gw, "m").await.0 == 200
            && mock.last_request().unwrap().header("authorization") == Some("Bearer file-key-2")
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sighup_with_a_broken_file_keeps_the_process_running() {
    let mut gw = GatewayProcess::start("");
    std::fs::write(gw.config_path(), "models: [").unwrap();
    gw.signal(libc::SIGHUP);
    wait_for(
        "the rejection logged",
        Duration::from_secs(10),
        async || gw.stderr().contains("reload (SIGHUP) rejected"),
    )
    .await;
    // Still alive and serving its admin endpoints.
    let resp = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    gw.rewrite_config("");
    let (status, report) = reload_by_api(&gw).await;
    assert_eq!((status, report["status"].as_str()), (200, Some("reloaded")));
}

/// Kills a daemonized gateway (by the pid its pid file names) when the test ends.
struct Daemon {
    pid_file: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Daemon {
    fn pid(&self) -> Option<libc::pid_t> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory effects; the pid is the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_daemonized_gateway_reloads_on_sighup() {
    let mock = MockProvider::start().await.unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("dragoman-daemon-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = Daemon {
        pid_file: dir.join("pid"),
        dir: dir.clone(),
    };
    let config = |models: &str| {
        format!(
            "threads: 1\npid_file: {pid}\nupgrade_sock: {dir}/upgrade.sock\nerror_log: {dir}/error.log\n\
             grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
             listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\n\
             providers:\n  p: {{ kind: openai, endpoints: [\"{url}\"], auth: none }}\nmodels:\n{models}",
            pid = daemon.pid_file.display(),
            dir = dir.display(),
            url = mock.url(),
        )
    };
    let path = dir.join("dragoman.yaml");
    std::fs::write(&path, config("  one: { provider: p }\n")).unwrap();
    // `-d` forks: the command returns once the daemon is on its way.
    let (started, out) = run_dragoman_within(
        &["-d", "-c", path.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_ne!(started, Some(false), "{out}");
    let models = format!("http://127.0.0.1:{port}/v1/models");
    let listed = async |name: &str| match client().get(&models).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default().contains(name),
        Err(_) => false,
    };
    wait_for("the daemon serving", Duration::from_secs(20), async || {
        daemon.pid().is_some() && listed("\"one\"").await
    })
    .await;
    let pid = daemon.pid().unwrap();

    std::fs::write(
        &path,
        config("  one: { provider: p }\n  two: { provider: p }\n"),
    )
    .unwrap();
    // SAFETY: kill has no memory effects; the pid is the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_for("the reloaded model", Duration::from_secs(10), async || {
        listed("\"two\"").await
    })
    .await;
    // The same process: it was reloaded, not restarted.
    assert_eq!(daemon.pid(), Some(pid));
    // SAFETY: as above; 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0);
}
