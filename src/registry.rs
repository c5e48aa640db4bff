//! The running gateway's view of its configuration: models and providers with their load
//! balancers. Held behind an `ArcSwap` so a reload can replace it while requests in flight keep
//! the one they started with.
//!
//! A reload builds the next registry from the previous one ([`Registry::rebuild`]): what did not
//! change is carried over as the same shared object, so it keeps its state: a provider's pool
//! (load balancer with its health, when its endpoints and health check are unchanged), its
//! circuit breakers and load counts (by instance address, always), its credentials (when its key
//! settings are unchanged), and every rate-limit scope whose limits are unchanged.

use crate::access::{GatewayKey, GatewayKeys};
use crate::config::{
    EdgeSettings, FallbackCondition, FanoutSettings, HealthCheckConfig, HedgeConfig, InstanceUrl,
    LimitStoreSettings, ProviderSettings, Settings,
};
use crate::experiments::Experiment;
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
    /// `name` as the `x-dragoman-provider` value, made once (`None`: not a valid header value).
    pub name_header: Option<http::HeaderValue>,
    pub kind: ProviderKind,
    /// What the provider speaks: paths, translators, version headers.
    pub dialect: &'static dyn Dialect,
    /// The keys attempts send: rotated, set aside when refused, renewed in the background.
    pub credentials: Arc<Credentials>,
    pub auth: AuthPlacement,
    /// Sent upstream on every request: the dialect's version headers, then the configured ones.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// The endpoints `upstreams` resolves, and its active health check: what a reload compares
    /// to keep the pool.
    pub endpoints: Vec<Arc<InstanceUrl>>,
    pub health_check: Option<HealthCheckConfig>,
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
    /// Whether the client's address goes upstream in `x-forwarded-for`.
    pub forward_client_address: bool,
}

pub struct Model {
    pub name: String,
    /// `name` as the `x-dragoman-model` value, made once (`None`: not a valid header value).
    pub name_header: Option<http::HeaderValue>,
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
    /// Its Prometheus series, resolved once; `None` with `metrics: false`.
    pub metrics: Option<Arc<crate::observe::metrics::ModelMetrics>>,
    /// Its answers are cached (`cache: {ttl}`).
    pub cache: Option<crate::cache::ModelCache>,
}

pub struct Registry {
    pub models: HashMap<String, Arc<Model>>,
    /// Model names served by one of several models, by user.
    pub experiments: HashMap<String, Arc<Experiment>>,
    /// `GET /v1/models`, rendered once.
    pub model_list: Bytes,
    /// Gateway keys; empty when anyone who reaches the listener may call.
    pub keys: GatewayKeys,
    pub providers: Vec<Arc<Provider>>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Where the rate-limit buckets live.
    pub limiter: Arc<Limiter>,
    /// What `limiter` was built from.
    pub limit_store: LimitStoreSettings,
    /// Whether any key, model or provider has limits (if not, requests skip admission).
    pub has_limits: bool,
    /// Client-side deadlines and limits.
    pub edge: EdgeSettings,
    /// Compare and batch bounds.
    pub fanout: FanoutSettings,
    /// Batched requests running now, over all batches (`batch.global_concurrency`).
    pub batch_slots: Arc<tokio::sync::Semaphore>,
    /// The response cache (used by the models that opt in).
    pub cache: Arc<crate::cache::ResponseCache>,
    /// Metrics on or off, and the series of requests for no configured model.
    pub observe: crate::observe::RegistryObserve,
}

impl Registry {
    /// Builds the registry. Load balancers start empty; [`Registry::prepare`] fills them.
    pub fn build(settings: &Settings) -> Registry {
        Self::rebuild(None, settings)
    }

