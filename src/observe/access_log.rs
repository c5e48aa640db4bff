//! The access log: one JSON line per client request, written by a thread of its own so the
//! proxy's threads never wait on a disk. Requests hand their record over a bounded channel (a
//! full channel drops the line and counts it in `dragoman_access_log_dropped_total`); the writer
//! takes them every 50 ms, serializes each into one reused buffer, and flushes them together.
//!
//! A record holds no prompt, completion or credential: the gateway key's configured name, never
//! the key; the model names; numbers.

use crate::config::{AccessLogSettings, AccessLogTarget};
use crate::limits::usage::TokenUsage;
use crate::registry::{Model, Registry};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// The longest requested model name written as the client sent it (an unknown one).
pub const MAX_MODEL_LEN: usize = 256;

/// What the log says of one request; serialized on the writer thread.
pub struct AccessRecord {
    pub time: SystemTime,
    pub request_id: Option<http::HeaderValue>,
    /// Keeps the key names alive; `key` indexes them.
    pub registry: Arc<Registry>,
    pub key: Option<usize>,
    pub protocol: &'static str,
    pub endpoint: &'static str,
    /// The configured model the client named.
    pub model: Option<Arc<Model>>,
    /// The name the client sent, when no configured model has it.
    pub unknown_model: Option<Box<str>>,
    pub served_model: Option<Arc<Model>>,
    /// The experiment's arm, for a request that named an experiment.
    pub variant: Option<Arc<crate::experiments::Arm>>,
    pub instance: Option<SocketAddr>,
    pub status: u16,
    pub attempts: u32,
    pub fallback: bool,
    pub hedge: bool,
    pub stream: bool,
    pub tokens: Option<TokenUsage>,
    pub ttfb: Option<Duration>,
    pub duration: Duration,
    pub overhead: Duration,
}

impl AccessRecord {
    /// The record as one JSON line. Written by hand: the keys are constant and need no escaping,
    /// the numbers need no float formatting, and the time's date part is formatted once a second
    /// (serde's derive and chrono's formatter cost the writer more than the rest of it together).
    fn write_json(&self, clock: &mut LineClock, out: &mut Vec<u8>) {
        let served = self.served_model.as_deref();
        out.extend_from_slice(b"{\"time\":\"");
        clock.write(self.time, out);
        out.push(b'"');
        let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
        string(out, "request_id", request_id);
        let key = self.key.and_then(|k| self.registry.keys.get(k));
        string(out, "key", key.map(|k| k.name.as_str()));
        string(out, "protocol", Some(self.protocol));
        string(out, "endpoint", Some(self.endpoint));
        let model = self.model.as_deref().map(|m| m.name.as_str());
        string(out, "model", model.or(self.unknown_model.as_deref()));
        string(out, "served_model", served.map(|m| m.name.as_str()));
        let arm = self.variant.as_deref();
        string(out, "experiment", arm.map(|a| a.experiment.as_str()));
        string(out, "variant", arm.map(|a| a.model.as_str()));
        string(out, "provider", served.map(|m| m.provider.name.as_str()));
        name(out, "instance");
        match self.instance {
            Some(a) => address(out, a),
            None => out.extend_from_slice(b"null"),
        }
        number(out, "status", Some(self.status.into()));
        number(out, "attempts", Some(self.attempts.into()));
        boolean(out, "fallback", self.fallback);
        boolean(out, "hedge", self.hedge);
        boolean(out, "stream", self.stream);
        let tokens = self.tokens;
        number(out, "input_tokens", tokens.map(|t| t.input));
        number(out, "output_tokens", tokens.map(|t| t.output));
        number(out, "cached_tokens", tokens.map(|t| t.cached_input));
        number(out, "reasoning_tokens", tokens.map(|t| t.reasoning));
        millis(out, "ttfb_ms", self.ttfb);
        millis(out, "duration_ms", Some(self.duration));
        millis(out, "overhead_ms", Some(self.overhead));
        out.extend_from_slice(b"}\n");
    }
}

