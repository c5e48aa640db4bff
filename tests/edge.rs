//! The edge against slow and hostile clients, with raw TCP clients on loopback: the header and
//! body deadlines, the keep-alive idle timeout, the write timeout of a stream reader that stops
//! reading (and the upstream call it ends), the longest stream, the connection limit, the global
//! bound on buffered bytes, memory that stays flat under stalled bodies, and which client headers
//! reach the upstream.
mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway in front of `mock` (model `m`, OpenAI kind; `mf` goes through the dispatcher, as a
/// model with a fallback), with `edge` as its `edge:` section and `extra` top-level keys.
fn gateway(mock: &MockProvider, edge: &str, extra: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        "edge: {{ {edge} }}\n{extra}providers:\n  p: {{ kind: openai, auth: none, endpoints: [\"{}/v1\"] }}\n\
         models:\n  m: {{ provider: p }}\n  mf: {{ provider: p, model: m, fallbacks: [m] }}\n",
        mock.url()
    ))
}

async fn connect(gw: &GatewayProcess) -> TcpStream {
    TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect")
}

/// Reads until the gateway closes the connection (true) or `limit` passes (false).
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// Reads one answer framed by `content-length`: (status, body).
async fn read_answer(stream: &mut TcpStream, limit: Duration) -> (u16, Vec<u8>) {
    try_read_answer(stream, limit)
        .await
        .expect("no whole answer")
}

/// One answer framed by `content-length`, or `None` if the connection ends or `limit` passes
/// before it is whole.
async fn try_read_answer(stream: &mut TcpStream, limit: Duration) -> Option<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            if out.len() >= head_end + 4 + length {
                let status = head.get(9..12)?.parse().ok()?;
                return Some((status, out[head_end + 4..head_end + 4 + length].to_vec()));
            }
        }
        match tokio::time::timeout_at(end, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

fn status_of(raw: &[u8]) -> u16 {
    std::str::from_utf8(raw.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body_of(raw: &[u8]) -> Value {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    serde_json::from_slice(&raw[at..]).unwrap_or(Value::Null)
}

/// A field of `/proc/PID/status`, in kB.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc status")
}

/// Bytes the kernel holds, unread by the gateway, on its connections accepted on `port`
/// (`rx_queue` in /proc/net/tcp).
fn unread_by_gateway(port: u16) -> u64 {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address, state (01: established), tx:rx queues
            (fields.get(1)?.ends_with(&local) && *fields.get(3)? == "01")
                .then(|| u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok())
                .flatten()
        })
        .sum()
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn a_trickled_header_is_cut_off_at_the_header_deadline() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock, "header_timeout: 500ms", "");
    let stream = connect(&gw).await;
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One header byte every 50 ms: each read is quick, the whole header never comes.
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"POST /v1/messages HTTP/1.1\r\n")
            .await
            .ok();
        for _ in 0..200 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut out))
        .await
        .is_ok();
    let took = started.elapsed();
    trickle.abort();
    assert!(closed, "the connection outlived 5 s");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "cut off after {took:?}"
    );
    assert_eq!(status_of(&out), 408, "{}", String::from_utf8_lossy(&out));
    // In the client's protocol: the request line said /v1/messages.
    let body = body_of(&out);
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn a_body_that_stalls_or_trickles_after_a_large_content_length_gets_408() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(
        &mock,
        "body_timeout: 500ms, max_buffered_bytes: 400000000",
        "max_request_bytes: 200000000\n",
    );
    for (path, trickle) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let mut stream = connect(&gw).await;
        let started = Instant::now();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                     content-length: 100000000\r\n\r\n{{\"model\": \"m\""
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let pacer = tokio::spawn(async move {
            for _ in 0..if trickle { 100 } else { 0 } {
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Stalls, holding the connection open.
            std::future::pending::<()>().await;
        });
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut out))
            .await
            .is_ok();
        let took = started.elapsed();
        pacer.abort();
        assert!(closed, "{path}: the connection outlived 5 s");
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(2),
            "{path}: cut off after {took:?}"
        );
        assert_eq!(status_of(&out), 408, "{}", String::from_utf8_lossy(&out));
        let body = body_of(&out);
        if path == "/v1/messages" {
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], "timeout_error", "{body}");
        } else {
            assert_eq!(body["error"]["code"], "request_timeout", "{body}");
        }
    }
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock, "idle_timeout: 1s", "");
    let mut stream = connect(&gw).await;
    let request = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
    // Kept alive: a second request on the same connection is served.
    for _ in 0..2 {
        stream.write_all(request).await.unwrap();
        let (status, _) = read_answer(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(status, 200);
    }
    let idle_from = Instant::now();
    let (rest, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    let idle = idle_from.elapsed();
    assert!(closed, "an idle connection outlived 5 s");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2500),
        "closed after {idle:?} idle"
    );
}

