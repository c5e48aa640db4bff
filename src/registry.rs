//! The running gateway's view of its configuration: models and providers with their load
//! balancers. Held behind an `ArcSwap` so a reload can replace it while requests in flight keep
//! the one they started with.

use crate::access::GatewayKey;
use crate::config::{
    EdgeSettings, FallbackCondition, HealthCheckConfig, HedgeConfig, InstanceUrl, ProviderSettings,
    Settings,
};
use crate::limits::{Limiter, ScopeKind, ScopeLimits};
use crate::providers::{AuthPlacement, Dialect, ProviderKind, UpstreamPaths};
use crate::upstream::balance::{BalanceMode, LoadTracker};
use crate::upstream::breaker::{BreakerConfig, Breakers};
use crate::upstream::credentials::Credentials;
use crate::upstream::discovery::EndpointDiscovery;
use bytes::Bytes;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backends, LoadBalancer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often endpoint host names are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(60);

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// What the provider speaks: paths, translators, version headers.
    pub dialect: &'static dyn Dialect,
    /// The keys attempts send: rotated, set aside when refused, renewed in the background.
    pub credentials: Arc<Credentials>,
    pub auth: AuthPlacement,
    /// Sent upstream on every request: the dialect's version headers, then the configured ones.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// Distinct endpoints.
    pub endpoint_count: usize,
    /// Attempts per request across instances, the first one included.
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// Passive health: per-instance circuit breakers shared by all worker threads.
    pub breakers: Breakers,
    pub balance: BalanceMode,
    /// Requests in flight and latency per instance, for the load-aware modes.
    pub load: Arc<LoadTracker>,
    /// This provider's rate limits, over all its models.
    pub limits: Option<Arc<ScopeLimits>>,
    /// Provider-family client headers let through (`header_policy`).
    pub forward_headers: Vec<http::HeaderName>,
}

pub struct Model {
    pub name: String,
    pub upstream_model: String,
    /// `upstream_model` encoded as a JSON string, ready to splice into a body.
    pub upstream_model_json: Bytes,
    pub provider: Arc<Provider>,
    /// The upstream paths of this model's operations.
    pub paths: UpstreamPaths,
    pub default_max_tokens: u32,
    /// Bounds one leg served by this model, from the leg's start, across its retries.
    pub timeout: Duration,
    /// Bounds a whole request to this model, its fallbacks included.
    pub total_timeout: Duration,
    /// Upstream calls a request to this model may cause, its fallbacks' included.
    pub max_upstream_calls: u32,
    pub connect_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// Fallback model names, in order.
    pub fallbacks: Vec<String>,
    pub fallback_on: Vec<FallbackCondition>,
    pub hedge: Option<HedgeConfig>,
    /// This model's rate limits, over all keys.
    pub limits: Option<Arc<ScopeLimits>>,
}

pub struct Registry {
    pub models: HashMap<String, Arc<Model>>,
    /// `GET /v1/models`, rendered once.
    pub model_list: Bytes,
    /// Gateway keys; empty when anyone who reaches the listener may call.
    pub keys: Vec<GatewayKey>,
    pub providers: Vec<Arc<Provider>>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Where the rate-limit buckets live.
    pub limiter: Arc<Limiter>,
    /// Whether any key, model or provider has limits (if not, requests skip admission).
    pub has_limits: bool,
    /// Client-side deadlines and limits.
    pub edge: EdgeSettings,
}