    /// Builds the registry for `settings`, keeping from `old` what did not change (see the
    /// module's documentation). New load balancers start empty and new key commands have not
    /// run: [`Registry::prepare`] does both before the registry takes traffic.
    pub fn rebuild(old: Option<&Registry>, settings: &Settings) -> Registry {
        let providers: Vec<(Arc<Provider>, &ProviderSettings)> = settings
            .providers
            .iter()
            .map(|p| {
                let previous = old.and_then(|o| o.provider(&p.name));
                (Arc::new(build_provider(p, previous)), p)
            })
            .collect();
        let mut models = HashMap::new();
        let mut listed = Vec::new();
        let observe = crate::observe::RegistryObserve::new(settings);
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
                    name_header: http::HeaderValue::from_str(&m.name).ok(),
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
                    limits: ScopeLimits::reuse_or_new(
                        old.and_then(|o| o.models.get(&m.name))
                            .and_then(|m| m.limits.as_ref()),
                        ScopeKind::Model,
                        &m.name,
                        m.limits,
                    ),
                    metrics: observe.model(&m.name, &provider.name),
                    cache: m.cache_ttl.map(|ttl| crate::cache::ModelCache {
                        ttl,
                        counters: observe.cache_counters(&m.name),
                    }),
                }),
            );
        }
        let mut experiments = HashMap::new();
        for e in &settings.experiments {
            listed.push(serde_json::json!({
                "id": e.name,
                "object": "model",
                "created": 0,
                "owned_by": "dragoman",
            }));
            let counter = |variant: &str| observe.experiment_arm(&e.name, variant);
            experiments.insert(e.name.clone(), Arc::new(Experiment::new(e, counter)));
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
                .with_limits(ScopeLimits::reuse_or_new(
                    old.and_then(|o| o.keys.iter().find(|old| old.name == k.name))
                        .and_then(|k| k.limits.as_ref()),
                    ScopeKind::Key,
                    &k.name,
                    k.limits,
                ))
            })
            .collect();
        let keys = GatewayKeys::new(keys);
        let model_list = render(listed.iter().collect());
        let limiter = match old {
            Some(old) if old.limit_store == settings.limit_store => old.limiter.clone(),
            _ => Arc::new(Limiter::new(&settings.limit_store).unwrap_or_else(|e| {
                // Validation opened the same URL: this is not expected.
                log::error!("limits.store: {e}; limiting in this process only");
                Limiter::local()
            })),
        };
        Registry {
            models,
            experiments,
            model_list,
            keys,
            providers: providers.into_iter().map(|(p, _)| p).collect(),
            max_request_bytes: settings.max_request_bytes,
            max_response_bytes: settings.max_response_bytes,
            has_limits: settings.keys.iter().any(|k| !k.limits.is_empty())
                || settings.models.iter().any(|m| !m.limits.is_empty())
                || settings.providers.iter().any(|p| !p.limits.is_empty()),
            limiter: limiter.clone(),
            limit_store: settings.limit_store.clone(),
            edge: settings.edge,
            fanout: settings.fanout,
            // Batches running across a reload share one bound, unless the bound changed.
            batch_slots: match old {
                Some(old)
                    if old.fanout.batch_global_concurrency
                        == settings.fanout.batch_global_concurrency =>
                {
                    old.batch_slots.clone()
                }
                _ => Arc::new(tokio::sync::Semaphore::new(
                    settings.fanout.batch_global_concurrency,
                )),
            },
            // Answers stay cached across a reload, unless the cache's bounds changed.
            cache: match old {
                Some(old)
                    if old.cache.settings == settings.cache
                        && Arc::ptr_eq(&old.limiter, &limiter) =>
                {
                    old.cache.clone()
                }
                _ => Arc::new(crate::cache::ResponseCache::new(
                    settings.cache,
                    observe.cache_bytes(),
                    (settings.cache.store == crate::config::CacheStore::Redis)
                        .then(|| limiter.clone()),
                )),
            },
            observe,
        }
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Makes what is new since `old` ready for traffic (at start, `old` is `None`): runs the key
    /// commands of new credentials (the first failure is returned, naming its config key) and
    /// resolves the endpoints of new pools. Never on the request path.
    pub async fn prepare(&self, old: Option<&Registry>) -> Result<(), String> {
        let kept = |p: &Provider| {
            let in_old = |f: &dyn Fn(&Provider) -> bool| {
                old.is_some_and(|o| o.providers.iter().any(|q| f(q)))
            };
            (
                in_old(&|q| Arc::ptr_eq(&q.credentials, &p.credentials)),
                in_old(&|q| Arc::ptr_eq(&q.upstreams, &p.upstreams)),
            )
        };
        for p in &self.providers {
            if !kept(p).0 {
                p.credentials.load().await?;
            }
        }
        for p in &self.providers {
            if !kept(p).1 {
                if let Err(e) = p.upstreams.update().await {
                    log::warn!("provider {}: {e}", p.name);
                }
            }
        }
        Ok(())
    }
}

