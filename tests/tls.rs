//! TLS at the client listener: a throwaway certificate generated here, HTTP/1.1 and HTTP/2 (by
//! ALPN) driven by real clients that trust only that certificate, everything the proxy does
//! checked over HTTP/2, and certificate files replaced under a running gateway.
mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files in a directory of
/// its own (removed on drop).
struct TestCert {
    dir: PathBuf,
    cert_pem: String,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!(
            "dragoman-tls-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cert = TestCert {
            dir,
            cert_pem: String::new(),
        };
        cert.replace();
        cert
    }

    /// Writes a new certificate and key over the files (the key first, then the certificate, as
    /// a rotation might; the gateway must cope with the pair being inconsistent in between).
    fn replace(&mut self) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        std::fs::write(self.key_path(), generated.signing_key.serialize_pem()).unwrap();
        self.cert_pem = generated.cert.pem();
        std::fs::write(self.cert_path(), &self.cert_pem).unwrap();
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The `listen` entry of a TLS listener on `port` with these files.
    fn listen(&self, port: u16) -> String {
        format!(
            "{{ address: \"127.0.0.1:{port}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}",
            self.cert_path().display(),
            self.key_path().display()
        )
    }

    /// A client whose only trusted root is this certificate (as it is now).
    fn client(&self, http1_only: bool) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).unwrap();
        let builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .tls_info(true)
            .timeout(Duration::from_secs(30))
            .no_proxy();
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https(gw: &GatewayProcess, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", gw.port)
}

fn start_tls(cert: &TestCert, body: &str) -> GatewayProcess {
    GatewayProcess::start_listening(|port| cert.listen(port), body, &[])
}

fn chat(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// The client sides of the established TCP connections to `port` on 127.0.0.1 (from
/// /proc/net/tcp, where addresses and ports are hex).
fn established_connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// The content of every chunk of an OpenAI stream, and whether it ended with `[DONE]`.
fn stream_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, done)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, reqwest::Version, serde_json::Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let version = resp.version();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, version, json)
}

#[tokio::test]
async fn https_serves_http1_and_http2_to_clients_that_trust_only_its_certificate() {
    let cert = TestCert::new("both");
    let mock = MockProvider::start().await.unwrap();
    let gw = start_tls(
        &cert,
        &format!(
            "providers:\n  oai: {{ kind: openai, endpoints: [\"{}/v1\"], api_key: k }}\nmodels:\n  gpt: {{ provider: oai }}\n",
            mock.url()
        ),
    );
    for (http1_only, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let (status, got, body) = post(
            &cert.client(http1_only),
            &https(&gw, "/v1/chat/completions"),
            &chat("gpt", false),
        )
        .await;
        assert_eq!((status, got), (200, version), "{body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            dragoman_mock::replies::reply_text("hi")
        );
    }

    // A client that does not trust the certificate gets no answer, and plain HTTP none either.
    let stranger = TestCert::new("stranger");
    let refused = stranger
        .client(false)
        .get(https(&gw, "/v1/models"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let plain = client().get(gw.url("/v1/models")).send().await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| r.status() != 200),
        "plain HTTP answered on the TLS listener"
    );
}

