//! One `send()` for a request's head and body.
//!
//! Pingora's HTTP/1 client flushes the request head before it writes the body, so a proxied POST
//! costs two sends, and on the upstream's side an extra wake-up and `recv()`. On loopback, sends
//! were half of the gateway's CPU (BENCHMARKS.md); nginx sends both in one `writev()`. Corking the
//! upstream socket (`TCP_CORK`) before the head is written makes the kernel hold the head; the
//! cork comes out once the body has been handed to the socket, and both leave in one segment.
//!
//! The same holds for the client's side: a response without a length has its head flushed
//! alone, and its closing chunk written alone, so when the body is already there (a translated
//! answer, a stream that arrived in one read) the pieces are corked into one segment too. A
//! translated answer is written whole, so its cork comes out in the `logging` hook, after
//! Pingora's last flush, with no task to spawn (tests/anthropic_upstream.rs counts the segments).
//!
//! The kernel sends corked data after 200 ms whatever happens, so a cork that is never pulled
//! costs latency, never a hang. Pulling it early only costs the saving.

use super::ctx::RequestCtx;
use crate::plan::ResponseMode;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::os::unix::io::RawFd;

/// Corks the attempt's upstream socket, `fd`, when the request has a body to wait for.
pub fn hold_request(fd: RawFd, ctx: &mut RequestCtx) {
    if ctx.call.as_ref().is_some_and(|c| !c.body.is_empty()) {
        hold(fd);
        ctx.corked_upstream = Some(fd);
    }
}

/// Called with the end of the request body, just before Pingora writes it.
pub fn release_request(ctx: &mut RequestCtx) {
    if let Some(fd) = ctx.corked_upstream.take() {
        release_after_write(fd);
    }
}

/// Pingora flushes the head of a response without a length on its own; the part of the body that
/// has already arrived, and a stream's last chunk, would each take a send of their own. Corks the
/// client's socket (HTTP/1 only): a translated answer, written whole once the upstream's body is
/// complete, stays corked until [`release_response`]; anything else until this round of writes
/// is done.
pub fn coalesce_unsized_response(session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) {
    if resp.headers.get(http::header::CONTENT_LENGTH).is_some() {
        return;
    }
    let Some(client) = session.as_downstream().stream() else {
        return;
    };
    hold(client.id());
    let written_whole = ctx
        .call
        .as_ref()
        .is_some_and(|c| c.response_mode == ResponseMode::TranslateWhole);
    if written_whole {
        ctx.corked_client = Some(client.id());
    } else {
        release_after_write(client.id());
    }
}

/// Called once the response has been written and flushed (the `logging` hook).
pub fn release_response(ctx: &mut RequestCtx) {
    if let Some(fd) = ctx.corked_client.take() {
        set_cork(fd, false);
    }
}

/// Holds what is written to `fd` until [`release_after_write`]; call it before the head goes out.
fn hold(fd: RawFd) {
    set_cork(fd, true);
}

/// Pulls the cork once the task that writes the body has finished its current poll. Pingora
/// writes the head, runs `request_body_filter` and writes the body in one poll of the request's
/// task; a task spawned from a worker goes to that worker's LIFO slot, which no other worker can
/// steal and which runs as soon as the poll ends: on the same thread, before it parks.
/// (`yield_now` here instead would hand the release, and with it the upstream's answer, to a
/// woken second worker: a cross-thread hop on every request.)
fn release_after_write(fd: RawFd) {
    tokio::spawn(async move {
        set_cork(fd, false);
    });
}

/// Best effort: if the connection is already gone the call fails harmlessly (a reused
/// descriptor number at worst loses its own cork early).
fn set_cork(fd: RawFd, on: bool) {
    let value: libc::c_int = on.into();
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; an fd that is not a
    // TCP socket makes it return an error, which is ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::io::AsRawFd;

    fn read_now(server: &mut std::net::TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        match server.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    fn corked(fd: RawFd) -> bool {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the live local.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value != 0
    }

    // A current-thread runtime: the release task can only run when this task yields.
    #[tokio::test(flavor = "current_thread")]
    async fn head_waits_for_the_body_then_both_leave_together() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nodelay(true).unwrap();
        let (mut server, _) = listener.accept().unwrap();

        hold(client.as_raw_fd());
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        server.set_nonblocking(true).unwrap();
        // Corked: the kernel keeps the head back although TCP_NODELAY is on.
        assert!(read_now(&mut server).is_empty());

        release_after_write(client.as_raw_fd());
        // Not before this task has written the body and ended its poll.
        assert!(corked(client.as_raw_fd()));
        client.write_all(b"hello").unwrap();
        tokio::task::yield_now().await;
        assert!(!corked(client.as_raw_fd()));
        server.set_nonblocking(false).unwrap();
        let got = read_now(&mut server);
        assert_eq!(got, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    }

    #[test]
    fn a_held_answer_comes_out_when_the_request_ends() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = client.as_raw_fd();
        hold(fd);
        let mut ctx = RequestCtx {
            corked_client: Some(fd),
            ..Default::default()
        };
        release_response(&mut ctx);
        assert!(!corked(fd));
        assert_eq!(ctx.corked_client, None);
    }
}
