//! What operators see of the traffic: Prometheus series ([`metrics`]), one access log line per
//! request ([`access_log`]), and request ids ([`request_id`]).
//!
//! A client request is counted once, when its session ends (Pingora's `logging` hook). What
//! happened upstream is noted by whichever session talks to the upstream: the client's own
//! session, or the dispatcher's legs, each of which reports to the dispatcher through a
//! [`LegReport`]; the client's session then reads the report of the leg that served it.

pub mod access_log;
pub mod metrics;
pub mod request_id;

use crate::access::GatewayKey;
use crate::api::{self, ClientEndpoint, ClientProtocol};
use crate::config::Settings;
use crate::limits::usage::TokenUsage;
use crate::plan::PlannedCall;
use crate::proxy::ctx::RequestCtx;
use crate::registry::{Model, Registry};
use metrics::{AttemptOutcome, InFlight, ModelMetrics, OperationKind};
use pingora_error::{Error, ErrorType};
use pingora_proxy::Session;
use prometheus::IntCounter;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The registry's part: whether requests are counted, and the series of unknown models.
pub struct RegistryObserve {
    pub metrics: bool,
    /// Requests that named no configured model.
    pub unknown: Option<Arc<ModelMetrics>>,
    key_names: Arc<[String]>,
}

impl RegistryObserve {
    pub fn new(settings: &Settings) -> RegistryObserve {
        let key_names: Arc<[String]> = settings.keys.iter().map(|k| k.name.clone()).collect();
        let families = settings.metrics.then(metrics::families).flatten();
        RegistryObserve {
            metrics: families.is_some(),
            unknown: families.map(|f| {
                Arc::new(ModelMetrics::new(
                    f,
                    metrics::UNKNOWN,
                    metrics::UNKNOWN,
                    key_names.clone(),
                ))
            }),
            key_names,
        }
    }

    /// The request counter of an experiment's arm, when metrics are on.
    pub fn experiment_arm(&self, experiment: &str, variant: &str) -> Option<IntCounter> {
        let families = self.metrics.then(metrics::families).flatten()?;
        Some(families.experiment_arm(experiment, variant))
    }

    /// The cache's outcome counters of one model, when metrics are on.
    pub fn cache_counters(&self, model: &str) -> Option<crate::cache::CacheCounters> {
        let families = self.metrics.then(metrics::families).flatten()?;
        Some(families.cache_counters(model))
    }

    /// The gauge of the bytes the cache holds, when metrics are on.
    pub fn cache_bytes(&self) -> Option<prometheus::IntGauge> {
        let families = self.metrics.then(metrics::families).flatten()?;
        Some(families.cache_bytes.clone())
    }

    /// The batch series, when metrics are on.
    pub fn batches(&self) -> Option<&'static metrics::Families> {
        self.metrics.then(metrics::families).flatten()
    }

    /// The series of one configured model, when metrics are on.
    pub fn model(&self, model: &str, provider: &str) -> Option<Arc<ModelMetrics>> {
        let families = self.metrics.then(metrics::families).flatten()?;
        Some(Arc::new(ModelMetrics::new(
            families,
            model,
            provider,
            self.key_names.clone(),
        )))
    }
}

/// Whether answers for `model` are read for their token usage (to count it, or to log it).
pub fn wants_usage(model: &Model) -> bool {
    model.metrics.is_some() || access_log::get().is_some()
}

/// What the session that talks to the upstream saw of the answer it relayed. All instants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    first_attempt: Option<Instant>,
    instance: Option<SocketAddr>,
    header_at: Option<Instant>,
    first_body_at: Option<Instant>,
    upstream_done: Option<Instant>,
    tokens: Option<TokenUsage>,
}

/// Which leg of the dispatcher a report is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    First,
    Fallback,
    Hedge,
}

/// A dispatcher leg's [`Served`], written by the leg and read by the client's session.
#[derive(Debug)]
pub struct LegReport {
    kind: LegKind,
    /// The client request's id: Pingora builds an HTTP/1 client's subrequest from the bytes it
    /// received, without the id the gateway may have set since.
    request_id: Option<http::HeaderValue>,
    served: Mutex<Served>,
}

impl LegReport {
    /// A leg of the client request in `session`.
    pub fn new(kind: LegKind, session: &Session) -> Arc<LegReport> {
        Arc::new(LegReport {
            kind,
            request_id: session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .cloned(),
            served: Mutex::new(Served::default()),
        })
    }

