//! The process's life under an operator: a zero-downtime upgrade done in the systemd unit's order
//! (`-t`, `SIGQUIT` to the running instance, then `-u -d`), and `SIGTERM`'s graceful shutdown:
//! requests in flight finish within the grace period, a kept-alive connection's next request is
//! still answered, and whatever is left when the grace period ends gets a terminal error event or
//! a 503 in the client's protocol, never a cut connection.
mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config in a temporary directory: Pingora's files there, two providers on mocks: `fast`
/// (OpenAI kind, for load) and `slow` (Anthropic kind, for held streams).
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    port: u16,
}

impl Setup {
    fn new(grace_seconds: u64, fast: &MockProvider, slow: &MockProvider) -> Setup {
        let port = free_port();
        let admin_port = free_port();
        let dir =
            std::env::temp_dir().join(format!("dragoman-lifecycle-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let text = format!(
            "threads: 2\npid_file: {dir}/dragoman.pid\nupgrade_sock: {dir}/upgrade.sock\n\
             grace_period_seconds: {grace_seconds}\ngraceful_shutdown_timeout_seconds: 1\n\
             listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\n\
             providers:\n\
             \x20 fast: {{ kind: openai, endpoints: [\"{fast}/v1\"], api_key: fast-key-123 }}\n\
             \x20 slow: {{ kind: anthropic, endpoints: [\"{slow}\"], api_key: slow-key-123, timeout: 120s }}\n\
             models:\n\
             \x20 fast: {{ provider: fast, model: gpt-4o-mini }}\n\
             \x20 slow: {{ provider: slow, model: claude-3-5-haiku-latest }}\n\
             \x20 chain: {{ provider: slow, model: claude-3-5-haiku-latest, fallbacks: [fast] }}\n",
            dir = dir.display(),
            fast = fast.url(),
            slow = slow.url(),
        );
        let config = dir.join("dragoman.yaml");
        std::fs::write(&config, text).expect("write config");
        Setup { dir, config, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs `dragoman ARGS -c CONFIG` to its end (a `-t`, or a `-d` whose parent exits once the
    /// daemon is forked), its output appended to `log`.
    async fn run(&self, args: &[&str], log: &str) -> bool {
        let mut child = self.spawn(args, log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "dragoman {args:?} did not return"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn(&self, args: &[&str], log: &str) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(log))
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_dragoman"))
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start dragoman")
    }

    /// The pid in the pid file once it names a running process other than `not`.
    async fn daemon_pid(&self, not: Option<i32>) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pid = std::fs::read_to_string(self.dir.join("dragoman.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| Some(*p) != not && alive(*p)) {
                return pid;
            }
            assert!(Instant::now() < deadline, "no daemon in the pid file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_log(&self, log: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let content = std::fs::read_to_string(self.log(log)).unwrap_or_default();
            if content.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{text}` never appeared in {log}:\n{content}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "gateway never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until new connections are refused: the listener is closed.
    async fn wait_refusing(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "still accepting connections after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Daemons started by a test, killed when it ends however it ends.
struct Daemons(Mutex<Vec<i32>>);

impl Daemons {
    fn add(&self, pid: i32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for &pid in self.0.lock().unwrap().iter() {
            let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("dragoman"));
            if ours && alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Whether `pid` runs (a zombie left to a parent that does not reap counts as ended).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

async fn wait_ended(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a child gateway's exit; its status.
async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway still running after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "stream": stream, "max_tokens": 16,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// A stream the `slow` mock begins and then holds: the response with its first event read.
/// `interval` spaces its events (once released, the rest then takes 4 intervals).
async fn held_stream(
    setup: &Setup,
    slow: &MockProvider,
    path: &str,
    model: &str,
    interval: Duration,
) -> (
    impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>,
    String,
) {
    slow.push(Behaviour::Sse {
        events: anthropic_events(),
        interval,
        hold_after: Some(3),
    });
    let resp = client()
        .post(setup.url(path))
        .json(&chat(model, true))
        .send()
        .await
        .expect("stream request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("first") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("first events in time")
            .expect("stream ended early")
            .expect("stream broke");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    (body, seen)
}

/// Events this far apart make a released stream outlast the drain's 1 s wait for connections
/// still in their handshake: a drain that did not count it would cut it.
const SPACED: Duration = Duration::from_millis(400);

/// Reads the rest of a stream: its text, and whether it ended cleanly (not cut).
async fn rest_of(
    mut body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    mut seen: String,
) -> (String, bool) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("stream never ended")
        {
            Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Some(Err(_)) => return (seen, false),
            None => return (seen, true),
        }
    }
}

/// One HTTP/1.1 request on a kept-alive raw connection: the answer's head (lowercased) and body.
async fn exchange(conn: &mut TcpStream, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length answer");
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// Eight clients, each looping requests on its own kept-alive connection, until `stop`.
struct Load {
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A bound on the whole load, whatever happens.
const MAX_LOAD_REQUESTS: usize = 40_000;

impl Load {
    fn start(url: String) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..8)
            .map(|_| {
                let (ok, failures, stop, url) =
                    (ok.clone(), failures.clone(), stop.clone(), url.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .pool_max_idle_per_host(1)
                        .no_proxy()
                        .build()
                        .expect("client");
                    while !stop.load(Ordering::Relaxed)
                        && ok.load(Ordering::Relaxed) < MAX_LOAD_REQUESTS
                    {
                        let result = client.post(&url).json(&chat("fast", false)).send().await;
                        let outcome = match result {
                            Ok(resp) if resp.status() == 200 => match resp.bytes().await {
                                Ok(b) if b.starts_with(b"{") => Ok(()),
                                Ok(b) => Err(format!("body {:?}", String::from_utf8_lossy(&b))),
                                Err(e) => Err(format!("body: {e:?}")),
                            },
                            Ok(resp) => Err(format!("status {}", resp.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match outcome {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failures,
            stop,
            tasks,
        }
    }

    fn done(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests more than now have succeeded.
    async fn wait_more(&self, n: usize) {
        let target = self.done() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done() < target {
            assert!(
                self.failures.lock().unwrap().len() < 100,
                "failing: {:?}",
                &self.failures.lock().unwrap()[..5]
            );
            assert!(Instant::now() < deadline, "load stalled at {}", self.done());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load client");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_in_the_units_order_under_load_fails_no_request_and_finishes_an_older_stream() {
    let fast = MockProvider::start().await.unwrap();
    let slow = MockProvider::start().await.unwrap();
    let setup = Setup::new(30, &fast, &slow);
    let daemons = Daemons(Mutex::new(Vec::new()));

    // ExecStartPre, then ExecStart (daemonized, as the unit runs it).
    assert!(setup.run(&["-t"], "start.log").await);
    assert!(setup.run(&["-d"], "start.log").await);
    let old = setup.daemon_pid(None).await;
    daemons.add(old);
    setup.wait_listening().await;

    let (stream, seen) = held_stream(&setup, &slow, "/v1/messages", "slow", Duration::ZERO).await;
    let load = Load::start(setup.url("/v1/chat/completions"));
    load.wait_more(500).await;

    // ExecReload, in the unit's order: check the config, tell the running instance to hand its
    // sockets over, then start the new one, which takes them.
    assert!(setup.run(&["-t"], "reload.log").await);
    signal(old, libc::SIGQUIT);
    let upgraded = setup.run(&["-u", "-d"], "reload.log").await;
    assert!(
        upgraded,
        "the new instance did not start: {}",
        std::fs::read_to_string(setup.log("reload.log")).unwrap_or_default()
    );
    let new = setup.daemon_pid(Some(old)).await;
    daemons.add(new);

    // The old instance stops accepting and drains; the stream it began finishes there, intact.
    setup.wait_log("start.log", "draining:").await;
    load.wait_more(500).await;
    assert!(alive(old), "the old instance left before its stream ended");
    slow.release();
    let (text, clean) = rest_of(Box::pin(stream), seen).await;
    assert!(clean, "stream cut: {text}");
    assert_eq!(text, anthropic_events().concat());
    // With nothing left in flight it exits at once, well within its 30 s grace period.
    wait_ended(old, Duration::from_secs(15)).await;

    load.wait_more(1000).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 2000, "only {ok} requests");

    let (status, _, _) = post_json(&setup.url("/v1/chat/completions"), &chat("fast", false)).await;
    assert_eq!(status, 200);
    signal(new, libc::SIGTERM);
    wait_ended(new, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_and_lets_a_stream_in_flight_finish() {
    let fast = MockProvider::start().await.unwrap();
    let slow = MockProvider::start().await.unwrap();
    let setup = Setup::new(30, &fast, &slow);
    let mut gateway = setup.spawn(&[], "gateway.log");
    setup.wait_listening().await;
    let (stream, seen) = held_stream(&setup, &slow, "/v1/chat/completions", "slow", SPACED).await;

    signal(gateway.id() as i32, libc::SIGTERM);
    setup.wait_refusing().await;
    assert!(gateway.try_wait().unwrap().is_none(), "exited mid-stream");
    slow.release();
    let (text, clean) = rest_of(Box::pin(stream), seen).await;
    assert!(clean, "stream cut: {text}");
    assert!(text.contains(" second"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // Nothing left: it exits without waiting out its 30 s grace period.
    let status = wait_exit(&mut gateway, Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connections_next_request_during_the_drain_is_answered_then_closed() {
    let fast = MockProvider::start().await.unwrap();
    let slow = MockProvider::start().await.unwrap();
    let setup = Setup::new(30, &fast, &slow);
    let mut gateway = setup.spawn(&[], "gateway.log");
    setup.wait_listening().await;
    let mut conn = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
    let (head, _) = exchange(&mut conn, "/v1/models").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: keep-alive"), "{head}");
    // A stream keeps the process draining while the idle connection is used again.
    let (stream, seen) = held_stream(&setup, &slow, "/v1/messages", "slow", SPACED).await;

    signal(gateway.id() as i32, libc::SIGTERM);
    setup.wait_refusing().await;
    let (head, body) = exchange(&mut conn, "/v1/models")
        .await
        .expect("the kept-alive connection's next request was not answered");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"fast\""));
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut rest))
        .await
        .expect("connection left open after `connection: close`")
        .expect("connection reset instead of closed");
    assert_eq!(n, 0);

    slow.release();
    let (text, clean) = rest_of(Box::pin(stream), seen).await;
    assert!(
        clean && text.ends_with("{\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );
    let status = wait_exit(&mut gateway, Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_left_when_the_grace_period_ends_gets_an_error_in_its_protocol_not_a_cut() {
    let fast = MockProvider::start().await.unwrap();
    let slow = MockProvider::start().await.unwrap();
    let setup = Setup::new(2, &fast, &slow);
    let mut gateway = setup.spawn(&[], "gateway.log");
    setup.wait_listening().await;

    // An Anthropic stream passed through, an OpenAI stream translated, a stream of a model with
    // a fallback (run by the dispatcher), a whole answer of that model still awaited (whose
    // failure would start the fallback), a request whose body is still coming, and an idle
    // kept-alive connection.
    let anthropic = held_stream(&setup, &slow, "/v1/messages", "slow", Duration::ZERO).await;
    let openai = held_stream(
        &setup,
        &slow,
        "/v1/chat/completions",
        "slow",
        Duration::ZERO,
    )
    .await;
    let chained = held_stream(&setup, &slow, "/v1/messages", "chain", Duration::ZERO).await;
    slow.push(Behaviour::delay(Duration::from_secs(60), Behaviour::Reply));
    let before = slow.request_count();
    let url = setup.url("/v1/chat/completions");
    let whole = tokio::spawn(async move { post_json(&url, &chat("chain", false)).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.request_count() == before {
        assert!(Instant::now() < deadline, "request never reached the mock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut idle = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
    exchange(&mut idle, "/v1/models").await.unwrap();
    // Accepted (it has had an answer) before the signal: connections still in the listen queue
    // when the listener closes are reset by the kernel.
    let mut upload = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
    exchange(&mut upload, "/v1/models").await.unwrap();
    upload
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n\
              content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"model\"",
        )
        .await
        .unwrap();

    let signalled = Instant::now();
    signal(gateway.id() as i32, libc::SIGTERM);

    let (text, clean) = rest_of(Box::pin(anthropic.0), anthropic.1).await;
    assert!(clean, "stream cut: {text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    assert!(last.contains("shutting down"), "{text}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "ended before the grace period"
    );

    let (text, clean) = rest_of(Box::pin(openai.0), openai.1).await;
    assert!(clean, "stream cut: {text}");
    assert!(text.contains("gateway_shutting_down"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    let (text, clean) = rest_of(Box::pin(chained.0), chained.1).await;
    assert!(clean, "stream cut: {text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    assert!(last.contains("shutting down"), "{text}");
    // No fallback started for it, nor for anything else.
    assert_eq!(fast.request_count(), 0);

    let (status, _, body) = whole.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "gateway_shutting_down", "{body}");

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), upload.read_to_end(&mut answer))
        .await
        .expect("unfinished upload left open past the grace period")
        .unwrap_or_else(|e| {
            panic!(
                "unfinished upload reset ({e}) after {:?}: {}",
                String::from_utf8_lossy(&answer),
                std::fs::read_to_string(setup.log("gateway.log")).unwrap_or_default()
            )
        });
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("gateway_shutting_down"), "{answer}");

    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut rest))
        .await
        .expect("idle connection left open past the grace period")
        .expect("idle connection reset instead of closed");
    assert_eq!(n, 0);

    let status = wait_exit(&mut gateway, Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "took {:?} to exit",
        signalled.elapsed()
    );
}

#[test]
fn a_grace_period_past_a_day_is_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("dragoman-grace-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dragoman.yaml");
    std::fs::write(&path, "grace_period_seconds: 86401\nlisten: 127.0.0.1:1\n").unwrap();
    let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("grace_period_seconds: 86401 is more than 86400"),
        "{out}"
    );
}