#[tokio::test]
async fn a_stream_reader_that_stops_reading_is_disconnected_and_the_upstream_call_ends() {
    // 32 MiB of events: more than every socket buffer between the mock and the client holds.
    let event = format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"content": "x".repeat(8000)}}]})
    );
    for model in ["m", "mf"] {
        let mock = MockProvider::start().await.unwrap();
        mock.set_default(Behaviour::Sse {
            events: vec![event.clone(); 4096],
            interval: Duration::ZERO,
            hold_after: None,
        });
        let gw = gateway(&mock, "write_timeout: 500ms", "");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket
            .connect(([127, 0, 0, 1], gw.port).into())
            .await
            .unwrap();
        let body = json!({"model": model, "stream": true,
                          "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        stream
            .write_all(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // The client reads nothing more. The gateway's writes stall once the buffers are full;
        // after `write_timeout` it lets the client go, which ends the upstream call.
        assert!(
            mock.wait_connection_closed(Duration::from_secs(15)).await,
            "{model}: the upstream call outlived its stalled client"
        );
        let (received, closed) = read_to_close(&mut stream, Duration::from_secs(15)).await;
        assert!(closed, "{model}: the client's connection was not closed");
        assert!(
            received.len() < 4096 * event.len(),
            "{model}: the whole stream went out"
        );
    }
}

#[tokio::test]
async fn a_stream_past_max_stream_duration_ends_with_an_error_event() {
    let chunk = |content: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": content}}]})
        )
    };
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock, "max_stream_duration: 1s", "");
    let cases = [
        // Silent after its first chunk (within its stream_idle_timeout), and one that keeps
        // sending; each in both client protocols, in the session and through the dispatcher.
        ("/v1/chat/completions", "m", true),
        ("/v1/chat/completions", "mf", false),
        ("/v1/messages", "m", false),
        ("/v1/messages", "mf", true),
    ];
    for (path, model, silent) in cases {
        mock.set_default(Behaviour::Sse {
            events: vec![chunk("a"); if silent { 2 } else { 200 }],
            interval: if silent {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            },
            hold_after: silent.then_some(1),
        });
        let body = json!({"model": model, "stream": true, "max_tokens": 10,
                          "messages": [{"role": "user", "content": "hi"}]});
        let started = Instant::now();
        let resp = client()
            .post(gw.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path} {model}");
        let text = tokio::time::timeout(Duration::from_secs(8), resp.text())
            .await
            .expect("the stream outlived 8 s")
            .unwrap_or_default();
        let took = started.elapsed();
        mock.release();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{path} {model}: ended after {took:?}"
        );
        assert!(
            text.contains("stream_duration_exceeded")
                || text.contains("ran past the gateway's limit"),
            "{path} {model}: {text}"
        );
        assert!(!text.contains("[DONE]"), "{path} {model}: {text}");
        if path == "/v1/messages" {
            assert!(text.contains("event: error"), "{path} {model}: {text}");
        }
    }
}

