//! Test support: the real `dragoman` binary started on loopback with a generated config, and
//! helpers to call it. Each gateway is killed when its handle drops.
#![allow(dead_code, unused_imports)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use dragoman_mock::{Behaviour, MockOptions, MockProvider, RecordedRequest};

pub struct GatewayProcess {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: PathBuf,
    /// The keys in its config (provider and gateway keys): none may appear in what it logs.
    secrets: Vec<String>,
    /// The listeners and Pingora's keys written before the test's body ([`Self::rewrite_config`]).
    preamble: String,
}

/// The key every helper here sends as the client's own: it must never be logged either.
pub const CLIENT_KEY: &str = "client-key-must-not-leak";

/// The literal keys in a config: values of `api_key`, `key` and `api_keys` entries (environment
/// references and values too short to tell from ordinary text left out).
pub fn secrets_in(config: &str) -> Vec<String> {
    fn walk(value: &serde_yaml::Value, under: Option<&str>, out: &mut Vec<String>) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                for (k, v) in map {
                    walk(v, k.as_str(), out);
                }
            }
            serde_yaml::Value::Sequence(items) => {
                for item in items {
                    walk(item, under, out);
                }
            }
            serde_yaml::Value::String(text)
                if matches!(under, Some("api_key" | "key" | "api_keys" | "admin_token"))
                    && text.len() >= 6
                    && !text.contains("${") =>
            {
                out.push(text.clone())
            }
            _ => {}
        }
    }
    let mut out = vec![CLIENT_KEY.to_string()];
    if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(config) {
        walk(&doc, None, &mut out);
    }
    out
}

/// A free loopback port. The OS may hand it out again before the gateway binds it; ports are
/// drawn from the ephemeral range so a clash is unlikely, and it would fail the test loudly.
/// A port for a server a test starts, free now. Taken below the kernel's ephemeral range, from
/// which every bind to port 0 (the mock providers) and every outgoing connection draw theirs, so
/// none of them can take it before the server binds it; and never the same one twice in a
/// process, so two servers started at once cannot both be handed it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    // Above the fixed ports of the CLI tests (18080) and the benches (18200-18321).
    const LOWEST: u32 = 20_000;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_from.saturating_sub(LOWEST);
    if span < 1_000 {
        // No room below the range: let the kernel choose.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
    }
    // Test binaries running at the same time start at different places.
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + (start + n) % span;
        let port = u16::try_from(port).expect("a port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

impl GatewayProcess {
    /// Starts the gateway with `body` (the providers/models part of a config; listeners and
    /// Pingora's files are added here) and waits until its admin listener answers.
    pub fn start(body: &str) -> GatewayProcess {
        Self::start_with_env(body, &[])
    }

    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> GatewayProcess {
        Self::start_listening(|port| format!("127.0.0.1:{port}"), body, env)
    }

    /// Like [`Self::start_with_env`], with the client listener's `listen` value written by
    /// `listen` from the port (a TLS listener, say).
    pub fn start_listening(
        listen: impl Fn(u16) -> String,
        body: &str,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let port = free_port();
        let admin_port = free_port();
        let dir =
            std::env::temp_dir().join(format!("dragoman-test-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let preamble = format!(
            "threads: 2\npid_file: {dir}/pid\nupgrade_sock: {dir}/upgrade.sock\n\
             grace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
             listen: {listen}\nadmin_listen: 127.0.0.1:{admin_port}\n",
            dir = dir.display(),
            listen = listen(port)
        );
        let config = format!("{preamble}{body}");
        let path = dir.join("dragoman.yaml");
        std::fs::write(&path, &config).expect("write config");
        let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dragoman"))
            .arg("-c")
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dragoman");
        let mut gw = GatewayProcess {
            child,
            port,
            admin_port,
            dir,
            secrets: secrets_in(&config),
            preamble,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dragoman exited early ({status}): {}", self.stderr());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dragoman did not start listening: {}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// The gateway's process id (for `/proc/PID/...`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the gateway was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("dragoman.yaml")
    }

    /// Replaces the config file's body (the listeners and Pingora's keys stay), for a reload.
    pub fn rewrite_config(&mut self, body: &str) {
        let config = format!("{}{body}", self.preamble);
        self.secrets.extend(secrets_in(&config));
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// Sends the gateway a signal (`libc::SIGHUP`, ...).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory effects; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    /// Stops the gateway, and checks that nothing it wrote during the test holds a key.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.stderr();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::thread::panicking() {
            return;
        }
        if let Some(secret) = self.secrets.iter().find(|s| log.contains(s.as_str())) {
            panic!(
                "a key ({} bytes) appears in the gateway's log:\n{log}",
                secret.len()
            );
        }
    }
}

/// Runs `dragoman` with arguments and returns (exit success, stdout + stderr).
pub fn run_dragoman(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dragoman"))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("run dragoman");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("client")
}

/// POSTs JSON and returns (status, headers, body as JSON).
pub async fn post_json(
    url: &str,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = client()
        .post(url)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, json)
}

pub fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Data segments the peer has sent on `stream` so far (`tcpi_data_segs_in`, Linux 4.6+).
pub fn data_segments_in(stream: &impl std::os::unix::io::AsRawFd) -> u32 {
    // SAFETY: an all-zero tcp_info is a valid value, and getsockopt writes at most `len` bytes
    // into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(TCP_INFO)");
    info.tcpi_data_segs_in
}

/// Runs `dragoman` with arguments for at most `limit`: (exit success, stdout + stderr), or
/// `None` for success when it was still running at `limit` (it is then killed). For commands that
/// must exit by themselves (a start-up that fails), without a hang when they do not.
pub fn run_dragoman_within(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (Option<bool>, String) {
    let dir = std::env::temp_dir().join(format!(
        "dragoman-run-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("out.log");
    let out = std::fs::File::create(&out_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dragoman"))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .envs(env.iter().copied())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("run dragoman");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status.success());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status, text)
}

/// A short Anthropic Messages stream ("first second"), as the mock sends it event by event.
pub fn anthropic_events() -> Vec<String> {
    [
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_stream1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"first"}}"#,
        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" second"}}"#,
        r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
        r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}"#,
        r#"event: message_stop
data: {"type":"message_stop"}"#,
    ]
    .iter()
    .map(|e| format!("{e}\n\n"))
    .collect()
}

