//! Provider credentials that change while the gateway runs: a key file re-read when it changes,
//! a key command run again before its token expires (never on the request path), several keys
//! taken in turn with a refused one set aside; and none of them, nor a command's output, ever in
//! what the gateway writes.
mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A scratch directory for key files and scripts, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "dragoman-cred-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn text(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces a file the way secret managers do: a new file renamed over the old one.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// How many runs a key command has appended to its count file.
fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn chat() -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

/// One chat request; its status and the bearer token the mock received for it.
async fn call(gw: &GatewayProcess, mock: &MockProvider) -> (u16, Option<String>) {
    mock.clear_requests();
    let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    let token = mock.last_request().and_then(|r| {
        r.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    });
    assert!(status == 200 || token.is_some(), "{status}: {body}");
    (status, token)
}

/// Polls `done` until it holds, failing the test after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The gateway wrote none of `secrets` anywhere.
fn assert_never_logged(gw: &GatewayProcess, secrets: &[&str]) {
    let stderr = gw.stderr();
    for secret in secrets {
        assert!(!stderr.contains(secret), "`{secret}` in the log:\n{stderr}");
    }
}

fn openai_provider(mock: &MockProvider, credential: &str) -> String {
    format!(
        "providers:\n  p: {{ kind: openai, endpoints: [\"{}/v1\"], {credential} }}\n\
         models:\n  m: {{ provider: p }}\n",
        mock.url()
    )
}

#[tokio::test]
async fn a_rotated_key_file_applies_without_a_restart_and_a_missing_one_keeps_the_last_key() {
    let mock = MockProvider::start().await.unwrap();
    let dir = Scratch::new("file");
    let file = dir.path("key");
    std::fs::write(&file, "file-key-one\n").unwrap();
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        &format!("api_key_file: \"{}\", key_file_poll: 50ms", file.display()),
    ));
    assert_eq!(call(&gw, &mock).await, (200, Some("file-key-one".into())));

    replace_file(&file, "  file-key-two \n");
    until(Duration::from_secs(10), "the new key upstream", || async {
        call(&gw, &mock).await == (200, Some("file-key-two".into()))
    })
    .await;
    // Once in use, the new key stays: no request goes back to the old one.
    for _ in 0..5 {
        assert_eq!(call(&gw, &mock).await, (200, Some("file-key-two".into())));
    }

    // Empty, then gone: the last good key stays, with a warning naming the file, not the key.
    replace_file(&file, "\n");
    until(
        Duration::from_secs(10),
        "the warning for an empty file",
        || async { gw.stderr().contains("is empty; keeping the last good key") },
    )
    .await;
    assert_eq!(call(&gw, &mock).await, (200, Some("file-key-two".into())));
    std::fs::remove_file(&file).unwrap();
    until(
        Duration::from_secs(10),
        "the warning for a missing file",
        || async { gw.stderr().contains("No such file") },
    )
    .await;
    assert_eq!(call(&gw, &mock).await, (200, Some("file-key-two".into())));
    replace_file(&file, "file-key-three");
    until(
        Duration::from_secs(10),
        "the third key upstream",
        || async { call(&gw, &mock).await == (200, Some("file-key-three".into())) },
    )
    .await;
    let stderr = gw.stderr();
    assert!(stderr.contains("providers.p.api_key_file"), "{stderr}");
    assert_never_logged(&gw, &["file-key-one", "file-key-two", "file-key-three"]);
}

/// A key command script: appends a line to `count` for each run, then runs `body` with `$n`, the
/// run's number.
fn script(dir: &Scratch, body: &str) -> (String, PathBuf) {
    let count = dir.path("runs");
    let path = dir.path("token.sh");
    std::fs::write(
        &path,
        format!(
            "echo run >> \"{count}\"\nn=$(wc -l < \"{count}\" | tr -d ' ')\n{body}\n",
            count = count.display()
        ),
    )
    .unwrap();
    (format!("[sh, \"{}\"]", path.display()), count)
}

#[tokio::test]
async fn a_key_command_is_run_again_in_the_background_and_requests_never_wait_for_it() {
    let mock = MockProvider::start().await.unwrap();
    let dir = Scratch::new("slow-command");
    let release = dir.path("release");
    // Every run after the first holds until the test releases it (20 s at most): requests sent
    // meanwhile would hang if they waited for it.
    let (run, count) = script(
        &dir,
        &format!(
            "i=0\nwhile [ \"$n\" -gt 1 ] && [ ! -e \"{}\" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n\
             echo \"cmd-token-$n\"\necho cmd-stderr-noise >&2",
            release.display()
        ),
    );
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        &format!("api_key_command: {{ run: {run}, refresh_every: 100ms, timeout: 30s }}"),
    ));
    assert_eq!(call(&gw, &mock).await, (200, Some("cmd-token-1".into())));
    until(Duration::from_secs(10), "the second run", || async {
        runs(&count) >= 2
    })
    .await;
    // The second run is under way and holding: requests go on with the token they have.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(call(&gw, &mock).await, (200, Some("cmd-token-1".into())));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a request waited for the command"
        );
    }
    assert_eq!(runs(&count), 2, "the command ran on the request path");
    std::fs::write(&release, "").unwrap();
    until(
        Duration::from_secs(10),
        "the renewed token upstream",
        || async { call(&gw, &mock).await.1.is_some_and(|t| t != "cmd-token-1") },
    )
    .await;
    // And it keeps being renewed.
    until(Duration::from_secs(10), "more runs", || async {
        runs(&count) >= 4
    })
    .await;
    assert_never_logged(&gw, &["cmd-token-", "cmd-stderr-noise"]);
}

