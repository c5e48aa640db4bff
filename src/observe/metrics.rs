//! The Prometheus series: registered once per process, resolved once per model (its label
//! values fixed when the registry is built), so a request costs a few atomic increments and no
//! label lookup. Series of a (model, gateway key) pair, of an operation or of an outcome are
//! resolved on their first use and kept, so `/metrics` lists only what happened.

use crate::registry::Registry;
use crate::upstream::breaker::CircuitState;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The label value of requests that named no configured model (and of their provider).
pub const UNKNOWN: &str = "unknown";

/// OpenTelemetry's advised boundaries for `gen_ai.client.operation.duration`, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// OpenTelemetry's advised boundaries for `gen_ai.server.time_to_first_token`, in seconds.
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// OpenTelemetry's advised boundaries for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// The gateway's own time: tens of microseconds when all is well.
const OVERHEAD_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every family, registered in Prometheus's default registry (which `/metrics` gathers).
pub struct Families {
    duration: HistogramVec,
    ttft: HistogramVec,
    tokens: HistogramVec,
    requests: IntCounterVec,
    overhead: HistogramVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    fallbacks: IntCounterVec,
    hedges: IntCounterVec,
    rate_limited: IntCounterVec,
    pub requests_in_flight: IntGauge,
    pub streams_in_flight: IntGauge,
    pub access_log_dropped: IntCounter,
    instance_up: IntGaugeVec,
    circuit_state: IntGaugeVec,
    experiment_requests: IntCounterVec,
    pub batch_waiting: IntGauge,
    pub batch_running: IntGauge,
    batch_done: IntCounterVec,
    cache_requests: IntCounterVec,
    pub cache_bytes: IntGauge,
}

const GEN_AI: [&str; 3] = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
];

impl Families {
    fn new() -> Result<Families, prometheus::Error> {
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let tokens_labels = [GEN_AI[0], GEN_AI[1], GEN_AI[2], "gen_ai_token_type"];
        let families = Families {
            duration: histogram(
                "gen_ai_client_operation_duration_seconds",
                "Duration of client requests, from their first byte to their answer's last",
                &DURATION_BUCKETS,
                &GEN_AI,
            )?,
            ttft: histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "Streamed requests: time from the request's first byte to the first chunk of its answer",
                &TTFT_BUCKETS,
                &GEN_AI,
            )?,
            tokens: histogram(
                "gen_ai_client_token_usage",
                "Tokens used per answer, as the upstream reported them",
                &TOKEN_BUCKETS,
                &tokens_labels,
            )?,
            requests: counter(
                "dragoman_requests_total",
                "Client requests, by the model they named, its provider, the gateway key and the answer's status class",
                &["model", "provider", "key", "status_class"],
            )?,
            overhead: histogram(
                "dragoman_gateway_overhead_seconds",
                "Time a request spent in the gateway: not reading the client's body, not waiting on an upstream",
                &OVERHEAD_BUCKETS,
                &["model", "provider"],
            )?,
            attempts: counter(
                "dragoman_upstream_attempts_total",
                "Upstream attempts, by the model and provider they were made for and their outcome",
                &["model", "provider", "outcome"],
            )?,
            retries: counter(
                "dragoman_upstream_retries_total",
                "Upstream attempts that retried a failed one",
                &["model", "provider"],
            )?,
            fallbacks: counter(
                "dragoman_fallbacks_total",
                "Fallback legs started, by the client's model; won: it served the answer",
                &["model", "outcome"],
            )?,
            hedges: counter(
                "dragoman_hedges_total",
                "Hedged legs started, by the client's model; won: it served the answer",
                &["model", "outcome"],
            )?,
            rate_limited: counter(
                "dragoman_rate_limit_rejections_total",
                "Requests refused by a gateway rate limit, by the limit's scope and name",
                &["scope", "name"],
            )?,
            requests_in_flight: IntGauge::new(
                "dragoman_requests_in_flight",
                "Client requests being served",
            )?,
            streams_in_flight: IntGauge::new(
                "dragoman_streams_in_flight",
                "Upstream streams being relayed",
            )?,
            access_log_dropped: IntCounter::new(
                "dragoman_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )?,
            instance_up: IntGaugeVec::new(
                Opts::new(
                    "dragoman_instance_up",
                    "1 when the instance passes its active health checks (or has none), else 0",
                ),
                &["provider", "instance"],
            )?,
            circuit_state: IntGaugeVec::new(
                Opts::new(
                    "dragoman_circuit_state",
                    "The instance's circuit breaker: 0 closed, 1 half-open, 2 open",
                ),
                &["provider", "instance"],
            )?,
            experiment_requests: counter(
                "dragoman_experiment_requests_total",
                "Requests for an experiment, by the experiment and the arm (variant) assigned",
                &["experiment", "variant"],
            )?,
            batch_waiting: IntGauge::new(
                "dragoman_batch_requests_waiting",
                "Requests of batches waiting for their turn",
            )?,
            batch_running: IntGauge::new(
                "dragoman_batch_requests_running",
                "Requests of batches running",
            )?,
            batch_done: counter(
                "dragoman_batch_requests_total",
                "Requests of batches done, by their answer's status class",
                &["status_class"],
            )?,
            cache_requests: counter(
                "dragoman_cache_requests_total",
                "Requests to models that cache, by the model and what the cache did (hit, miss, bypass)",
                &["model", "outcome"],
            )?,
            cache_bytes: IntGauge::new(
                "dragoman_cache_bytes",
                "Bytes the response cache holds (its entries' bodies and bookkeeping)",
            )?,
        };
        let registry = prometheus::default_registry();
        registry.register(Box::new(families.experiment_requests.clone()))?;
        registry.register(Box::new(families.batch_waiting.clone()))?;
        registry.register(Box::new(families.batch_running.clone()))?;
        registry.register(Box::new(families.batch_done.clone()))?;
        registry.register(Box::new(families.cache_requests.clone()))?;
        registry.register(Box::new(families.cache_bytes.clone()))?;
        registry.register(Box::new(families.duration.clone()))?;
        registry.register(Box::new(families.ttft.clone()))?;
        registry.register(Box::new(families.tokens.clone()))?;
        registry.register(Box::new(families.requests.clone()))?;
        registry.register(Box::new(families.overhead.clone()))?;
        registry.register(Box::new(families.attempts.clone()))?;
        registry.register(Box::new(families.retries.clone()))?;
        registry.register(Box::new(families.fallbacks.clone()))?;
        registry.register(Box::new(families.hedges.clone()))?;
        registry.register(Box::new(families.rate_limited.clone()))?;
        registry.register(Box::new(families.requests_in_flight.clone()))?;
        registry.register(Box::new(families.streams_in_flight.clone()))?;
        registry.register(Box::new(families.access_log_dropped.clone()))?;
        registry.register(Box::new(families.instance_up.clone()))?;
        registry.register(Box::new(families.circuit_state.clone()))?;
        Ok(families)
    }
}

