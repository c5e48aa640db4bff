//! dragoman-mock: a mock LLM provider: a small HTTP/1.1 server that speaks each provider kind's protocol.
//!
//! Integration tests start it in-process ([`MockProvider::start`]); benchmarks and the README demo
//! run the `dragoman-mock` binary, which is controlled over HTTP (`/_mock/...`, see [`control`]).
//!
//! Every request (except control requests) is recorded, then answered by the next one-shot
//! [`Behaviour`] pushed with [`MockProvider::push`], or by the default behaviour when none is queued
//! (initially [`Behaviour::Reply`]: a protocol-correct, deterministic success for the path; see
//! [`replies`]).
//!
//! The file layout is one concept per file: [`behaviour`] (what to answer and how to write it),
//! [`replies`] (the protocol-correct answers and the auth check), [`body`] (the response body type
//! and the detection of clients that went away), [`control`] (the HTTP control API), [`server`]
//! (listener, connections, shared state).

pub mod behaviour;
pub mod body;
pub mod control;
pub mod replies;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use behaviour::Behaviour;

/// The provider protocols the mock speaks (the gateway's provider kinds, as the mock tells them
/// apart by path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Openai,
    AzureOpenai,
    Anthropic,
    Gemini,
}

use server::Shared;

/// How to start a [`MockProvider`].
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Where to listen; must be a loopback address. `None` = `127.0.0.1:0` (any free port).
    pub addr: Option<SocketAddr>,
    /// The credential expected from every provider kind (`None` = no auth check), unless
    /// `kind_keys` names one for the kind.
    pub key: Option<String>,
    /// Per-kind credentials, overriding `key` for that kind.
    pub kind_keys: Vec<(ProviderKind, String)>,
    /// Whether to keep every request for [`MockProvider::requests`] (default true; benchmarks turn it
    /// off). Requests are counted either way.
    pub record: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            addr: None,
            key: None,
            kind_keys: Vec::new(),
            record: true,
        }
    }
}

impl MockOptions {
    /// The credential expected from `kind`, if any.
    pub fn key_for(&self, kind: ProviderKind) -> Option<&str> {
        self.kind_keys
            .iter()
            .rev()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_str())
            .or(self.key.as_deref())
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The path with its query string, as sent (`/v1beta/models/m:generateContent?key=K`).
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }

    /// The (percent-decoded) value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        replies::query_param(&self.path, name)
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running mock provider. Dropping it stops the server: the listener is closed, idle keep-alive
/// connections are closed, in-flight responses may finish (held streams are released).
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl MockProvider {
    /// Starts on `127.0.0.1:0` without auth checks.
    pub async fn start() -> std::io::Result<MockProvider> {
        Self::start_with(MockOptions::default()).await
    }

    /// Starts with `opts`. Fails when the address is not loopback or cannot be bound.
    pub async fn start_with(opts: MockOptions) -> std::io::Result<MockProvider> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (addr, shared, accept_task) = server::spawn(&opts, shutdown_rx).await?;
        Ok(MockProvider {
            addr,
            shared,
            shutdown,
            accept_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// All requests received (while recording was on), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        server::lock(&self.shared.requests).clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        server::lock(&self.shared.requests).last().cloned()
    }

    /// Forgets the recorded requests (the request count is kept).
    pub fn clear_requests(&self) {
        server::lock(&self.shared.requests).clear();
    }

    /// How many requests were received (control requests excluded), recorded or not.
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::Relaxed)
    }

    /// The most requests the mock was answering at once (from a request's arrival until its
    /// answer's head was sent: a [`Behaviour::Delay`] counts whole).
    pub fn most_concurrent(&self) -> usize {
        self.shared.most_answering.load(Ordering::Acquire)
    }

    /// Turns recording on or off.
    pub fn set_record(&self, record: bool) {
        self.shared.record.store(record, Ordering::Relaxed);
    }

    /// Queues a one-shot behaviour; queued behaviours answer the next requests in order.
    pub fn push(&self, b: Behaviour) {
        self.shared.push(b);
    }

    /// The behaviour used when the queue is empty (initially [`Behaviour::Reply`]).
    pub fn set_default(&self, b: Behaviour) {
        self.shared.default.store(Arc::new(b));
    }

    /// Empties the queue of one-shot behaviours.
    pub fn clear_queue(&self) {
        self.shared.clear_queue();
    }

    /// Lets held streams ([`Behaviour::Sse`] with `hold_after`) continue. A release counts for every
    /// request that arrived before it, including streams that reach their hold point later.
    pub fn release(&self) {
        self.shared.release();
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// How many requests lost their connection (the peer went away) before the mock finished
    /// answering: during a delay, while streaming, or while held.
    pub fn connections_closed_early(&self) -> usize {
        self.shared.closed_early.load(Ordering::Relaxed)
    }

    /// Waits until some request's connection has been closed by the peer before the mock finished
    /// answering (see [`MockProvider::connections_closed_early`]). True if that happened (possibly
    /// before this call), false on timeout.
    pub async fn wait_connection_closed(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.closed_early_tx.subscribe();
        let closed = tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok());
        closed
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        // The accept task owns the listener: aborting it closes the listening socket.
        self.accept_task.abort();
    }
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