fn build_provider(p: &ProviderSettings, old: Option<&Arc<Provider>>) -> Provider {
    let endpoints: Vec<Arc<InstanceUrl>> = p.endpoints.iter().cloned().map(Arc::new).collect();
    let endpoint_count = endpoints.len();
    let first_host = endpoints.first().map(|e| (e.host.clone(), e.tls));
    // The same endpoints under the same health check: the same pool, with its health.
    let same_pool = old.filter(|o| {
        o.health_check == p.health_check
            && o.endpoints.len() == endpoints.len()
            && o.endpoints.iter().zip(&endpoints).all(|(a, b)| a == b)
    });
    let upstreams = match same_pool {
        Some(o) => o.upstreams.clone(),
        None => {
            let backends = Backends::new(Box::new(EndpointDiscovery::new(endpoints.clone())));
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
            Arc::new(lb)
        }
    };
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
    let credentials = match old {
        Some(o)
            if o.credentials.same_config(
                &p.name,
                &p.keys,
                &p.auth,
                p.key_cooldown,
                p.key_file_poll,
            ) =>
        {
            o.credentials.clone()
        }
        _ => Arc::new(Credentials::new(
            &p.name,
            &p.keys,
            p.auth.clone(),
            p.key_cooldown,
            p.key_file_poll,
        )),
    };
    Provider {
        name: p.name.clone(),
        name_header: http::HeaderValue::from_str(&p.name).ok(),
        kind: p.kind,
        dialect,
        credentials,
        auth: p.auth.clone(),
        headers,
        upstreams,
        endpoints,
        health_check: p.health_check.clone(),
        endpoint_count,
        max_attempts: p.max_attempts,
        retry_backoff: p.retry_backoff,
        // Keyed by instance address: a pool rebuilt for new weights keeps its instances' circuits.
        breakers: match old {
            Some(o) => o.breakers.carry_over(breaker_config),
            None => Breakers::new(breaker_config),
        },
        balance: p.balance,
        load: old.map_or_else(Arc::default, |o| o.load.clone()),
        limits: ScopeLimits::reuse_or_new(
            old.and_then(|o| o.limits.as_ref()),
            ScopeKind::Provider,
            &p.name,
            p.limits,
        ),
        forward_headers: p.forward_headers.clone(),
        forward_client_address: p.forward_client_address,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Settings {
        Settings::from_yaml(yaml, &|_| None).expect("valid")
    }

    const BASE: &str = r#"
providers:
  a: { kind: openai, endpoints: ["http://127.0.0.1:1"], api_key: key-a, limits: { rpm: 10 } }
  b: { kind: openai, endpoints: ["http://127.0.0.1:2"], auth: none }
models:
  m: { provider: a, limits: { rpm: 5 } }
keys:
  k: { key: client-key, limits: { rpm: 7 } }
"#;

    #[test]
    fn a_rebuild_keeps_what_did_not_change() {
        let old = Registry::build(&settings(BASE));
        // b's endpoint moves; a's timeout and its model's limits change.
        let changed = BASE
            .replace("127.0.0.1:2", "127.0.0.1:3")
            .replace(
                "limits: { rpm: 10 } }",
                "limits: { rpm: 10 }, timeout: 9s }",
            )
            .replace("limits: { rpm: 5 }", "limits: { rpm: 6 }");
        let new = Registry::rebuild(Some(&old), &settings(&changed));
        let (oa, na) = (old.provider("a").unwrap(), new.provider("a").unwrap());
        assert!(
            Arc::ptr_eq(&oa.upstreams, &na.upstreams),
            "same endpoints: same pool"
        );
        assert!(Arc::ptr_eq(&oa.credentials, &na.credentials));
        assert!(Arc::ptr_eq(&oa.load, &na.load));
        assert!(Arc::ptr_eq(
            oa.limits.as_ref().unwrap(),
            na.limits.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&old.limiter, &new.limiter));
        let key_limits = |r: &Registry| r.keys[0].limits.clone().unwrap();
        assert!(Arc::ptr_eq(&key_limits(&old), &key_limits(&new)));
        // Changed limits are new buckets.
        let model_limits = |r: &Registry| r.models["m"].limits.clone().unwrap();
        assert!(!Arc::ptr_eq(&model_limits(&old), &model_limits(&new)));
        // A moved endpoint is a new pool; its breakers still carry over by address.
        let (ob, nb) = (old.provider("b").unwrap(), new.provider("b").unwrap());
        assert!(!Arc::ptr_eq(&ob.upstreams, &nb.upstreams));
        let addr = "127.0.0.1:2".parse().unwrap();
        let now = std::time::Instant::now();
        for _ in 0..5 {
            ob.breakers.on_failure(
                addr,
                crate::upstream::breaker::FailureKind::Connect,
                None,
                now,
            );
        }
        assert_eq!(
            nb.breakers.state(addr, now),
            crate::upstream::breaker::CircuitState::Open
        );
    }

    #[test]
    fn a_changed_key_is_new_credentials() {
        let old = Registry::build(&settings(BASE));
        let new = Registry::rebuild(Some(&old), &settings(&BASE.replace("key-a", "key-a2")));
        let (oa, na) = (old.provider("a").unwrap(), new.provider("a").unwrap());
        assert!(!Arc::ptr_eq(&oa.credentials, &na.credentials));
        assert!(Arc::ptr_eq(&oa.upstreams, &na.upstreams));
    }
}