#[tokio::test]
async fn past_max_connections_a_new_connection_is_answered_503_in_its_protocol() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(&mock, "max_connections: 2, header_timeout: 20s", "");
    // Two kept-alive connections, each served once: they hold both places from then on.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.len() < 2 && Instant::now() < deadline {
        let mut s = connect(&gw).await;
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // While a place is still held by a connection that is closing, this one gets a 503.
        if let Some((200, _)) = try_read_answer(&mut s, Duration::from_secs(5)).await {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 2, "two connections could not be served");
    let refused = |path: &'static str, method: &'static str| {
        let port = gw.port;
        async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(
                format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            read_to_close(&mut s, Duration::from_secs(5)).await.0
        }
    };
    let started = Instant::now();
    let answer = refused("/v1/models", "GET").await;
    assert!(started.elapsed() < Duration::from_secs(2), "not quick");
    assert_eq!(
        status_of(&answer),
        503,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(body_of(&answer)["error"]["code"], "too_many_connections");
    let anthropic = refused("/v1/messages", "POST").await;
    assert_eq!(
        status_of(&anthropic),
        503,
        "{}",
        String::from_utf8_lossy(&anthropic)
    );
    assert_eq!(body_of(&anthropic)["type"], "error");
    // A place freed is a place taken again.
    drop(held);
    let mut ok = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok && Instant::now() < deadline {
        ok = status_of(&refused("/v1/models", "GET").await) == 200;
    }
    assert!(ok, "a freed place was not given to a new connection");
}

#[tokio::test]
async fn past_the_global_buffer_bound_requests_get_503_until_it_frees() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(
        &mock,
        "max_buffered_bytes: 1000000, body_timeout: 30s",
        "max_request_bytes: 500000\n",
    );
    // A stalled body holds 400 kB of the 1 MB budget: a request held as 2 × 450 kB no longer fits.
    let mut stalled = connect(&gw).await;
    stalled
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 490000\r\n\r\n",
        )
        .await
        .unwrap();
    stalled.write_all(&vec![b' '; 400_000]).await.unwrap();
    // 450 kB of prompt, held twice (as received, and as planned for the upstream); the mock
    // echoes only the last user message, so the answer is small.
    let big = json!({"model": "m", "messages": [
        {"role": "system", "content": "x".repeat(450_000)},
        {"role": "user", "content": "hi"},
    ]});
    let mut answer = (0, Value::Null);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &big).await;
        answer = (status, body);
        if status == 503 {
            break;
        }
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], "gateway_overloaded");
    assert_eq!(mock.request_count(), 0);
    // The stalled client leaves: its bytes are given back.
    drop(stalled);
    let mut answer = (0, Value::Null);
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer.0 != 200 && Instant::now() < deadline {
        let (status, _, body) = post_json(&gw.url("/v1/chat/completions"), &big).await;
        answer = (status, body);
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
}

