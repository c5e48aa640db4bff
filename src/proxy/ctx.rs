//! Per-request state, shared by the hooks of one request (and, for the upstream call, by the
//! subrequest that carries it).

use crate::buffers::Held;
use crate::limits::usage::UsageScan;
use crate::limits::Admission;
use crate::plan::PlannedCall;
use crate::stream::redact::StreamRedactor;
use crate::stream::{NativeStreamFilter, StreamTranslation, TerminalWatch};
use crate::upstream::balance::InflightGuard;
use crate::upstream::breaker::ProbeGuard;
use crate::upstream::credentials::AttemptKey;
use bytes::BytesMut;
use pingora_core::protocols::l4::socket::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
pub struct RequestCtx {
    /// The planned upstream call; set in the client's session after routing, and in the
    /// subrequest that sends it.
    pub call: Option<Arc<PlannedCall>>,
    /// Whether this session is the subrequest that talks to the upstream.
    pub is_upstream_leg: bool,
    pub started: Option<Instant>,
    /// Instances that failed for this request; never chosen again by it.
    pub failed_backends: Vec<SocketAddr>,
    /// The instance of the current attempt.
    pub backend: Option<pingora_load_balancing::Backend>,
    /// Counts the current attempt as in flight on its instance.
    pub inflight: Option<InflightGuard>,
    /// The probe slot of the current attempt's instance, when its circuit is half-open. Settled
    /// when the outcome is reported; dropped unsettled (the attempt was abandoned: client gone,
    /// hedge lost, deadline passed, no peer after all), it frees the slot for the next request.
    pub probe: Option<ProbeGuard>,
    /// When the current attempt's instance was chosen, for time to first byte.
    pub attempt_started: Option<Instant>,
    pub attempts: u32,
    /// The key the current attempt sends.
    pub key: Option<AttemptKey>,
    /// Keys the upstream refused (401/429) for this request, a bit each; never sent again by it.
    pub refused_keys: u64,
    /// Upstream status of the current attempt.
    pub upstream_status: u16,
    /// What happens to the current attempt's response body.
    pub response: ResponseHandling,
    pub response_buffer: BytesMut,
    /// The upstream socket of the current attempt while its request head is held back.
    pub corked_upstream: Option<std::os::unix::io::RawFd>,
    /// The client's socket while a translated answer is held back to leave in one segment.
    pub corked_client: Option<std::os::unix::io::RawFd>,
    /// The client's request under its rate limits (in the client's session).
    pub admission: Option<Admission>,
    /// Reads the current attempt's answer for its token usage, when the request counts tokens.
    pub usage_scan: Option<UsageScan>,
    /// Keeps the attempt's provider key out of a stream passed through to the client.
    pub stream_redactor: Option<StreamRedactor>,
    /// This request's share of `edge.max_buffered_bytes`: its body, and its buffered answer.
    pub held: Held,
    /// Its id, and what the metrics and the access log are told of it.
    pub observe: crate::observe::Observation,
    /// The current attempt's upstream socket, ended if a shutdown's grace period runs out.
    pub upstream_socket: Option<crate::drain::UpstreamSocket>,
    /// The current attempt's answer, gathered for the response cache.
    pub cache_collector: Option<crate::cache::Gather>,
}

/// What the response body filter does with the upstream's bytes.
#[derive(Default)]
pub enum ResponseHandling {
    /// Sent on untouched.
    #[default]
    PassThrough,
    /// A stream sent on untouched, watched for its terminal event.
    WatchStream(TerminalWatch),
    /// An Azure OpenAI stream sent on event by event, without Azure's annotation chunks.
    FilterStream(Box<dyn NativeStreamFilter>),
    /// Collected whole, then translated (translated answers, every error).
    BufferWhole,
    /// A stream translated event by event.
    TranslateStream(Box<StreamTranslation>),
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Some(Instant::now()),
            ..Default::default()
        }
    }
}