impl Families {
    /// The counter of one experiment's arm, resolved once per registry.
    pub fn experiment_arm(&self, experiment: &str, variant: &str) -> IntCounter {
        self.experiment_requests
            .with_label_values(&[experiment, variant])
    }

    /// The cache's outcome counters of one model, resolved once per registry.
    pub fn cache_counters(&self, model: &str) -> crate::cache::CacheCounters {
        let outcome = |o: &str| self.cache_requests.with_label_values(&[model, o]);
        crate::cache::CacheCounters {
            hit: outcome("hit"),
            miss: outcome("miss"),
            bypass: outcome("bypass"),
        }
    }

    /// A batch's request is done, with this status.
    pub fn batch_done(&self, status: u16) {
        self.batch_done
            .with_label_values(&[STATUS_CLASSES[status_class(status)]])
            .inc();
    }
}

/// The families, registered on first use; `None` (logged once) if registering failed.
pub fn families() -> Option<&'static Families> {
    static FAMILIES: OnceLock<Option<Families>> = OnceLock::new();
    FAMILIES
        .get_or_init(|| {
            Families::new()
                .map_err(|e| log::error!("metrics: cannot register the gateway's series: {e}"))
                .ok()
        })
        .as_ref()
}

/// What a request asked of its model, the `gen_ai_operation_name` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Chat,
    Embeddings,
    CountTokens,
}

impl OperationKind {
    const COUNT: usize = 3;

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            OperationKind::Chat => "chat",
            OperationKind::Embeddings => "embeddings",
            OperationKind::CountTokens => "count_tokens",
        }
    }

    pub fn of(operation: crate::plan::Operation) -> OperationKind {
        match operation {
            crate::plan::Operation::Chat => OperationKind::Chat,
            crate::plan::Operation::Embed { .. } => OperationKind::Embeddings,
            crate::plan::Operation::CountTokens => OperationKind::CountTokens,
        }
    }
}

