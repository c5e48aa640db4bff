//! The listener, the connections and the state they share.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::behaviour::{self, Behaviour};
use super::body::MockBody;
use super::{control, MockOptions, RecordedRequest};
use crate::ProviderKind;

/// Locks a mutex, ignoring poisoning (nothing here can leave the data half-updated).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The credentials expected per provider kind.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub openai: Option<String>,
    pub azure_openai: Option<String>,
    pub anthropic: Option<String>,
    pub gemini: Option<String>,
}

impl Keys {
    pub fn from_options(opts: &MockOptions) -> Keys {
        let k = |kind| opts.key_for(kind).map(str::to_owned);
        Keys {
            openai: k(ProviderKind::Openai),
            azure_openai: k(ProviderKind::AzureOpenai),
            anthropic: k(ProviderKind::Anthropic),
            gemini: k(ProviderKind::Gemini),
        }
    }

    pub fn get(&self, kind: ProviderKind) -> Option<&str> {
        match kind {
            ProviderKind::Openai => self.openai.as_deref(),
            ProviderKind::AzureOpenai => self.azure_openai.as_deref(),
            ProviderKind::Anthropic => self.anthropic.as_deref(),
            ProviderKind::Gemini => self.gemini.as_deref(),
        }
    }
}

/// State shared by the handle ([`super::MockProvider`]) and the connections.
pub(crate) struct Shared {
    pub keys: Keys,
    pub record: AtomicBool,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub request_count: AtomicUsize,
    /// Requests being answered now (from arrival until the answer's head is sent), and the most
    /// seen at once.
    pub answering: AtomicUsize,
    pub most_answering: AtomicUsize,
    queue: Mutex<VecDeque<Behaviour>>,
    /// Length of `queue`, so the common case (empty queue) takes no lock.
    queued: AtomicUsize,
    pub default: ArcSwap<Behaviour>,
    pub connections: AtomicUsize,
    pub closed_early: AtomicUsize,
    /// Mirrors `closed_early`, for waiting.
    pub closed_early_tx: watch::Sender<usize>,
    /// Release generation: bumped by each `release()`.
    pub release_tx: watch::Sender<u64>,
    /// Set when the provider is dropped.
    pub shutdown_rx: watch::Receiver<bool>,
}

impl Shared {
    pub fn push(&self, b: Behaviour) {
        let mut q = lock(&self.queue);
        q.push_back(b);
        self.queued.store(q.len(), Ordering::Release);
    }

    pub fn clear_queue(&self) {
        let mut q = lock(&self.queue);
        q.clear();
        self.queued.store(0, Ordering::Release);
    }

    /// The next queued behaviour, else the default.
    pub fn next_behaviour(&self) -> Behaviour {
        if self.queued.load(Ordering::Acquire) > 0 {
            let mut q = lock(&self.queue);
            if let Some(b) = q.pop_front() {
                self.queued.store(q.len(), Ordering::Release);
                return b;
            }
        }
        Behaviour::clone(&self.default.load())
    }

    pub fn release(&self) {
        self.release_tx.send_modify(|g| *g += 1);
    }

    pub fn mark_closed_early(&self) {
        let n = self.closed_early.fetch_add(1, Ordering::Relaxed) + 1;
        self.closed_early_tx.send_replace(n);
    }

    fn record(&self, req: &RecordedRequest) {
        self.request_count.fetch_add(1, Ordering::Relaxed);
        if self.record.load(Ordering::Relaxed) {
            lock(&self.requests).push(req.clone());
        }
    }
}

/// Binds, then spawns the accept loop. Returns the bound address, the shared state and the task
/// (which owns the listener).
pub(crate) async fn spawn(
    opts: &MockOptions,
    shutdown_rx: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, Arc<Shared>, JoinHandle<()>)> {
    let addr = opts
        .addr
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the mock provider only listens on loopback addresses, not {addr}"),
        ));
    }
    // A deep accept queue: a gateway under test may open thousands of upstream connections at
    // once (tokio's default backlog of 1024 made the kernel refuse some).
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(65_535)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        keys: Keys::from_options(opts),
        record: AtomicBool::new(opts.record),
        requests: Mutex::new(Vec::new()),
        request_count: AtomicUsize::new(0),
        answering: AtomicUsize::new(0),
        most_answering: AtomicUsize::new(0),
        queue: Mutex::new(VecDeque::new()),
        queued: AtomicUsize::new(0),
        default: ArcSwap::from_pointee(Behaviour::Reply),
        connections: AtomicUsize::new(0),
        closed_early: AtomicUsize::new(0),
        closed_early_tx: watch::Sender::new(0),
        release_tx: watch::Sender::new(0),
        shutdown_rx,
    });
    let task = tokio::spawn(accept_loop(listener, shared.clone()));
    Ok((addr, shared, task))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown_rx.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: back off briefly rather than spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, shared.clone()));
    }
}

async fn serve(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown_rx.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| handle(svc_shared.clone(), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .half_close(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|s| *s) => {}
    }
    // Shutting down: close when idle, let an in-flight response finish.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Marks the request as closed early when the handler is dropped before it finishes (hyper drops it
/// when the peer closes the connection mid-request).
struct InFlight {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.shared.mark_closed_early();
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> io::Result<Response<MockBody>> {
    let mut in_flight = InFlight {
        shared: shared.clone(),
        done: false,
    };
    let release_gen = *shared.release_tx.borrow();
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());

    if path == "/_mock" || path.starts_with("/_mock/") {
        in_flight.done = true;
        let resp = control::handle(&shared, parts.method.as_str(), &path, &body);
        return Ok(resp);
    }

    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let rec = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path,
        headers,
        body,
    };
    shared.record(&rec);
    let _answering = Answering::start(&shared);
    let b = shared.next_behaviour();
    let resp = behaviour::render(b, &shared, &rec, release_gen).await;
    in_flight.done = true;
    resp
}

/// Counts a request as being answered while it lives.
struct Answering<'a>(&'a Shared);

impl<'a> Answering<'a> {
    fn start(shared: &'a Shared) -> Self {
        let now = shared.answering.fetch_add(1, Ordering::AcqRel) + 1;
        shared.most_answering.fetch_max(now, Ordering::AcqRel);
        Answering(shared)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::AcqRel);
    }
}
