//! Per-request state, shared by the hooks of one request (and, for the upstream call, by the
//! subrequest that carries it).

use crate::call::UpstreamCall;
use bytes::BytesMut;
use pingora_core::protocols::l4::socket::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
pub struct RequestCtx {
    /// The planned upstream call; set in the client's session after routing, and in the
    /// subrequest that sends it.
    pub call: Option<Arc<UpstreamCall>>,
    /// Whether this session is the subrequest that talks to the upstream.
    pub is_upstream_leg: bool,
    pub started: Option<Instant>,
    /// Instances that failed for this request; never chosen again by it.
    pub failed_backends: Vec<SocketAddr>,
    /// The instance of the current attempt.
    pub backend: Option<pingora_load_balancing::Backend>,
    pub attempts: u32,
    /// Upstream status of the current attempt.
    pub upstream_status: u16,
    /// Set when the response is buffered for translation.
    pub buffering: bool,
    pub response_buffer: BytesMut,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Some(Instant::now()),
            ..Default::default()
        }
    }
}