    fn read(&self) -> Served {
        *self.served.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The dispatcher's legs for one client request.
#[derive(Debug, Default)]
pub struct LegTally {
    fallbacks: u32,
    hedges: u32,
    first: Option<Arc<LegReport>>,
    served: Option<Arc<LegReport>>,
}

impl LegTally {
    /// A leg started.
    pub fn started(&mut self, report: &Arc<LegReport>) {
        match report.kind {
            LegKind::First => {}
            LegKind::Fallback => self.fallbacks += 1,
            LegKind::Hedge => self.hedges += 1,
        }
        if self.first.is_none() {
            self.first = Some(report.clone());
        }
    }

    /// The leg whose answer goes to the client.
    pub fn serving(&mut self, report: &Arc<LegReport>) {
        self.served = Some(report.clone());
    }
}

/// Per request, in [`RequestCtx`].
#[derive(Default)]
pub struct Observation {
    // The client's session.
    registry: Option<Arc<Registry>>,
    pub request_id: Option<http::HeaderValue>,
    endpoint: Option<ClientEndpoint>,
    key: Option<usize>,
    /// The configured model the client named (before planning).
    model: Option<Arc<Model>>,
    /// The name the client sent when no model has it (for the access log only).
    unknown_model: Option<Box<str>>,
    /// When the client's body was whole.
    body_read: Option<Instant>,
    in_flight: Option<InFlight>,
    pub legs: LegTally,
    // The session that talks to the upstream.
    served: Served,
    /// In a dispatcher's leg: where it reports.
    pub report: Option<Arc<LegReport>>,
    stream: Option<InFlight>,
}

impl Observation {
    /// Copies what this leg saw to the dispatcher.
    fn publish(&self) {
        if let Some(report) = &self.report {
            *report.served.lock().unwrap_or_else(|e| e.into_inner()) = self.served;
        }
    }

    /// The gateway key the client presented.
    pub fn authenticated(&mut self, registry: &Registry, key: Option<&GatewayKey>) {
        if self.registry.is_some() {
            self.key = key.and_then(|k| registry.keys.index_of(k));
        }
    }

    /// The client's body is whole: the time it took to arrive was the client's.
    pub fn body_read(&mut self) {
        self.body_read = Some(Instant::now());
    }

    /// The client's request was planned for `model`.
    pub fn planned(&mut self, model: &Arc<Model>) {
        if self.registry.is_some() {
            self.model = Some(model.clone());
        }
    }

    /// The client's request names `model`, and could not be planned.
    pub fn named_model(&mut self, registry: &Registry, model: &str) {
        if self.registry.is_none() {
            return;
        }
        self.model = registry.models.get(model).cloned();
        if self.model.is_none() && access_log::get().is_some() {
            let mut end = model.len().min(access_log::MAX_MODEL_LEN);
            while !model.is_char_boundary(end) {
                end -= 1;
            }
            self.unknown_model = Some(model[..end].into());
        }
    }
}

/// One request of a compare or batch ended with `status`, `duration` after it was read: counted
/// like a client's request to its model (`call`, when it was planned; else the model it named).
pub fn fanout_request(
    registry: &Registry,
    key: Option<&crate::access::GatewayKey>,
    call: Option<&PlannedCall>,
    named: Option<&str>,
    status: u16,
    duration: Duration,
) {
    if !registry.observe.metrics {
        return;
    }
    let model = call
        .map(|c| &c.model)
        .or_else(|| named.and_then(|n| registry.models.get(n)));
    let metrics = model
        .and_then(|m| m.metrics.as_deref())
        .or(registry.observe.unknown.as_deref());
    let Some(m) = metrics else { return };
    let key = key.and_then(|k| registry.keys.index_of(k));
    m.request(key, status);
    if let Some(call) = call {
        m.duration(OperationKind::of(call.operation), duration);
    }
}

/// A client request begins (its session, not a leg's): its id, taken or made, goes on its header
/// (and so upstream); and it is counted in flight.
pub fn begin(session: &mut Session, registry: &Arc<Registry>, ctx: &mut RequestCtx) {
    let (id, new) = request_id::of_request(&session.req_header().headers);
    if new {
        // Replaces whatever the client sent under that name.
        let _ = session
            .req_header_mut()
            .insert_header(request_id::HEADER, id.clone());
    }
    let obs = &mut ctx.observe;
    obs.request_id = Some(id);
    if !registry.observe.metrics && access_log::get().is_none() {
        return;
    }
    obs.registry = Some(registry.clone());
    let req = session.req_header();
    obs.endpoint = api::endpoint_for(&req.method, req.uri.path()).ok();
    if registry.observe.metrics {
        obs.in_flight = metrics::families().map(|f| InFlight::start(&f.requests_in_flight));
    }
}

/// A dispatcher's leg begins, reporting to `report`: its request carries the client request's id.
pub fn begin_leg(session: &mut Session, ctx: &mut RequestCtx, report: Option<Arc<LegReport>>) {
    if let Some(id) = report.as_ref().and_then(|r| r.request_id.clone()) {
        let _ = session
            .req_header_mut()
            .insert_header(request_id::HEADER, id);
    }
    ctx.observe.report = report;
}

/// An upstream attempt started (its instance chosen).
pub fn attempt_started(call: &PlannedCall, ctx: &mut RequestCtx) {
    if ctx.attempts > 1 {
        if let Some(m) = &call.model.metrics {
            m.retry();
        }
    }
    let served = &mut ctx.observe.served;
    if served.first_attempt.is_none() {
        served.first_attempt = ctx.attempt_started;
    }
    // The status handling takes the attempt's backend when it fails: note it now.
    served.instance = ctx
        .backend
        .as_ref()
        .and_then(|b| crate::upstream::select::inet(&b.addr));
}

/// The current attempt's upstream answered with `status`.
pub fn attempt_answered(call: &PlannedCall, status: u16) {
    if let Some(m) = &call.model.metrics {
        m.attempt(AttemptOutcome::of_status(status));
    }
}

/// The current attempt failed before the upstream's answer began (`fail_to_connect`, or
/// `error_while_proxy` before the response started). A status the gateway's own handling raised
/// to retry was counted when it was answered.
pub fn attempt_failed(call: &PlannedCall, e: &Error) {
    let Some(m) = &call.model.metrics else { return };
    use ErrorType::*;
    let outcome = match e.etype() {
        HTTPStatus(_) => return,
        ConnectTimedout | TLSHandshakeTimedout | ReadTimedout | WriteTimedout => {
            AttemptOutcome::Timeout
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
        | BindError | TLSHandshakeFailure | InvalidCert | TLSWantX509Lookup => {
            AttemptOutcome::ConnectError
        }
        _ => AttemptOutcome::Error,
    };
    m.attempt(outcome);
}

/// The upstream's answer header is on its way to the client: it carries the request's id (an
/// upstream's own id is passed on as `x-upstream-request-id`); its instance is noted, and a
/// stream is counted in flight until its session ends.
pub fn response_header(status: u16, call: &PlannedCall, ctx: &mut RequestCtx) {
    let obs = &mut ctx.observe;
    obs.served.header_at = Some(Instant::now());
    if call.stream && status < 400 && call.model.metrics.is_some() {
        obs.stream = metrics::families().map(|f| InFlight::start(&f.streams_in_flight));
    }
    obs.publish();
}

/// Answer bytes came from the upstream.
pub fn response_body(ctx: &mut RequestCtx, body: &Option<bytes::Bytes>, end_of_stream: bool) {
    let served = &mut ctx.observe.served;
    let first = served.first_body_at.is_none() && body.as_ref().is_some_and(|b| !b.is_empty());
    if !first && !end_of_stream {
        return;
    }
    let now = Instant::now();
    if first {
        served.first_body_at = Some(now);
    }
    if end_of_stream {
        served.upstream_done = Some(now);
    }
    ctx.observe.publish();
}

/// The answer reported its token usage.
pub fn usage(call: &PlannedCall, ctx: &mut RequestCtx, usage: TokenUsage) {
    if let Some(m) = &call.model.metrics {
        m.tokens(OperationKind::of(call.operation), usage);
    }
    ctx.observe.served.tokens = Some(usage);
    ctx.observe.publish();
}

fn endpoint_name(endpoint: Option<ClientEndpoint>) -> &'static str {
    match endpoint {
        Some(ClientEndpoint::ChatCompletions) => "chat_completions",
        Some(ClientEndpoint::Complete) => "complete",
        Some(ClientEndpoint::Messages) => "messages",
        Some(ClientEndpoint::CountTokens) => "count_tokens",
        Some(ClientEndpoint::Embeddings) => "embeddings",
        Some(ClientEndpoint::Models) => "models",
        Some(ClientEndpoint::Compare) => "compare",
        Some(ClientEndpoint::Batch) => "batch",
        None => "unknown",
    }
}

/// A client request ended (its session's `logging` hook): it is counted, and logged.
pub fn finish(session: &Session, ctx: &mut RequestCtx) {
    let obs = &mut ctx.observe;
    // In flight until its series are recorded: a scrape that finds nothing in flight finds this
    // request counted.
    let in_flight = obs.in_flight.take();
    let Some(registry) = obs.registry.take() else {
        return;
    };
    let now = Instant::now();
    let started = ctx.started.unwrap_or(now);
    let duration = now.saturating_duration_since(started);
    let written = session.response_written();
    let status = written.map_or(0, |r| r.status.as_u16());
    let call = ctx.call.as_deref();
    let model = call.map(|c| &c.model).or(obs.model.as_ref());
    // The dispatcher's serving leg, else this session's own upstream call.
    let served = obs.legs.served.as_ref().map_or(obs.served, |r| r.read());
    let first_attempt = obs
        .legs
        .first
        .as_ref()
        .map_or(obs.served.first_attempt, |r| r.read().first_attempt);
    let since = |at: Option<Instant>| at.map(|t| t.saturating_duration_since(started));
    let upstream = first_attempt.map_or(Duration::ZERO, |from| {
        served
            .upstream_done
            .unwrap_or(now)
            .saturating_duration_since(from)
    });
    let reading_body = since(obs.body_read).unwrap_or_default();
    let overhead = duration
        .saturating_sub(reading_body)
        .saturating_sub(upstream);
    let winner = obs.legs.served.as_ref().map(|r| r.kind);

    // A compare or batch is counted by its requests, each under its own model
    // ([`fanout_request`]); the access log has the compare or batch itself.
    let fanout = matches!(
        obs.endpoint,
        Some(ClientEndpoint::Compare | ClientEndpoint::Batch)
    );
    if registry.observe.metrics && !fanout {
        let metrics = model
            .and_then(|m| m.metrics.as_deref())
            .or(registry.observe.unknown.as_deref());
        if let Some(m) = metrics {
            m.request(obs.key, status);
            m.overhead(overhead);
            if let Some(call) = call {
                let kind = OperationKind::of(call.operation);
                m.duration(kind, duration);
                if let (true, 200..=299, Some(first)) =
                    (call.stream, status, since(served.first_body_at))
                {
                    m.time_to_first_token(kind, first);
                }
                m.legs(false, obs.legs.fallbacks, winner == Some(LegKind::Fallback));
                m.legs(true, obs.legs.hedges, winner == Some(LegKind::Hedge));
            }
        }
    }

    drop(in_flight);

    if let Some(log) = access_log::get() {
        let served_model = match call {
            // A successful answer from the call itself or its first leg: the call's own model
            // (a fallback or a hedge may be another model's).
            Some(call) if status < 400 && matches!(winner, None | Some(LegKind::First)) => {
                Some(call.model.clone())
            }
            _ => written
                .and_then(|r| r.headers.get("x-dragoman-model"))
                .and_then(|v| v.to_str().ok())
                .and_then(|name| registry.models.get(name))
                .cloned(),
        };
        let protocol = match obs.endpoint.map(|e| e.protocol()) {
            Some(ClientProtocol::Anthropic) => "anthropic",
            _ => "openai",
        };
        log.send(access_log::AccessRecord {
            time: SystemTime::now(),
            request_id: obs.request_id.take(),
            key: obs.key,
            protocol,
            endpoint: endpoint_name(obs.endpoint),
            model: model.cloned(),
            unknown_model: obs.unknown_model.take(),
            served_model,
            variant: call.and_then(|c| c.variant.clone()),
            instance: served.instance,
            status,
            attempts: call.map_or(0, |c| c.budget.calls_made()),
            fallback: winner == Some(LegKind::Fallback),
            hedge: winner == Some(LegKind::Hedge),
            stream: call.is_some_and(|c| c.stream),
            tokens: served.tokens,
            ttfb: since(served.header_at),
            duration,
            overhead,
            registry,
        });
    }
}
