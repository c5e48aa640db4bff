//! What the mock does with a request, and how each behaviour is written on the wire.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use super::body::MockBody;
use super::server::Shared;
use super::{replies, RecordedRequest};

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// The protocol-correct success for the path (see [`super::replies`]), after the auth check.
    Reply,
    /// That status and body, `content-type: application/json`.
    Json {
        status: u16,
        body: serde_json::Value,
    },
    /// That status, content type, body and extra headers.
    Raw {
        status: u16,
        content_type: String,
        body: Bytes,
        headers: Vec<(String, String)>,
    },
    /// Waits (async sleep), then behaves as `then`.
    Delay {
        delay: Duration,
        then: Box<Behaviour>,
    },
    /// Reads the request, then closes the connection without any response.
    Drop,
    /// Status 200 `text/event-stream`; writes each event verbatim (the caller supplies the
    /// `data: ...\n\n` framing), flushing each, waiting `interval` between events. With
    /// `hold_after = Some(n)`, after `n` events waits for [`super::MockProvider::release`] before
    /// sending the rest (with `n >= events.len()`, before ending the stream).
    Sse {
        events: Vec<String>,
        interval: Duration,
        hold_after: Option<usize>,
    },
    /// Sends the events, then cuts the connection without ending the chunked body.
    SseThenDrop { events: Vec<String> },
}

impl Behaviour {
    /// `Json` shorthand.
    pub fn json(status: u16, body: serde_json::Value) -> Behaviour {
        Behaviour::Json { status, body }
    }

    /// `Raw` shorthand without extra headers.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Behaviour {
        Behaviour::Raw {
            status,
            content_type: content_type.to_owned(),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// `Delay` shorthand.
    pub fn delay(delay: Duration, then: Behaviour) -> Behaviour {
        Behaviour::Delay {
            delay,
            then: Box::new(then),
        }
    }

    /// `Sse` shorthand: the events at once, no hold.
    pub fn sse<S: Into<String>>(events: impl IntoIterator<Item = S>) -> Behaviour {
        Behaviour::Sse {
            events: events.into_iter().map(Into::into).collect(),
            interval: Duration::ZERO,
            hold_after: None,
        }
    }
}

/// Builds the response for `b`. `Err` closes the connection without a response.
pub(crate) async fn render(
    mut b: Behaviour,
    shared: &Arc<Shared>,
    req: &RecordedRequest,
    release_gen: u64,
) -> io::Result<Response<MockBody>> {
    loop {
        b = match b {
            Behaviour::Reply => replies::reply(req, &shared.keys),
            Behaviour::Delay { delay, then } => {
                tokio::time::sleep(delay).await;
                *then
            }
            Behaviour::Json { status, body } => {
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                return Ok(full(status, "application/json", bytes.into(), &[]));
            }
            Behaviour::Raw {
                status,
                content_type,
                body,
                headers,
            } => return Ok(full(status, &content_type, body, &headers)),
            Behaviour::Drop => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "mock: drop behaviour",
                ))
            }
            Behaviour::Sse {
                events,
                interval,
                hold_after,
            } => {
                let stream = Stream {
                    events,
                    interval,
                    hold_after,
                    then_cut: false,
                };
                return Ok(sse(stream, shared, release_gen));
            }
            Behaviour::SseThenDrop { events } => {
                let stream = Stream {
                    events,
                    interval: Duration::ZERO,
                    hold_after: None,
                    then_cut: true,
                };
                return Ok(sse(stream, shared, release_gen));
            }
        };
    }
}

/// A whole response. Invalid statuses or headers never panic: they become a 500 that says so.
pub(crate) fn full(
    status: u16,
    content_type: &str,
    body: Bytes,
    headers: &[(String, String)],
) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body));
    let Ok(status) = StatusCode::from_u16(status) else {
        return plain_500(&format!("mock: invalid status {status}"));
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    match HeaderValue::from_str(content_type) {
        Ok(v) => {
            h.insert(CONTENT_TYPE, v);
        }
        Err(_) => return plain_500("mock: invalid content type"),
    }
    for (k, v) in headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => {
                h.append(k, v);
            }
            _ => return plain_500(&format!("mock: invalid header {k}")),
        }
    }
    resp
}

fn plain_500(msg: &str) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(msg.to_owned()));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

struct Stream {
    events: Vec<String>,
    interval: Duration,
    hold_after: Option<usize>,
    then_cut: bool,
}

fn sse(stream: Stream, shared: &Arc<Shared>, release_gen: u64) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(produce(stream, shared.clone(), release_gen, tx));
    let mut resp = Response::new(MockBody::channel(rx, shared.clone()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Feeds a streamed body. Stops as soon as the body is gone (the peer closed the connection).
async fn produce(
    s: Stream,
    shared: Arc<Shared>,
    release_gen: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let n = s.events.len();
    let hold_at = s.hold_after.map(|h| h.min(n));
    for (i, ev) in s.events.into_iter().enumerate() {
        if hold_at == Some(i) && !hold(&shared, release_gen, &tx).await {
            return;
        }
        if i > 0 && !s.interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(s.interval) => {}
                _ = tx.closed() => return,
            }
        }
        if tx.send(Ok(Bytes::from(ev))).await.is_err() {
            return;
        }
    }
    if hold_at == Some(n) && !hold(&shared, release_gen, &tx).await {
        return;
    }
    if s.then_cut {
        let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "mock: cut stream");
        let _ = tx.send(Err(cut)).await;
    }
}

/// Waits for a release newer than `release_gen` (or shutdown). False if the body went away.
async fn hold(shared: &Shared, release_gen: u64, tx: &mpsc::Sender<io::Result<Bytes>>) -> bool {
    let mut release = shared.release_tx.subscribe();
    let mut shutdown = shared.shutdown_rx.clone();
    tokio::select! {
        _ = release.wait_for(|g| *g > release_gen) => true,
        _ = shutdown.wait_for(|s| *s) => true,
        _ = tx.closed() => false,
    }
}