#[tokio::test]
async fn a_key_command_is_run_again_before_the_lifetime_its_output_states() {
    let mock = MockProvider::start().await.unwrap();
    let dir = Scratch::new("json-command");
    let (run, count) = script(
        &dir,
        "printf '{\"token\": \"json-token-%s\", \"expires_in\": 1}' \"$n\"",
    );
    // Without the stated lifetime it would run again only after an hour.
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        &format!("api_key_command: {{ run: {run}, refresh_every: 1h }}"),
    ));
    until(Duration::from_secs(15), "three renewals", || async {
        runs(&count) >= 4
    })
    .await;
    let (status, token) = call(&gw, &mock).await;
    assert_eq!(status, 200);
    let token = token.unwrap_or_default();
    let n: usize = token
        .strip_prefix("json-token-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n >= 3, "an old token went upstream: {token}");
    assert_never_logged(&gw, &["json-token-"]);
}

#[tokio::test]
async fn a_failing_key_command_keeps_the_last_good_token_and_its_output_stays_out_of_the_log() {
    let mock = MockProvider::start().await.unwrap();
    let dir = Scratch::new("failing-command");
    let (run, count) = script(
        &dir,
        "if [ \"$n\" -gt 1 ]; then echo leaked-stdout-text; echo leaked-stderr-text >&2; exit 3; fi\n\
         echo good-cmd-token",
    );
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        &format!("api_key_command: {{ run: {run}, refresh_every: 100ms }}"),
    ));
    // A fourth run starts only once the third's failure was handled (and, before, logged).
    until(Duration::from_secs(15), "failed runs", || async {
        runs(&count) >= 4
    })
    .await;
    for _ in 0..3 {
        assert_eq!(call(&gw, &mock).await, (200, Some("good-cmd-token".into())));
    }
    let stderr = gw.stderr();
    assert!(
        stderr.contains("providers.p.api_key_command")
            && stderr.contains("keeping the last good token"),
        "{stderr}"
    );
    // Said when it started failing, not again at each of the retries since.
    assert_eq!(
        stderr.matches("keeping the last good token").count(),
        1,
        "{stderr}"
    );
    assert_never_logged(
        &gw,
        &["good-cmd-token", "leaked-stdout-text", "leaked-stderr-text"],
    );
}

#[tokio::test]
async fn a_token_past_its_stated_lifetime_is_not_sent_while_the_command_fails() {
    let mock = MockProvider::start().await.unwrap();
    let dir = Scratch::new("expiring-command");
    let (run, _) = script(
        &dir,
        "if [ \"$n\" -gt 1 ]; then exit 1; fi\necho '{\"token\": \"short-lived-token\", \"expires_in\": 4}'",
    );
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        &format!("api_key_command: {{ run: {run}, refresh_every: 200ms }}"),
    ));
    // Used while it lasts...
    assert_eq!(
        call(&gw, &mock).await,
        (200, Some("short-lived-token".into()))
    );
    until(Duration::from_secs(10), "the token to expire", || async {
        let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        status == 503 && body["error"]["code"] == "upstream_unavailable"
    })
    .await;
    // ...and never after.
    let sent = mock.request_count();
    let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!((status, mock.request_count()), (503, sent));
    until(Duration::from_secs(10), "the error in the log", || async {
        gw.stderr().contains("its last token has expired")
    })
    .await;
    assert_never_logged(&gw, &["short-lived-token"]);
}