#[tokio::test]
async fn stalled_bodies_declaring_100_mb_keep_the_gateways_memory_flat() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(
        &mock,
        "body_timeout: 60s, max_buffered_bytes: 400000000",
        "max_request_bytes: 200000000\n",
    );
    let (status, _, _) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "warm up"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let pid = gw.pid();
    let (rss_before, size_before) = (
        proc_status_kb(pid, "VmRSS:"),
        proc_status_kb(pid, "VmSize:"),
    );
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = connect(&gw).await;
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n",
        )
        .await
        .unwrap();
        s.write_all(&[b' '; 1024]).await.unwrap();
        stalled.push(s);
    }
    // A second piece of each body after the first was read: a joined body.
    assert!(
        eventually(Duration::from_secs(10), || unread_by_gateway(gw.port) == 0).await,
        "the gateway did not read the first pieces"
    );
    for s in &mut stalled {
        s.write_all(&[b' '; 1024]).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || unread_by_gateway(gw.port) == 0).await,
        "the gateway did not read the second pieces"
    );
    let (rss_after, size_after) = (
        proc_status_kb(pid, "VmRSS:"),
        proc_status_kb(pid, "VmSize:"),
    );
    // 50 × 100 MB declared: nothing of it may be reserved, let alone touched.
    assert!(
        rss_after.saturating_sub(rss_before) < 32 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(
        size_after.saturating_sub(size_before) < 1024 * 1024,
        "address space grew from {size_before} kB to {size_after} kB"
    );
    // Still serving.
    let (status, _, _) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "still there?"}]}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn feature_headers_reach_only_providers_that_allow_them_and_forwarded_for_is_the_gateways() {
    let mock = MockProvider::start().await.unwrap();
    let gw = GatewayProcess::start(&format!(
        "providers:\n  allows: {{ kind: openai, auth: none, endpoints: [\"{url}/v1\"], forward_headers: [anthropic-beta, OpenAI-Beta] }}\n\
         \x20 plain: {{ kind: openai, auth: none, endpoints: [\"{url}/v1\"] }}\n\
         \x20 public: {{ kind: openai, auth: none, endpoints: [\"{url}/v1\"], forward_client_address: false }}\n\
         models:\n  a: {{ provider: allows, model: m }}\n  af: {{ provider: allows, model: m, fallbacks: [a] }}\n\
         \x20 p: {{ provider: plain, model: m }}\n  q: {{ provider: public, model: m }}\n",
        url = mock.url()
    ));
    for model in ["a", "af", "p", "q"] {
        mock.clear_requests();
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header("anthropic-beta", "tools-2024")
            .header("openai-beta", "assistants=v2")
            .header("x-goog-user-project", "someone-elses")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("user-agent", "edge-test")
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{model}");
        let got = mock.last_request().expect("the upstream got the request");
        let values = |name: &str| -> Vec<String> {
            got.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let allowed = model == "a" || model == "af";
        assert_eq!(
            got.header("anthropic-beta").is_some(),
            allowed,
            "{model}: {:?}",
            got.headers
        );
        assert_eq!(got.header("openai-beta").is_some(), allowed, "{model}");
        assert_eq!(got.header("x-goog-user-project"), None, "{model}");
        // The client's address, unless its provider keeps it.
        let address: &[&str] = if model == "q" { &[] } else { &["127.0.0.1"] };
        assert_eq!(values("x-forwarded-for"), address, "{model}");
        assert_eq!(values("x-forwarded-proto"), ["http"], "{model}");
        assert_eq!(got.header("x-forwarded-host"), None, "{model}");
        assert_eq!(got.header("forwarded"), None, "{model}");
        assert_eq!(got.header("x-real-ip"), None, "{model}");
        assert_eq!(got.header("user-agent"), Some("edge-test"), "{model}");
    }
}

#[test]
fn edge_and_forward_headers_errors_name_the_key() {
    let cases = [
        ("edge: { header_timeout: 0s }\n", "edge.header_timeout"),
        ("edge: { max_connections: 0 }\n", "edge.max_connections"),
        (
            "max_request_bytes: 1000\nedge: { max_buffered_bytes: 1999 }\n",
            "edge.max_buffered_bytes",
        ),
        ("edge: { idle_timout: 1s }\n", "idle_timout"),
        (
            "providers:\n  p: { kind: openai, auth: none, endpoints: [\"http://127.0.0.1:1/v1\"], forward_headers: [authorization] }\n",
            "providers.p.forward_headers[0]",
        ),
        (
            "providers:\n  p: { kind: openai, auth: none, endpoints: [\"http://127.0.0.1:1/v1\"], forward_headers: [x-forwarded-for] }\n",
            "providers.p.forward_headers[0]",
        ),
    ];
    for (yaml, key) in cases {
        let dir = std::env::temp_dir().join(format!("dragoman-edge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
        assert!(!ok, "{yaml} was accepted");
        assert!(out.contains(key), "{yaml}: {out}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[tokio::test]
async fn a_whole_answer_past_the_global_buffer_bound_is_a_503() {
    let mock = MockProvider::start().await.unwrap();
    let gw = gateway(
        &mock,
        "max_buffered_bytes: 400000",
        "max_request_bytes: 100000\n",
    );
    // A whole answer larger than the budget: held until complete by the dispatcher (`mf` has a
    // fallback), it cannot be, on either leg.
    let huge = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "x".repeat(500_000)}}]});
    mock.set_default(Behaviour::json(200, huge));
    let (status, _, body) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "mf", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "gateway_overloaded");
    // Its bytes were given back: a small answer still fits.
    mock.set_default(Behaviour::Reply);
    let (status, _, body) = post_json(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "mf", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