#[tokio::test]
async fn http2_carries_many_streams_on_one_connection() {
    const STREAMS: usize = 4;
    let cert = TestCert::new("streams");
    let mock = MockProvider::start().await.unwrap();
    let gw = start_tls(
        &cert,
        &format!(
            "providers:\n  ant: {{ kind: anthropic, endpoints: [\"{}\"], api_key: k }}\nmodels:\n  claude: {{ provider: ant }}\n",
            mock.url()
        ),
    );
    let client = cert.client(false);
    // The connection is up (and known to be HTTP/2) before the streams start.
    let models = client.get(https(&gw, "/v1/models")).send().await.unwrap();
    assert_eq!(models.version(), reqwest::Version::HTTP_2);
    assert_eq!(established_connections_to(gw.port), 1);

    for _ in 0..STREAMS {
        // Each stream sends its first events, then waits for the release.
        mock.push(Behaviour::Sse {
            events: anthropic_events(),
            interval: Duration::ZERO,
            hold_after: Some(3),
        });
    }
    let mut open = Vec::new();
    for _ in 0..STREAMS {
        let resp = client
            .post(https(&gw, "/v1/chat/completions"))
            .json(&chat("claude", true))
            .send();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("stream head")
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let mut body = resp.bytes_stream();
        // The first translated chunk arrives while the upstream holds the rest: every stream is
        // open at once.
        let first = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("first chunk")
            .unwrap()
            .unwrap();
        let mut text = String::from_utf8(first.to_vec()).unwrap();
        assert!(text.starts_with("data: "), "{text}");
        open.push(tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            text
        }));
    }
    assert_eq!(mock.request_count(), STREAMS);
    assert_eq!(
        established_connections_to(gw.port),
        1,
        "the streams did not share one connection"
    );
    mock.release();
    for stream in open {
        let body = tokio::time::timeout(Duration::from_secs(20), stream)
            .await
            .expect("stream never ended")
            .unwrap();
        assert_eq!(
            stream_text(&body),
            ("first second".to_string(), true),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_proxy_works_over_http2() {
    proxy_works_over(false).await;
}

/// The same over HTTP/1.1 with TLS, where translated answers are corked on the client's socket
/// and a client's leaving is watched on it.
#[tokio::test]
async fn the_proxy_works_over_http1_with_tls() {
    proxy_works_over(true).await;
}

async fn proxy_works_over(http1: bool) {
    let expected = if http1 {
        reqwest::Version::HTTP_11
    } else {
        reqwest::Version::HTTP_2
    };
    let cert = TestCert::new(if http1 { "proxy-h1" } else { "proxy-h2" });
    let mock = MockProvider::start().await.unwrap();
    let down = MockProvider::start().await.unwrap();
    down.set_default(Behaviour::json(
        500,
        json!({"error": {"message": "overloaded", "type": "server_error"}}),
    ));
    let url = mock.url();
    let gw = start_tls(
        &cert,
        &format!(
            r#"max_request_bytes: 200000
providers:
  oai: {{ kind: openai, endpoints: ["{url}/v1"], api_key: k }}
  ant: {{ kind: anthropic, endpoints: ["{url}"], api_key: k }}
  pair: {{ kind: openai, endpoints: ["{down}/v1", "{url}/v1"], api_key: k, balance: round_robin, retry_backoff: 1ms }}
  broken: {{ kind: openai, endpoints: ["{down}/v1"], api_key: k, max_attempts: 1 }}
models:
  gpt: {{ provider: oai }}
  claude: {{ provider: ant }}
  retried: {{ provider: pair }}
  falls-back: {{ provider: broken, fallbacks: [claude] }}
  broken: {{ provider: broken }}
"#,
            down = down.url()
        ),
    );
    let client = cert.client(http1);
    let chat_url = https(&gw, "/v1/chat/completions");
    let reply = dragoman_mock::replies::reply_text("hi");

    // Passed through, translated whole, retried on the other instance (the body replayed from
    // the retry buffer), and carried by the dispatcher's subrequests to a fallback.
    // "retried" twice: round robin sends one of them to the broken instance first.
    for model in ["gpt", "claude", "retried", "retried", "falls-back"] {
        let broken_before = down.request_count();
        let (status, version, body) = post(&client, &chat_url, &chat(model, false)).await;
        assert_eq!((status, version), (200, expected), "{model}: {body}");
        assert_eq!(
            body["choices"][0]["message"]["content"], reply,
            "{model}: {body}"
        );
        if model == "falls-back" {
            assert_eq!(down.request_count(), broken_before + 1);
        }
    }
    // One for the fallback, at least one that "retried" went past.
    assert!(
        down.request_count() >= 2,
        "round robin never retried past the broken instance"
    );

    // A body past the 64 KiB retry buffer goes through the dispatcher, whole.
    let long = "x".repeat(100_000);
    mock.clear_requests();
    let (status, _, body) = post(
        &client,
        &chat_url,
        &json!({"model": "gpt", "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = mock.last_request().unwrap().json();
    assert_eq!(
        sent["messages"][0]["content"].as_str().map(str::len),
        Some(100_000)
    );

    // Streams: passed through and translated, on both front doors.
    for model in ["gpt", "claude", "falls-back"] {
        let resp = client
            .post(&chat_url)
            .json(&chat(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let text = tokio::time::timeout(Duration::from_secs(20), resp.text())
            .await
            .unwrap()
            .unwrap();
        let (content, done) = stream_text(&text);
        assert!(done, "{model}: {text}");
        assert_eq!(content, reply, "{model}: {text}");
    }
    let resp = client
        .post(https(&gw, "/v1/messages"))
        .json(&json!({"model": "gpt", "max_tokens": 10, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");

    // An upstream cut mid-stream: the stream ends with an error event, never `[DONE]`.
    mock.push(Behaviour::SseThenDrop {
        events: anthropic_events()[..3].to_vec(),
    });
    let resp = client
        .post(&chat_url)
        .json(&chat("claude", true))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, expected));
    let text = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .unwrap()
        .unwrap_or_default();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("data: {\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // The gateway's own answers and upstream errors, in the client's protocol. (Over HTTP/1.1
    // the 413 comes before the client has written its 300 KB and the connection closes under
    // it, TLS or not; an HTTP/2 stream is reset alone.)
    let too_large =
        json!({"model": "gpt", "messages": [{"role": "user", "content": "y".repeat(300_000)}]});
    // The gateway closes a connection whose upstream broke off mid-answer (Pingora does not reuse
    // it), and a client that reuses it races that close: the next requests go on a new one.
    let client = cert.client(http1);
    let mut own_answers = vec![(chat("ghost", false), 404, "model_not_found")];
    if !http1 {
        own_answers.push((too_large, 413, "request_too_large"));
    }
    for (body, status, code) in own_answers {
        let (got, version, answer) = post(&client, &chat_url, &body).await;
        assert_eq!((got, version), (status, expected), "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let (status, _, answer) = post(&client, &chat_url, &chat("broken", false)).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["message"], "overloaded", "{answer}");
    let (status, _, answer) = post(
        &client,
        &https(&gw, "/v1/messages"),
        &json!({"model": "ghost", "max_tokens": 1, "messages": []}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(answer["type"], "error", "{answer}");
}

/// An HTTP/2 client that resets its stream, or an HTTP/1.1 client that closes its TLS connection,
/// cancels the upstream call, mid-stream or before the first byte, whether the client's session
/// or the dispatcher carries the call.
#[tokio::test]
async fn a_client_leaving_over_tls_cancels_the_upstream_call() {
    let cert = TestCert::new("reset");
    for (model, http1) in [
        ("direct", false),
        ("dispatched", false),
        ("direct", true),
        ("dispatched", true),
    ] {
        for held in [true, false] {
            let mock = MockProvider::start().await.unwrap();
            let gw = start_tls(
                &cert,
                &format!(
                    "providers:\n  ant: {{ kind: anthropic, endpoints: [\"{}\"], api_key: k }}\nmodels:\n  direct: {{ provider: ant }}\n  dispatched: {{ provider: ant, fallbacks: [direct] }}\n",
                    mock.url()
                ),
            );
            let client = cert.client(http1);
            let request = client
                .post(https(&gw, "/v1/chat/completions"))
                .json(&chat(model, held));
            leave_mid_request(&mock, request, held).await;
            assert!(
                mock.wait_connection_closed(Duration::from_secs(5)).await,
                "{model}, held={held}, http1={http1}: the upstream call went on after the client left"
            );
            // The connection itself stays usable for the client's other streams.
            let again = client.get(https(&gw, "/v1/models")).send().await.unwrap();
            assert_eq!(again.status(), 200);
            mock.release();
        }
    }
}

#[tokio::test]
async fn a_replaced_certificate_serves_new_connections_while_open_ones_keep_working() {
    let mut cert = TestCert::new("reload");
    let mock = MockProvider::start().await.unwrap();
    let gw = start_tls(
        &cert,
        &format!(
            "providers:\n  ant: {{ kind: anthropic, endpoints: [\"{}\"], api_key: k }}\nmodels:\n  claude: {{ provider: ant }}\n",
            mock.url()
        ),
    );
    let served_cert = |resp: &reqwest::Response| {
        resp.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec)
            .expect("TLS info")
    };
    let old_client = cert.client(false);
    let first = old_client
        .get(https(&gw, "/v1/models"))
        .send()
        .await
        .unwrap();
    let old_der = served_cert(&first);
    // A stream open across the swap.
    mock.push(Behaviour::Sse {
        events: anthropic_events(),
        interval: Duration::ZERO,
        hold_after: Some(3),
    });
    let resp = old_client
        .post(https(&gw, "/v1/chat/completions"))
        .json(&chat("claude", true))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let first_chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    text.push_str(&String::from_utf8_lossy(&first_chunk));

    cert.replace();
    let new_client = cert.client(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_der = loop {
        // Until the gateway has read the new files, the new client refuses the old certificate.
        if let Ok(resp) = new_client.get(https(&gw, "/v1/models")).send().await {
            assert_eq!(resp.status(), 200);
            break served_cert(&resp);
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served: {}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new_der, old_der);

    // The connection opened before the swap still works, with the certificate it negotiated,
    // and the stream open across it finishes.
    let again = old_client
        .get(https(&gw, "/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(served_cert(&again), old_der);
    mock.release();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(
        stream_text(&text),
        ("first second".to_string(), true),
        "{text}"
    );
}

#[tokio::test]
async fn the_official_openai_sdk_talks_https_trusting_only_the_certificate() {
    let cert = TestCert::new("sdk");
    let mock = MockProvider::start().await.unwrap();
    let gw = start_tls(
        &cert,
        &format!(
            "providers:\n  ant: {{ kind: anthropic, endpoints: [\"{}\"], api_key: k }}\nmodels:\n  claude: {{ provider: ant }}\n",
            mock.url()
        ),
    );
    let python = std::env::var("DRAGOMAN_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import os, ssl, sys
import openai
context = ssl.create_default_context(cafile=os.environ["CA_FILE"])
client = openai.OpenAI(base_url=os.environ["DRAGOMAN_URL"] + "/v1", api_key="client-key",
                       max_retries=0, timeout=20,
                       http_client=openai.DefaultHttpxClient(verify=context))
answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
print("whole:", answer.choices[0].message.content)
stream = client.chat.completions.create(model="claude", stream=True,
                                        messages=[{"role": "user", "content": "hi"}])
print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))
# Without the certificate, the SDK refuses the connection.
try:
    openai.OpenAI(base_url=os.environ["DRAGOMAN_URL"] + "/v1", api_key="k", max_retries=0,
                  timeout=20, http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=os.environ["OTHER_CA"]))
                  ).models.list()
    print("untrusted: answered")
except openai.APIConnectionError:
    print("untrusted: refused")
"#;
    let other = TestCert::new("sdk-other");
    let out = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env("DRAGOMAN_URL", https(&gw, ""))
        .env("CA_FILE", cert.cert_path())
        .env("OTHER_CA", other.cert_path())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.stderr()
    );
    let reply = dragoman_mock::replies::reply_text("hi");
    assert!(stdout.contains(&format!("whole: {reply}")), "{stdout}");
    assert!(stdout.contains(&format!("stream: {reply}")), "{stdout}");
    assert!(stdout.contains("untrusted: refused"), "{stdout}");
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("dragoman.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_missing_or_wrong_certificate_fails_the_check_and_the_start_naming_the_key() {
    let cert = TestCert::new("cli");
    let other = TestCert::new("cli-other");
    let missing = cert.dir.join("missing.pem");
    let port = free_port();
    let listen = |c: &Path, k: &Path| {
        format!(
            "listen: [\"127.0.0.1:{}\", {{ address: \"127.0.0.1:{port}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}]\nadmin_listen: null\n",
            free_port(),
            c.display(),
            k.display()
        )
    };
    for (name, text, key) in [
        (
            "cert",
            listen(&missing, &cert.key_path()),
            "listen[1].tls.cert",
        ),
        (
            "key",
            listen(&cert.cert_path(), &missing),
            "listen[1].tls.key",
        ),
        (
            "swapped",
            listen(&cert.key_path(), &cert.cert_path()),
            "listen[1].tls.cert",
        ),
        (
            "mismatch",
            listen(&cert.cert_path(), &other.key_path()),
            "listen[1].tls:",
        ),
    ] {
        let path = write_config(&cert.dir, &text);
        for args in [&["-t", "-c"][..], &["-c"][..]] {
            let mut args = args.to_vec();
            args.push(path.to_str().unwrap());
            let (ok, out) = run_dragoman_within(&args, &[], Duration::from_secs(20));
            assert_eq!(ok, Some(false), "{name} {args:?} should fail: {out}");
            assert!(out.contains(key), "{name}: expected `{key}` in: {out}");
            assert!(!out.contains("panicked"), "{name}: {out}");
        }
    }
    let path = write_config(&cert.dir, &listen(&cert.cert_path(), &cert.key_path()));
    let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
}