/// `"1.2.3.4:5"`: an IPv4 address by hand (`Display` goes through `fmt` for each part, several
/// times the cost of the rest of the line's numbers); others as `Display` writes them. An address
/// has nothing to escape.
fn address(out: &mut Vec<u8>, a: SocketAddr) {
    out.push(b'"');
    match a {
        SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(digits.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
    out.push(b'"');
}

/// `,"name":` (the names are constants that need no escaping).
fn name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn string(out: &mut Vec<u8>, field: &str, value: Option<&str>) {
    name(out, field);
    match value {
        // Names, ids and words almost never need escaping: copied as they are when they don't.
        Some(v) if !needs_escaping(v) => {
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        // Writing a string into a Vec cannot fail.
        Some(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Whether JSON needs `v` escaped. A fold over every byte, not `any` (which stops at the first
/// hit): the compiler checks many bytes at once without the early exit.
fn needs_escaping(v: &str) -> bool {
    v.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

fn number(out: &mut Vec<u8>, field: &str, value: Option<u64>) {
    name(out, field);
    match value {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, field: &str, value: bool) {
    name(out, field);
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// Milliseconds with three decimals (microsecond precision is plenty, and keeps lines short).
fn millis(out: &mut Vec<u8>, field: &str, value: Option<Duration>) {
    name(out, field);
    let Some(d) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    let micros = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    out.push(b'.');
    three_digits(out, (micros % 1000) as u32);
}

fn three_digits(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// RFC 3339 UTC times with milliseconds; the part up to the second is formatted when the second
/// changes, not for every line.
#[derive(Default)]
struct LineClock {
    second: Option<u64>,
    prefix: String,
}

impl LineClock {
    fn write(&mut self, time: SystemTime, out: &mut Vec<u8>) {
        use std::fmt::Write as _;
        let since_epoch = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            self.prefix.clear();
            let utc: chrono::DateTime<chrono::Utc> = time.into();
            let _ = write!(self.prefix, "{}", utc.format("%Y-%m-%dT%H:%M:%S"));
        }
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'.');
        three_digits(out, since_epoch.subsec_millis());
        out.push(b'Z');
    }
}

/// The running access log: where records are handed over.
pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
    /// Records handed over, and records written and flushed: equal when nothing waits.
    sent: std::sync::atomic::AtomicU64,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// The access log, when one is configured and started.
pub fn get() -> Option<&'static AccessLog> {
    ACCESS_LOG.get()
}

/// The writer, handed to Pingora as a background service: its thread starts with the services,
/// after Pingora has daemonized (a thread started before the fork would not survive it).
pub struct AccessLogWriter {
    parts: Mutex<Option<WriterParts>>,
}

/// What the writer thread takes: the channel's end, and where lines go.
type WriterParts = (
    Receiver<AccessRecord>,
    Box<dyn Write + Send>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((rx, sink, written)) = parts else {
            return;
        };
        // A thread of its own, never joined: it ends with the process, having flushed each
        // time the channel ran empty.
        if let Err(e) = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink, &written))
        {
            log::error!("access_log: cannot start its writer: {e}");
        }
    }
}

/// Opens the log's file (an error names the key) and sets up the channel lines go through; the
/// returned writer must be added to the server. Once per process: a reload does not move the
/// log.
pub fn start(settings: &AccessLogSettings) -> Result<AccessLogWriter, String> {
    let sink: Box<dyn Write + Send> = match &settings.target {
        AccessLogTarget::Stderr => Box::new(std::io::stderr()),
        AccessLogTarget::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("access_log.path: cannot open {}: {e}", path.display()))?,
        ),
    };
    let (tx, rx) = sync_channel(settings.buffer);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    ACCESS_LOG
        .set(AccessLog {
            tx,
            sent: Default::default(),
            written: written.clone(),
        })
        .map_err(|_| "access_log: started twice".to_string())?;
    Ok(AccessLogWriter {
        parts: Mutex::new(Some((rx, sink, written))),
    })
}

impl AccessLog {
    /// Hands a record to the writer; never waits.
    pub fn send(&self, record: AccessRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.sent.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            Err(TrySendError::Full(_)) => {
                if let Some(f) = super::metrics::families() {
                    f.access_log_dropped.inc();
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl AccessLog {
    /// Waits (up to `limit`) until every record handed over so far is written and flushed: before
    /// the process exits at the end of a drain, which runs no destructor.
    pub async fn written(&self, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        let sent = self.sent.load(std::sync::atomic::Ordering::Acquire);
        while self.written.load(std::sync::atomic::Ordering::Acquire) < sent
            && std::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// How often the writer takes what the requests handed over.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer thread: every [`TICK`], whatever the channel holds is written and flushed at once.
/// It sleeps rather than waiting on the channel: a thread blocked in `recv` must be woken by each
/// sender, a futex call per request, and flushing per line is a `write` call per request; both
/// cost the proxy's threads more than the rest of the log together.
fn write_lines(
    rx: Receiver<AccessRecord>,
    sink: Box<dyn Write + Send>,
    written: &std::sync::atomic::AtomicU64,
) {
    let mut sink = sink;
    // A tick's lines, written with one call.
    let mut lines = Vec::with_capacity(64 * 1024);
    let mut clock = LineClock::default();
    let mut failed = false;
    loop {
        std::thread::sleep(TICK);
        let mut taken = 0;
        let open = loop {
            match rx.try_recv() {
                Ok(record) => {
                    taken += 1;
                    record.write_json(&mut clock, &mut lines);
                    // Dropped here, on this thread: the registry and models it held go with it.
                    drop(record);
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if taken > 0 {
            match sink.write_all(&lines).and_then(|()| sink.flush()) {
                Ok(()) => failed = false,
                Err(e) => report(&mut failed, &e),
            }
            lines.clear();
            // A burst's buffer is not kept past the tick that needed it.
            lines.shrink_to(64 * 1024);
            written.fetch_add(taken, std::sync::atomic::Ordering::AcqRel);
        }
        if !open {
            return;
        }
    }
}

/// Logs a write failure once until writing works again (a full disk must not flood the log).
fn report(failed: &mut bool, e: &std::io::Error) {
    if !*failed {
        log::error!("access log: cannot write: {e}");
        *failed = true;
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn addresses_and_times_are_written_as_display_and_rfc_3339_would() {
        for a in [
            "127.0.0.1:8080",
            "10.200.3.44:443",
            "0.0.0.0:0",
            "[::1]:9000",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            address(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{a}\""));
        }
        let mut clock = LineClock::default();
        for millis in [0u64, 7, 999, 1_000, 86_400_123] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_374_400_000 + millis);
            let mut out = Vec::new();
            clock.write(t, &mut out);
            let utc: chrono::DateTime<chrono::Utc> = t.into();
            let want = utc.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        let mut out = Vec::new();
        millis(&mut out, "d", Some(Duration::from_micros(12_005)));
        assert_eq!(out, b",\"d\":12.005");
        // Strings are copied as they are only when nothing in them needs escaping.
        for (value, want) in [
            ("gpt-4o", r#","s":"gpt-4o""#),
            ("a\"b\\c", r#","s":"a\"b\\c""#),
            ("tab\there", r#","s":"tab\there""#),
            ("é", r#","s":"é""#),
        ] {
            let mut out = Vec::new();
            string(&mut out, "s", Some(value));
            assert_eq!(String::from_utf8(out).unwrap(), want, "{value:?}");
        }
    }
}