#[test]
fn a_key_command_that_fails_its_first_run_stops_the_start_naming_the_key() {
    let dir = Scratch::new("first-run");
    let (run, _) = script(&dir, "echo first-run-output; exit 1");
    let config = dir.path("dragoman.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{}\nadmin_listen: null\npid_file: {}\nupgrade_sock: {}\n\
             providers:\n  p: {{ kind: openai, endpoints: [\"http://127.0.0.1:9/v1\"], \
             api_key_command: {run} }}\nmodels:\n  m: {{ provider: p }}\n",
            free_port(),
            dir.text("pid"),
            dir.text("upgrade.sock"),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dragoman"))
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .expect("start dragoman");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dragoman kept running with a failing key command");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.path("stderr")).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("providers.p.api_key_command"), "{stderr}");
    assert!(!stderr.contains("first-run-output"), "{stderr}");
}

#[tokio::test]
async fn several_keys_literal_env_and_file_take_turns_in_the_query() {
    let mock = MockProvider::start().await.unwrap();
    let dir = Scratch::new("rotation");
    std::fs::write(dir.path("key"), "rot-key-file\n").unwrap();
    let gw = GatewayProcess::start_with_env(
        &format!(
            "providers:\n  g: {{ kind: gemini, endpoints: [\"{}\"], auth: {{ query: key }}, \
             api_keys: [rot-key-literal, \"${{ROT_KEY_ENV}}\", {{ file: \"{}\" }}] }}\n\
             models:\n  m: {{ provider: g, model: gemini-2.0-flash }}\n",
            mock.url(),
            dir.path("key").display()
        ),
        &[("ROT_KEY_ENV", "rot-key-env")],
    );
    let mut seen = Vec::new();
    for _ in 0..6 {
        mock.clear_requests();
        let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
        assert_eq!(status, 200, "{body}");
        let req = mock.last_request().expect("upstream request");
        assert_eq!(req.header("x-goog-api-key"), None);
        seen.push(req.query("key").unwrap_or_default());
    }
    // Each key in turn, every key as often.
    assert_eq!(seen[..3], seen[3..], "{seen:?}");
    let mut three = seen[..3].to_vec();
    three.sort();
    assert_eq!(three, ["rot-key-env", "rot-key-file", "rot-key-literal"]);
    assert_never_logged(&gw, &["rot-key-"]);
}

#[tokio::test]
async fn a_key_refused_with_401_or_429_is_set_aside_and_the_request_retried_with_another() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        "api_keys: [aside-key-one, aside-key-two], key_cooldown: 60s",
    ));
    let url = gw.url("/v1/chat/completions");
    let received = |mock: &MockProvider| -> Vec<String> {
        mock.requests()
            .iter()
            .filter_map(|r| r.header("authorization").map(str::to_owned))
            .collect()
    };

    // A 401: the key is set aside and the request goes again with the other one.
    mock.clear_requests();
    mock.push(Behaviour::json(
        401,
        json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}),
    ));
    let (status, headers, body) = post_json(&url, &chat()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-dragoman-attempts"), "2");
    let keys = received(&mock);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_ne!(keys[0], keys[1]);
    let good = keys[1].clone();
    for _ in 0..3 {
        assert_eq!(
            call(&gw, &mock).await.1.map(|t| format!("Bearer {t}")),
            Some(good.clone())
        );
    }

    // A 429 with Retry-After on the other one: no key is left, so the upstream's answer is the
    // client's, with the key it echoes redacted.
    let echoed = good.trim_start_matches("Bearer ").to_string();
    mock.clear_requests();
    mock.push(Behaviour::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: json!({"error": {"message": format!("Rate limit reached for key {echoed}"),
                     "type": "rate_limit_error"}})
        .to_string()
        .into(),
        headers: vec![("retry-after".into(), "7".into())],
    });
    let (status, _, body) = post_json(&url, &chat()).await;
    assert_eq!(status, 429, "{body}");
    assert!(!body.to_string().contains(&echoed), "{body}");
    assert_eq!(received(&mock), std::slice::from_ref(&good));

    // Both keys aside: the gateway answers as the rate-limited path does, without calling the
    // upstream, and says when the first key (the 429's, after its Retry-After) comes back.
    let sent = mock.request_count();
    let (status, headers, body) = post_json(&url, &chat()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    let retry_after: u64 = header(&headers, "retry-after").parse().unwrap_or(0);
    assert!((1..=7).contains(&retry_after), "{headers:?}");
    assert_eq!(mock.request_count(), sent, "a request went upstream");
    let stderr = gw.stderr();
    assert!(
        stderr.contains("providers.p.api_keys[") && stderr.contains("set aside"),
        "{stderr}"
    );
    assert_never_logged(&gw, &["aside-key-"]);
}

#[tokio::test]
async fn a_key_answered_429_is_retried_with_the_other_on_the_same_instance() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&openai_provider(
        &mock,
        "api_keys: [quota-key-one, quota-key-two]",
    ));
    mock.push(Behaviour::Raw {
        status: 429,
        content_type: "application/json".into(),
        body: json!({"error": {"message": "quota", "type": "rate_limit_error"}})
            .to_string()
            .into(),
        headers: vec![("retry-after".into(), "30".into())],
    });
    // One instance: the 429 is the key's, so the instance (and the model on it) stays in use.
    let (status, headers, body) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-dragoman-attempts"), "2");
    let keys: Vec<String> = mock
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_ne!(keys[0], keys[1]);
    let other = keys[1].trim_start_matches("Bearer ").to_string();
    for _ in 0..4 {
        assert_eq!(call(&gw, &mock).await, (200, Some(other.clone())));
    }
    assert_never_logged(&gw, &["quota-key-"]);
}

#[tokio::test]
async fn a_single_key_answered_401_is_the_clients_answer_as_before() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&openai_provider(&mock, "api_keys: [lone-key]"));
    mock.push(Behaviour::json(
        401,
        json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}),
    ));
    let (status, _, _) = post_json(&gw.url("/v1/chat/completions"), &chat()).await;
    assert_eq!(status, 401);
    // Nothing to switch to, so nothing set aside: the next request goes up with the same key.
    assert_eq!(call(&gw, &mock).await, (200, Some("lone-key".into())));
}