impl Registry {
    /// Builds the registry. Load balancers start empty; [`Registry::resolve_all`] fills them.
    pub fn build(settings: &Settings) -> Registry {
        let providers: Vec<(Arc<Provider>, &ProviderSettings)> = settings
            .providers
            .iter()
            .map(|p| (Arc::new(build_provider(p)), p))
            .collect();
        let mut models = HashMap::new();
        let mut listed = Vec::new();
        for m in &settings.models {
            let Some((provider, provider_settings)) =
                providers.iter().find(|(p, _)| p.name == m.provider)
            else {
                continue; // validation guarantees the provider exists
            };
            let upstream_model_json =
                Bytes::from(serde_json::Value::from(m.upstream_model.as_str()).to_string());
            listed.push(serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": provider.name,
            }));
            models.insert(
                m.name.clone(),
                Arc::new(Model {
                    name: m.name.clone(),
                    upstream_model: m.upstream_model.clone(),
                    upstream_model_json,
                    provider: provider.clone(),
                    paths: provider.dialect.paths(&m.upstream_model, provider_settings),
                    default_max_tokens: m.default_max_tokens,
                    timeout: m.timeout,
                    total_timeout: m.total_timeout,
                    max_upstream_calls: m.max_upstream_calls,
                    connect_timeout: m.connect_timeout,
                    stream_idle_timeout: m.stream_idle_timeout,
                    fallbacks: m.fallbacks.clone(),
                    fallback_on: m.fallback_on.clone(),
                    hedge: m.hedge,
                    limits: ScopeLimits::new(ScopeKind::Model, &m.name, m.limits),
                }),
            );
        }
        let render = |listed: Vec<&serde_json::Value>| {
            Bytes::from(serde_json::json!({ "object": "list", "data": listed }).to_string())
        };
        let keys = settings
            .keys
            .iter()
            .map(|k| {
                let visible = listed
                    .iter()
                    .filter(|m| {
                        k.models.as_ref().is_none_or(|allowed| {
                            allowed.iter().any(|a| m["id"].as_str() == Some(a))
                        })
                    })
                    .collect();
                GatewayKey::new(
                    k.name.clone(),
                    k.sha256,
                    k.models.as_deref(),
                    render(visible),
                )
                .with_limits(ScopeLimits::new(ScopeKind::Key, &k.name, k.limits))
            })
            .collect();
        let model_list = render(listed.iter().collect());
        Registry {
            models,
            model_list,
            keys,
            providers: providers.into_iter().map(|(p, _)| p).collect(),
            max_request_bytes: settings.max_request_bytes,
            max_response_bytes: settings.max_response_bytes,
            has_limits: settings.keys.iter().any(|k| !k.limits.is_empty())
                || settings.models.iter().any(|m| !m.limits.is_empty())
                || settings.providers.iter().any(|p| !p.limits.is_empty()),
            limiter: Arc::new(Limiter::new(&settings.limit_store).unwrap_or_else(|e| {
                // Validation opened the same URL: this is not expected.
                log::error!("limits.store: {e}; limiting in this process only");
                Limiter::local()
            })),
            edge: settings.edge,
        }
    }

    /// Runs every provider's key commands once (at start, before traffic); the first failure
    /// is returned, naming its config key.
    pub async fn load_credentials(&self) -> Result<(), String> {
        for p in &self.providers {
            p.credentials.load().await?;
        }
        Ok(())
    }

    /// Resolves every provider's endpoints once (at start, before traffic).
    pub async fn resolve_all(&self) {
        for p in &self.providers {
            if let Err(e) = p.upstreams.update().await {
                log::warn!("provider {}: {e}", p.name);
            }
        }
    }
}

fn build_provider(p: &ProviderSettings) -> Provider {
    let endpoints: Vec<Arc<InstanceUrl>> = p.endpoints.iter().cloned().map(Arc::new).collect();
    let endpoint_count = endpoints.len();
    let first_host = endpoints.first().map(|e| (e.host.clone(), e.tls));
    let backends = Backends::new(Box::new(EndpointDiscovery::new(endpoints)));
    let mut lb = LoadBalancer::from_backends(backends);
    lb.update_frequency = Some(DNS_REFRESH);
    if let (Some(hc), Some((host, tls))) = (&p.health_check, first_host) {
        lb.set_health_check(Box::new(crate::upstream::report::Reported {
            check: health_check(hc, &host, tls),
            provider: p.name.clone(),
        }));
        lb.health_check_frequency = Some(hc.interval.0);
        lb.parallel_health_check = true;
    }
    let defaults = BreakerConfig::default();
    let o = &p.circuit_breaker;
    let breaker_config = BreakerConfig {
        consecutive_failures: o
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        failure_rate: o.failure_rate.unwrap_or(defaults.failure_rate),
        min_requests: o.min_requests.unwrap_or(defaults.min_requests),
        window: o.window.map_or(defaults.window, |d| d.0),
        cooldown: o.cooldown.map_or(defaults.cooldown, |d| d.0),
        // A backstop only (abandoned probes free their slot at once): never below a cooldown.
        probe_timeout: o
            .cooldown
            .map_or(defaults.probe_timeout, |d| d.0.max(defaults.probe_timeout)),
        ..defaults
    };
    let dialect = p.kind.dialect();
    let mut headers = dialect.fixed_headers(p);
    headers.extend(p.headers.iter().cloned());
    Provider {
        name: p.name.clone(),
        kind: p.kind,
        dialect,
        credentials: Arc::new(Credentials::new(
            &p.name,
            &p.keys,
            p.auth.clone(),
            p.key_cooldown,
            p.key_file_poll,
        )),
        auth: p.auth.clone(),
        headers,
        upstreams: Arc::new(lb),
        endpoint_count,
        max_attempts: p.max_attempts,
        retry_backoff: p.retry_backoff,
        breakers: Breakers::new(breaker_config),
        balance: p.balance,
        load: Arc::default(),
        limits: ScopeLimits::new(ScopeKind::Provider, &p.name, p.limits),
        forward_headers: p.forward_headers.clone(),
    }
}

/// TCP connect checks, or HTTP GETs of `path` expecting `expect_status`. HTTP checks send the
/// first endpoint's host name as `Host` and SNI.
fn health_check(
    config: &HealthCheckConfig,
    host: &str,
    tls: bool,
) -> Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync> {
    use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
    let Some(path) = &config.path else {
        return TcpHealthCheck::new();
    };
    let mut hc = HttpHealthCheck::new(host, tls);
    if let Ok(uri) = http::Uri::try_from(path.as_str()) {
        hc.req.set_uri(uri);
    }
    let expected = config.expect_status;
    hc.validator = Some(Box::new(move |resp: &pingora_http::ResponseHeader| {
        if resp.status.as_u16() == expected {
            Ok(())
        } else {
            pingora_error::Error::e_explain(
                pingora_error::ErrorType::Custom("health check failed"),
                format!("status {} instead of {expected}", resp.status),
            )
        }
    }));
    Box::new(hc)
}