/// Sends `request` to a gateway whose upstream is `mock`, then leaves: `held`, mid-stream (the
/// first events came, the rest is held by the mock); otherwise before the first byte, once the
/// upstream has the request (it is "thinking" for a minute).
pub async fn leave_mid_request(mock: &MockProvider, request: reqwest::RequestBuilder, held: bool) {
    use futures_util::StreamExt;
    if held {
        mock.push(Behaviour::Sse {
            events: anthropic_events(),
            interval: Duration::ZERO,
            hold_after: Some(3),
        });
    } else {
        mock.push(Behaviour::delay(Duration::from_secs(60), Behaviour::Reply));
    }
    let resp = request.send();
    if held {
        let resp = resp.await.expect("response");
        let mut body = resp.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("first bytes in time");
        assert!(first.is_some());
        drop(body);
    } else {
        let pending = tokio::spawn(resp);
        let deadline = Instant::now() + Duration::from_secs(10);
        while mock.requests().is_empty() {
            assert!(Instant::now() < deadline, "request never reached the mock");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pending.abort();
    }
}

/// One series' value from the gateway's `/metrics`: the line of metric `name` that has every
/// label in `labels` (`None` when there is none).
pub async fn metric(gw: &GatewayProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// A real `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; .ci/run installs it)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one of the SDK test scripts in tests/sdk/ against `gw`; its unittest report.
pub async fn run_sdk_tests(script: &str, gw: &GatewayProcess, env: &[(&str, &str)]) -> String {
    let python = std::env::var("DRAGOMAN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(&python)
        .args([script.as_str(), "-v"])
        .env("DRAGOMAN_URL", gw.url(""))
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "SDK tests failed:\n{report}\n{}",
        gw.stderr()
    );
    report
}
