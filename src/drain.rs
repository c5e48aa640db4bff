//! What the process does between Pingora's shutdown signal and its exit: `SIGTERM`, or `SIGQUIT`
//! once the listening sockets went to the process that takes over (`-u`).
//!
//! Pingora stops accepting at that signal, sleeps `grace_period_seconds`, then drops every task
//! still running: a stream would be cut mid-event, and a kept-alive client could see its
//! connection reset as it sends its next request. So, while draining:
//! - requests that arrive on connections already open are answered, with `Connection: close`
//!   (Pingora's own loop sets it once shutting down), and an idle kept-alive connection is left
//!   open for its next request instead of being closed under a client that may be sending
//!   (`proxy::edge`);
//! - at the end of the grace period the upstream sockets still in use are shut down, which
//!   ends each stream with a terminal error event in the client's protocol and each request still
//!   waiting for its answer with a 503 `gateway_shutting_down` (no attempt, retry or fallback
//!   starts after it), a request body still coming gets the same 503, and idle connections are
//!   closed;
//! - the process exits as soon as no client connection is left, without waiting out the rest of
//!   Pingora's sleep, which is set [`FINAL_WRITE`] past the grace period as a backstop.

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use slab::Slab;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Pingora's grace period when the config sets none (its `EXIT_TIMEOUT`).
pub const PINGORA_DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// How much longer than the grace period Pingora waits before it drops every task: the time the
/// last terminal events and 503s have to reach their clients.
pub const FINAL_WRITE: Duration = Duration::from_secs(2);
/// The longest grace period accepted, as for every duration in the config: past it a value can
/// only be a typo (and would overflow the deadlines computed from it).
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 60 * 60);
/// Connections accepted just before the signal may still be in their (TLS) handshake, which the
/// edge does not count yet: the process does not exit for lack of connections before this.
const HANDSHAKE_SETTLE: Duration = Duration::from_secs(1);

/// Refuses a `grace_period_seconds` past [`MAX_GRACE`], naming the key.
pub fn check_grace(conf: &ServerConf) -> Result<(), String> {
    match conf.grace_period_seconds {
        Some(s) if s > MAX_GRACE.as_secs() => Err(format!(
            "grace_period_seconds: {s} is more than {} (24 h)",
            MAX_GRACE.as_secs()
        )),
        _ => Ok(()),
    }
}

/// The grace period requests in flight get ([`check_grace`] has bounded it).
pub fn grace_period(conf: &ServerConf) -> Duration {
    conf.grace_period_seconds
        .map_or(PINGORA_DEFAULT_GRACE, Duration::from_secs)
        .min(MAX_GRACE)
}

/// The process's drain state.
pub struct Drain {
    draining: AtomicBool,
    grace_over: AtomicBool,
    grace_over_notify: Notify,
    /// Notified when the last client connection closes.
    no_connections: Notify,
    /// Upstream sockets of attempts in flight, shut down when the grace period ends.
    upstream_sockets: Mutex<Slab<RawFd>>,
}

pub static DRAIN: Drain = Drain::new();

impl Drain {
    const fn new() -> Drain {
        Drain {
            draining: AtomicBool::new(false),
            grace_over: AtomicBool::new(false),
            grace_over_notify: Notify::const_new(),
            no_connections: Notify::const_new(),
            upstream_sockets: Mutex::new(Slab::new()),
        }
    }

    /// Whether the process has stopped accepting and is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the grace period has ended: nothing new may start upstream.
    pub fn is_grace_over(&self) -> bool {
        self.grace_over.load(Ordering::Acquire)
    }

    /// Resolves once the grace period has ended.
    pub async fn grace_over(&self) {
        // Registered before the flag is read, so an end in between still wakes it.
        let notified = self.grace_over_notify.notified();
        if self.is_grace_over() {
            return;
        }
        notified.await
    }

    /// Keeps `fd`, the upstream socket of an attempt, to shut down if the grace period ends
    /// while the attempt runs. Released when the returned guard drops. The caller checks
    /// [`Self::is_grace_over`] after this, for an end that came while it connected.
    pub fn hold_upstream(&'static self, fd: RawFd) -> UpstreamSocket {
        let key = lock(&self.upstream_sockets).insert(fd);
        UpstreamSocket { drain: self, key }
    }

    /// Called by the edge when its last client connection closed.
    pub fn last_connection_closed(&self) {
        // A stored permit: a closing that comes before the drain service waits is not lost.
        self.no_connections.notify_one();
    }

