//! The client connection before Pingora reads a request: the connection limit, the deadline for a
//! request's whole header block, and the idle timeout of kept-alive connections.
//!
//! Pingora reads an HTTP/1 request header before any `ProxyHttp` hook runs, with only a timeout
//! per read: a client that trickles one byte before each read timeout holds the connection for
//! as long as it likes, and after the first HTTP/1.1 request a kept-alive connection waits for
//! the next one forever. So this app wraps Pingora's: it reads each request's header block
//! itself, within `edge.header_timeout` (from the connection's start for its first request, from
//! the first byte for later ones) and waits at most `edge.idle_timeout` for a next request's
//! first byte. The bytes read are handed to Pingora's session as its first bytes
//! (`set_pipelined_prefix`), which Pingora parses without reading again: the header is read once
//! and parsed once, and the buffer is the one Pingora would have allocated itself.
//!
//! HTTP/2 connections (TLS with ALPN `h2`, or h2c when enabled) go to Pingora's app as they are:
//! the limit on connections holds for them too, and `h2_idle_timeout` bounds their idle time.
//!
//! While the process drains (see [`crate::drain`]), a kept-alive connection waiting for its next
//! request is not closed under a client that may be sending it: the request is read and answered
//! (Pingora marks the answer `Connection: close`), and only the idle timeout or the end of the
//! grace period closes a connection that stays idle.

use crate::api::{self, ClientProtocol};
use crate::config::EdgeSettings;
use crate::drain::DRAIN;
use crate::error::{ErrorCode, GatewayError};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Pingora's first header buffer (`INIT_HEADER_BUF_SIZE`); Pingora parses in this one instead.
const HEAD_BUFFER: usize = 4096;
/// Past Pingora's own header limit (`MAX_HEADER_SIZE`, 1 MiB): Pingora then refuses it with 400.
const MAX_HEAD: usize = 1024 * 1024;
/// How long a connection over `max_connections` may take to send its header, to be told 503.
const REFUSAL_HEADER_WAIT: Duration = Duration::from_secs(1);

/// Pingora's HTTP app, behind the connection-level deadlines and limits.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    limits: EdgeSettings,
    connections: Arc<AtomicUsize>,
}

impl<A> EdgeApp<A> {
    pub fn new(inner: A, limits: EdgeSettings) -> Self {
        EdgeApp {
            inner: Arc::new(inner),
            limits,
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The count of client connections open, for the drain to know when none is left.
    pub fn open_connections(&self) -> Arc<AtomicUsize> {
        self.connections.clone()
    }
}

/// One of the `max_connections` places, given back on drop.
struct ConnectionSlot<'a>(&'a AtomicUsize);

impl<'a> ConnectionSlot<'a> {
    fn take(open: &'a AtomicUsize, max: usize) -> Option<Self> {
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(open))
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 && DRAIN.is_draining() {
            DRAIN.last_connection_closed();
        }
    }
}