/// `status_class` label values, by [`status_class`].
const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "none"];

/// The `status_class` index of a status written to the client (0: none was).
fn status_class(status: u16) -> usize {
    match status {
        100..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        500..=599 => 3,
        _ => 4,
    }
}

/// What became of one upstream attempt (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 1xx-3xx.
    Ok,
    /// 4xx other than 429.
    ClientError,
    RateLimited,
    /// 5xx.
    ServerError,
    /// Refused, unreachable, TLS failure.
    ConnectError,
    /// Connect or response timeout.
    Timeout,
    /// The connection broke before the answer's header.
    Error,
}

impl AttemptOutcome {
    const COUNT: usize = 7;

    fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::ClientError => "client_error",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::ServerError => "server_error",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Error => "error",
        }
    }

    pub fn of_status(status: u16) -> AttemptOutcome {
        match status {
            429 => AttemptOutcome::RateLimited,
            400..=499 => AttemptOutcome::ClientError,
            500.. => AttemptOutcome::ServerError,
            _ => AttemptOutcome::Ok,
        }
    }
}

/// The series of one gen-AI operation on one model.
struct OperationSeries {
    duration: Histogram,
    ttft: Histogram,
    /// input, output, cached_input, reasoning.
    tokens: [Histogram; 4],
}

const TOKEN_TYPES: [&str; 4] = ["input", "output", "cached_input", "reasoning"];

/// The series of one configured model (or of [`UNKNOWN`]), label values fixed once.
pub struct ModelMetrics {
    families: &'static Families,
    model: String,
    provider: String,
    /// Gateway key names, by their index in the registry.
    key_names: Arc<[String]>,
    /// Request counts by status class, per gateway key (the last: no key).
    by_key: Box<[OnceLock<[IntCounter; 5]>]>,
    operations: [OnceLock<OperationSeries>; OperationKind::COUNT],
    overhead: Histogram,
    attempts: [OnceLock<IntCounter>; AttemptOutcome::COUNT],
    retries: OnceLock<IntCounter>,
    /// lost, won.
    fallbacks: [OnceLock<IntCounter>; 2],
    hedges: [OnceLock<IntCounter>; 2],
}

impl ModelMetrics {
    pub fn new(
        families: &'static Families,
        model: &str,
        provider: &str,
        key_names: Arc<[String]>,
    ) -> ModelMetrics {
        ModelMetrics {
            families,
            model: model.to_string(),
            provider: provider.to_string(),
            by_key: (0..=key_names.len()).map(|_| OnceLock::new()).collect(),
            key_names,
            operations: Default::default(),
            overhead: families.overhead.with_label_values(&[model, provider]),
            attempts: Default::default(),
            retries: OnceLock::new(),
            fallbacks: Default::default(),
            hedges: Default::default(),
        }
    }

    fn operation(&self, kind: OperationKind) -> &OperationSeries {
        self.operations[kind.index()].get_or_init(|| {
            let labels = [kind.as_str(), &self.provider, &self.model];
            let f = self.families;
            OperationSeries {
                duration: f.duration.with_label_values(&labels),
                ttft: f.ttft.with_label_values(&labels),
                tokens: TOKEN_TYPES.map(|t| {
                    f.tokens
                        .with_label_values(&[labels[0], labels[1], labels[2], t])
                }),
            }
        })
    }

    /// Counts a client request: `key` is the gateway key's index (`None`: no key).
    pub fn request(&self, key: Option<usize>, status: u16) {
        let slot = key
            .filter(|k| *k < self.key_names.len())
            .unwrap_or(self.key_names.len());
        let counters = self.by_key[slot].get_or_init(|| {
            let key = self.key_names.get(slot).map_or("", String::as_str);
            STATUS_CLASSES.map(|class| {
                self.families.requests.with_label_values(&[
                    self.model.as_str(),
                    &self.provider,
                    key,
                    class,
                ])
            })
        });
        counters[status_class(status)].inc();
    }

    pub fn duration(&self, kind: OperationKind, d: Duration) {
        self.operation(kind).duration.observe(d.as_secs_f64());
    }

    pub fn time_to_first_token(&self, kind: OperationKind, d: Duration) {
        self.operation(kind).ttft.observe(d.as_secs_f64());
    }

    pub fn tokens(&self, kind: OperationKind, usage: crate::limits::usage::TokenUsage) {
        let series = &self.operation(kind).tokens;
        series[0].observe(usage.input as f64);
        series[1].observe(usage.output as f64);
        if usage.cached_input > 0 {
            series[2].observe(usage.cached_input as f64);
        }
        if usage.reasoning > 0 {
            series[3].observe(usage.reasoning as f64);
        }
    }

