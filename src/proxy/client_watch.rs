//! Notices a client that went away while its request waits on the upstream, so that the upstream
//! call is cancelled at once instead of running (and being billed) to its end.
//!
//! The client's socket is read by Pingora; the watch peeks at a duplicate of its descriptor,
//! which sees the same connection without taking any bytes from it.

use pingora_proxy::Session;
use std::os::fd::{BorrowedFd, OwnedFd};

/// A duplicate of the client's socket, for HTTP/1 clients (HTTP/2 streams end by themselves).
pub fn duplicate_client_socket(session: &Session) -> Option<OwnedFd> {
    let fd = session.as_downstream().stream()?.id();
    // SAFETY: `fd` is the descriptor of the session's live stream, which outlives this call;
    // it is only borrowed long enough to duplicate it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().ok()
}

/// Resolves when the client closes or resets its connection. Pends forever if the client sends
/// more bytes (a pipelined request), since then its state cannot be told without reading.
pub async fn closed(socket: OwnedFd) {
    // The duplicate shares the original's non-blocking mode.
    let Ok(stream) = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket)) else {
        return std::future::pending().await;
    };
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}