#[async_trait]
impl<A> ServerApp for EdgeApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = ConnectionSlot::take(&self.connections, self.limits.max_connections)
        else {
            refuse(stream, &self.limits).await;
            return None;
        };
        let options = self.inner.server_options();
        let plain = stream.get_ssl_digest().is_none();
        let http2_or_custom = matches!(
            stream.selected_alpn_proto(),
            Some(ALPN::H2) | Some(ALPN::Custom(_))
        ) || options.is_some_and(|o| (o.h2c && plain) || o.force_custom);
        if http2_or_custom {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let mut persisted: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let head = match read_head(&mut stream, &self.limits, first).await {
                Head::Ready(head) => head,
                Head::Gone => return None,
                Head::Late(head) => {
                    let e = GatewayError::new(
                        408,
                        format!(
                            "The request header did not arrive within {:?}",
                            self.limits.header_timeout
                        ),
                    )
                    .with_code(ErrorCode::RequestTimeout);
                    answer_and_close(stream, &head, &e, &self.limits).await;
                    return None;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match persisted.take() {
                Some(settings) => {
                    settings.apply_to_session(&mut session);
                    // Pingora reads on only if the header handed over is not whole to its parser
                    // (which `HeadScan` rules out): even then, never without a timeout.
                    if session.get_keepalive() == Some(0) {
                        session.set_keepalive(Some(self.limits.idle_timeout.as_secs().max(1)));
                    }
                }
                None => {
                    // As Pingora's own loop does for a connection's first request.
                    session.set_keepalive(if *shutdown.borrow() {
                        None
                    } else {
                        Some(self.limits.idle_timeout.as_secs().max(1))
                    });
                    session.set_keepalive_reuses_remaining(
                        options.and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            session.set_pipelined_prefix(head);
            let reused = self.inner.process_new_http(session, shutdown).await?;
            (stream, persisted) = reused.consume();
            first = false;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// What came of waiting for a request's header.
enum Head {
    /// The whole header block (and whatever followed it in the same reads).
    Ready(BytesMut),
    /// Closed, failed, idle past `idle_timeout`, or idle when a drain's grace period ended:
    /// close quietly.
    Gone,
    /// Some bytes, but not the whole header by its deadline.
    Late(BytesMut),
}

/// Reads one request's header block within its deadlines. `first`: the connection's first
/// request, whose deadline counts from the connection's start; later ones wait up to
/// `idle_timeout` for their first byte and count their deadline from it.
///
/// A drain does not end the wait: a client may be sending on a kept-alive connection as the
/// process stops accepting, and closing it then would reset that request. Its answer closes the
/// connection instead; only the end of the grace period closes one still idle.
async fn read_head(stream: &mut Stream, limits: &EdgeSettings, first: bool) -> Head {
    let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
    let started = Instant::now();
    let first_wait = if first {
        limits.header_timeout
    } else {
        limits.idle_timeout
    };
    let first_read = tokio::select! {
        read = tokio::time::timeout(first_wait, stream.read_buf(&mut buf)) => read,
        () = DRAIN.grace_over() => return Head::Gone,
    };
    if !matches!(first_read, Ok(Ok(n)) if n > 0) {
        return Head::Gone;
    }
    let deadline = if first { started } else { Instant::now() } + limits.header_timeout;
    let mut scan = HeadScan::default();
    loop {
        if scan.complete(&buf) || buf.len() > MAX_HEAD {
            return Head::Ready(buf);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Head::Gone,
            Err(_) => return Head::Late(buf),
        }
    }
}

/// Where a scan for the end of a header block has got to, so that a header trickled byte by
/// byte is scanned once in all.
#[derive(Default)]
struct HeadScan {
    at: usize,
    /// Past the empty lines a request may start with (which Pingora's parser skips).
    started: bool,
}

impl HeadScan {
    /// Whether `buf` holds a whole header block: a line feed followed by an empty line (`\n\n`
    /// or `\n\r\n`, as Pingora's parser accepts both).
    fn complete(&mut self, buf: &[u8]) -> bool {
        let mut at = self.at.min(buf.len());
        if !self.started {
            match buf[at..].iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(offset) => {
                    at += offset;
                    self.started = true;
                }
                None => {
                    self.at = buf.len();
                    return false;
                }
            }
        }
        while let Some(offset) = memchr::memchr(b'\n', &buf[at..]) {
            let lf = at + offset;
            match (buf.get(lf + 1), buf.get(lf + 2)) {
                (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => return true,
                (None, _) | (Some(b'\r'), None) => {
                    self.at = lf;
                    return false;
                }
                _ => at = lf + 1,
            }
        }
        self.at = buf.len();
        false
    }
}

/// The protocol the client speaks, from its request line when it came.
fn protocol_of(head: &[u8]) -> ClientProtocol {
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let line = head[start..]
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return ClientProtocol::OpenAi;
    };
    let (Ok(method), Ok(path)) = (http::Method::from_bytes(method), std::str::from_utf8(path))
    else {
        return ClientProtocol::OpenAi;
    };
    api::endpoint_for(&method, path).map_or_else(|_| api::protocol_of_path(path), |e| e.protocol())
}

/// Past `max_connections`: tells an HTTP/1 client 503 in its protocol (once its header is in, or
/// after a short wait) and closes; an HTTP/2 connection is closed at once.
async fn refuse(mut stream: Stream, limits: &EdgeSettings) {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        // No HTTP/1 answer on an HTTP/2 connection: closing it is the refusal.
        return;
    }
    let mut head = BytesMut::with_capacity(HEAD_BUFFER);
    let deadline = Instant::now() + limits.header_timeout.min(REFUSAL_HEADER_WAIT);
    let mut scan = HeadScan::default();
    while !scan.complete(&head) && head.len() <= MAX_HEAD {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut head)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => break,
        }
    }
    let e = GatewayError::new(
        503,
        format!(
            "The gateway is serving its limit of {} connections; retry later",
            limits.max_connections
        ),
    )
    .with_code(ErrorCode::TooManyConnections);
    answer_and_close(stream, &head, &e, limits).await;
}

/// Writes `error` as a whole HTTP/1.1 answer that closes the connection, then closes it.
async fn answer_and_close(
    mut stream: Stream,
    head: &[u8],
    error: &GatewayError,
    limits: &EdgeSettings,
) {
    let body = protocol_of(head).error_body(error);
    let reason = http::StatusCode::from_u16(error.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        error.status,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    let write = async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(limits.write_timeout, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        log::debug!("could not tell the client {}: {e}", error.status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete_after_feeding_bytewise(input: &[u8]) -> Option<usize> {
        let mut scan = HeadScan::default();
        (1..=input.len()).find(|&n| scan.complete(&input[..n]))
    }

    #[test]
    fn a_header_block_ends_at_its_empty_line_however_it_arrives() {
        let crlf = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n{}";
        let end = crlf.len() - 2;
        assert_eq!(complete_after_feeding_bytewise(crlf), Some(end));
        assert!(HeadScan::default().complete(crlf));
        let lf = b"GET /v1/models HTTP/1.1\nhost: x\n\n";
        assert_eq!(complete_after_feeding_bytewise(lf), Some(lf.len()));
        let partial = b"POST / HTTP/1.1\r\nhost: x\r\n";
        assert_eq!(complete_after_feeding_bytewise(partial), None);
        // Empty lines before the request line are not its end (Pingora's parser skips them).
        let leading = b"\r\n\r\n\n\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            complete_after_feeding_bytewise(leading),
            Some(leading.len())
        );
        assert_eq!(complete_after_feeding_bytewise(b"\r\n\r\n\r\n"), None);
    }

    #[test]
    fn the_protocol_comes_from_the_request_line() {
        assert_eq!(
            protocol_of(b"POST /v1/messages HTTP/1.1\r\nx"),
            ClientProtocol::Anthropic
        );
        assert_eq!(
            protocol_of(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            ClientProtocol::OpenAi
        );
        assert_eq!(
            protocol_of(b"\r\nPOST /messages HTTP/1.1\r\n"),
            ClientProtocol::Anthropic
        );
        assert_eq!(protocol_of(b"POS"), ClientProtocol::OpenAi);
        assert_eq!(protocol_of(b""), ClientProtocol::OpenAi);
    }

    #[test]
    fn connection_slots_stop_at_the_limit_and_come_back() {
        let open = AtomicUsize::new(0);
        let a = ConnectionSlot::take(&open, 2);
        let b = ConnectionSlot::take(&open, 2);
        assert!(a.is_some() && b.is_some());
        assert!(ConnectionSlot::take(&open, 2).is_none());
        assert_eq!(open.load(Ordering::Relaxed), 2);
        drop(a);
        assert!(ConnectionSlot::take(&open, 2).is_some());
    }
}