    pub fn overhead(&self, d: Duration) {
        self.overhead.observe(d.as_secs_f64());
    }

    pub fn attempt(&self, outcome: AttemptOutcome) {
        self.attempts[outcome as usize]
            .get_or_init(|| {
                self.families.attempts.with_label_values(&[
                    self.model.as_str(),
                    &self.provider,
                    outcome.as_str(),
                ])
            })
            .inc();
    }

    pub fn retry(&self) {
        self.retries
            .get_or_init(|| {
                self.families
                    .retries
                    .with_label_values(&[self.model.as_str(), &self.provider])
            })
            .inc();
    }

    /// `started` fallback (or hedged) legs, of which `won` served the answer.
    pub fn legs(&self, hedged: bool, started: u32, won: bool) {
        if started == 0 {
            return;
        }
        let (cells, vec) = if hedged {
            (&self.hedges, &self.families.hedges)
        } else {
            (&self.fallbacks, &self.families.fallbacks)
        };
        let counter = |i: usize| {
            cells[i]
                .get_or_init(|| vec.with_label_values(&[self.model.as_str(), ["lost", "won"][i]]))
        };
        let won = u32::from(won).min(started);
        if won > 0 {
            counter(1).inc_by(won.into());
        }
        if started > won {
            counter(0).inc_by((started - won).into());
        }
    }
}

/// A request refused by a gateway rate limit of `scope` (`key`, `model`, `provider`) `name`.
/// Resolved once per limit, when its limits are built.
pub fn rate_limit_counter(scope: &str, name: &str) -> Option<IntCounter> {
    families().map(|f| f.rate_limited.with_label_values(&[scope, name]))
}

/// Counts one in a gauge while held.
pub struct InFlight(&'static IntGauge);

impl InFlight {
    pub fn start(gauge: &'static IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Sets the per-instance gauges (health and circuit state) from the registry: called by
/// `/metrics` before it gathers, so they are read only when someone looks.
pub fn refresh_instances(registry: &Registry) {
    let Some(f) = families() else { return };
    // Instances gone since the last scrape must not linger.
    f.instance_up.reset();
    f.circuit_state.reset();
    let now = Instant::now();
    for provider in &registry.providers {
        let backends = provider.upstreams.backends();
        for backend in backends.get_backend().iter() {
            let Some(addr) = crate::upstream::select::inet(&backend.addr) else {
                continue;
            };
            let instance = addr.to_string();
            let labels = [provider.name.as_str(), instance.as_str()];
            f.instance_up
                .with_label_values(&labels)
                .set(i64::from(backends.ready(backend)));
            let state = match provider.breakers.state(addr, now) {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            f.circuit_state.with_label_values(&labels).set(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_and_series_count() {
        let f = families().expect("families register");
        let keys: Arc<[String]> = vec!["team".to_string()].into();
        let m = ModelMetrics::new(f, "unit-model", "unit-provider", keys);
        m.request(Some(0), 200);
        m.request(Some(0), 503);
        m.request(None, 0);
        m.request(Some(7), 404); // an index past the keys counts as no key
        let get = |key: &str, class: &str| {
            f.requests
                .with_label_values(&["unit-model", "unit-provider", key, class])
                .get()
        };
        assert_eq!(get("team", "2xx"), 1);
        assert_eq!(get("team", "5xx"), 1);
        assert_eq!(get("", "none"), 1);
        assert_eq!(get("", "4xx"), 1);
        m.legs(true, 2, true);
        m.legs(false, 1, false);
        assert_eq!(f.hedges.with_label_values(&["unit-model", "won"]).get(), 1);
        assert_eq!(f.hedges.with_label_values(&["unit-model", "lost"]).get(), 1);
        assert_eq!(
            f.fallbacks.with_label_values(&["unit-model", "lost"]).get(),
            1
        );
    }

    #[test]
    fn attempt_outcomes_by_status() {
        assert_eq!(AttemptOutcome::of_status(200), AttemptOutcome::Ok);
        assert_eq!(AttemptOutcome::of_status(429), AttemptOutcome::RateLimited);
        assert_eq!(AttemptOutcome::of_status(404), AttemptOutcome::ClientError);
        assert_eq!(AttemptOutcome::of_status(529), AttemptOutcome::ServerError);
    }
}
