//! Notices a client that went away while its request waits on the upstream, so that the upstream
//! call is cancelled at once instead of running (and being billed) to its end.
//!
//! The client's socket is read by Pingora; the watch peeks at a duplicate of its descriptor,
//! which sees the same connection without taking any bytes from it.

use pingora_proxy::Session;
use std::os::fd::{BorrowedFd, OwnedFd};
use tokio::io::Interest;

/// A duplicate of the client's socket, for HTTP/1 clients (HTTP/2 streams end by themselves).
pub fn duplicate_client_socket(session: &Session) -> Option<OwnedFd> {
    let fd = session.as_downstream().stream()?.id();
    // SAFETY: `fd` is the descriptor of the session's live stream, which outlives this call;
    // it is only borrowed long enough to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().ok()
}

/// Resolves when the client closes or resets its connection. Bytes the client sends meanwhile
/// are left unread: a pipelined request, or, over TLS, the `close_notify` alert that comes just
/// before the end of the stream (so a peek at the first byte cannot tell a TLS client that left).
/// The kernel's read-hangup event says it in both cases.
pub async fn closed(socket: OwnedFd) {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and closed only when it is dropped, so
    // the descriptor stays open and the same for the registration's whole life.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, Interest::READABLE) };
    let Ok(watch) = registered else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut event) = watch.readable().await else {
            return;
        };
        if event.ready().is_read_closed() || event.ready().is_error() {
            return;
        }
        // Readable but still open: wait for the next event (new bytes, or the hangup), which
        // clearing the readiness without reading lets through.
        event.clear_ready();
    }
}