    fn begin(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ends the grace period: upstream sockets in use are shut down (their requests then fail
    /// and answer as the module says), idle client connections are woken to close.
    fn end_grace(&self) {
        self.grace_over.store(true, Ordering::Release);
        self.grace_over_notify.notify_waiters();
        let sockets = lock(&self.upstream_sockets);
        for (_, &fd) in sockets.iter() {
            // SAFETY: shutdown(2) takes any descriptor number and only acts on sockets. A
            // socket is held here from its attempt's connection until the attempt's context
            // drops, which comes shortly after Pingora released the connection: the number may
            // by then name another socket of this process, which is ending its requests anyway.
            // Listening sockets are closed when draining starts and never opened again.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        log::info!(
            "grace period over: {} upstream call(s) still running ended",
            sockets.len()
        );
    }
}

/// What a request still running when the grace period ends gets: a 503, or, once its answer
/// started, a terminal error event saying the same.
pub fn shutting_down() -> crate::error::GatewayError {
    crate::error::GatewayError::new(
        503,
        "The gateway is shutting down and its grace period ended before this answer did; retry",
    )
    .with_code(crate::error::ErrorCode::GatewayShuttingDown)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An attempt's upstream socket, held by [`Drain::hold_upstream`].
pub struct UpstreamSocket {
    drain: &'static Drain,
    key: usize,
}

impl Drop for UpstreamSocket {
    fn drop(&mut self) {
        lock(&self.drain.upstream_sockets).try_remove(self.key);
    }
}

/// The background service that carries the drain out: waits for Pingora's shutdown signal, ends
/// the grace period on time, and exits once no client connection is left.
pub struct DrainService {
    /// The configured grace period (Pingora's own sleep is [`FINAL_WRITE`] longer).
    pub grace: Duration,
    /// Client connections open, as the edge counts them.
    pub connections: Arc<AtomicUsize>,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|down| *down).await.is_err() {
            return;
        }
        let started = Instant::now();
        DRAIN.begin();
        log::info!(
            "draining: {} client connection(s) open, grace period {:?}",
            self.connections.load(Ordering::Acquire),
            self.grace
        );
        let grace_end = started + self.grace;
        let settled = started + HANDSHAKE_SETTLE;
        loop {
            let now = Instant::now();
            if now >= settled && self.connections.load(Ordering::Acquire) == 0 {
                break;
            }
            if now >= grace_end && !DRAIN.is_grace_over() {
                DRAIN.end_grace();
                continue;
            }
            let wake = if DRAIN.is_grace_over() {
                settled
            } else if now < settled {
                settled.min(grace_end)
            } else {
                grace_end
            };
            tokio::select! {
                () = DRAIN.no_connections.notified() => {}
                () = tokio::time::sleep_until(wake), if wake > now => {}
            }
        }
        log::info!(
            "drained after {:?}: no client connection left, exiting",
            started.elapsed()
        );
        // Exiting runs no destructor: the access log's last lines are written first.
        if let Some(access_log) = crate::observe::access_log::get() {
            access_log.written(Duration::from_secs(1)).await;
        }
        log::logger().flush();
        // Pingora would sleep out the rest of its grace period with nothing left to do.
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[tokio::test]
    async fn the_end_of_the_grace_period_ends_held_sockets_only_and_wakes_waiters() {
        // A drain of its own: the process-wide one must not end for the other tests.
        let drain: &'static Drain = Box::leak(Box::new(Drain::new()));
        let (held, mut held_peer) = UnixStream::pair().unwrap();
        let (released, mut released_peer) = UnixStream::pair().unwrap();
        held_peer.set_nonblocking(true).unwrap();
        released_peer.set_nonblocking(true).unwrap();
        let _held = drain.hold_upstream(held.as_raw_fd());
        drop(drain.hold_upstream(released.as_raw_fd()));
        let waiter = tokio::spawn(drain.grace_over());
        assert!(!drain.is_grace_over());

        drain.end_grace();
        assert!(drain.is_grace_over());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter was not woken")
            .unwrap();
        // After its end, waiting returns at once.
        drain.grace_over().await;
        let mut buf = [0u8; 1];
        assert_eq!(
            held_peer.read(&mut buf).unwrap(),
            0,
            "held socket not shut down"
        );
        let still_open = released_peer.read(&mut buf).unwrap_err();
        assert_eq!(still_open.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(lock(&drain.upstream_sockets).len(), 1);
    }

    #[test]
    fn a_grace_period_past_a_day_is_refused_and_none_means_pingoras_default() {
        let mut conf = ServerConf::default();
        assert_eq!(grace_period(&conf), PINGORA_DEFAULT_GRACE);
        conf.grace_period_seconds = Some(86_400);
        assert!(check_grace(&conf).is_ok());
        conf.grace_period_seconds = Some(86_401);
        let e = check_grace(&conf).unwrap_err();
        assert!(e.starts_with("grace_period_seconds: 86401"), "{e}");
        assert_eq!(grace_period(&conf), MAX_GRACE);
    }
}
