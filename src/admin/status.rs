//! What the admin endpoints report of the running registry: readiness, each instance's health,
//! circuit and load, and the status page's data.

use super::reload::Reloader;
use crate::config::InstanceUrl;
use crate::registry::{Provider, Registry};
use crate::upstream::breaker::{CircuitState, FailureKind};
use crate::upstream::select::inet;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// One instance of a provider, as it stands now.
struct Instance {
    address: std::net::SocketAddr,
    endpoint: Option<Arc<InstanceUrl>>,
    weight: usize,
    /// Active health checks say it may take traffic.
    healthy: bool,
    breaker: crate::upstream::breaker::BreakerSnapshot,
    load: crate::upstream::balance::LoadSnapshot,
}

impl Instance {
    /// Whether an attempt could go there: healthy, and its circuit not open (a half-open one
    /// lets its probe through).
    fn usable(&self) -> bool {
        self.healthy && self.breaker.state != CircuitState::Open
    }

    fn to_json(&self) -> Value {
        let failures: u64 = self.breaker.failures.iter().sum();
        let by_kind: serde_json::Map<String, Value> = FailureKind::ALL
            .iter()
            .zip(self.breaker.failures)
            .map(|(k, n)| (failure_name(*k).to_string(), json!(n)))
            .collect();
        let recent_error_rate = if self.breaker.window_attempts == 0 {
            0.0
        } else {
            self.breaker.window_failures as f64 / self.breaker.window_attempts as f64
        };
        json!({
            "address": self.address.to_string(),
            "endpoint": self.endpoint.as_deref().map(endpoint_url),
            "weight": self.weight,
            "healthy": self.healthy,
            "circuit": self.breaker.state.as_str(),
            "usable": self.usable(),
            "in_flight": self.load.inflight,
            "latency_ms": self.load.latency_ms.map(|ms| (ms * 10.0).round() / 10.0),
            "attempts": self.load.attempts,
            "failures": failures,
            "failures_by_kind": by_kind,
            "consecutive_failures": self.breaker.consecutive,
            "window_attempts": self.breaker.window_attempts,
            "window_failures": self.breaker.window_failures,
            "recent_error_rate": recent_error_rate,
        })
    }
}

fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Connect => "connect",
        FailureKind::Timeout => "timeout",
        FailureKind::Status5xx => "status_5xx",
        FailureKind::Status429 => "status_429",
    }
}

/// An endpoint as its base URL.
pub fn endpoint_url(e: &InstanceUrl) -> String {
    let scheme = if e.tls { "https" } else { "http" };
    format!("{scheme}://{}{}", e.authority(), e.base_path)
}

fn instances_of(provider: &Provider, now: Instant) -> Vec<Instance> {
    let backends = provider.upstreams.backends();
    backends
        .get_backend()
        .iter()
        .filter_map(|b| {
            let address = inet(&b.addr)?;
            Some(Instance {
                address,
                endpoint: b.ext.get::<Arc<InstanceUrl>>().cloned(),
                weight: b.weight,
                healthy: backends.ready(b),
                breaker: provider.breakers.snapshot(address, now),
                load: provider.load.snapshot(address),
            })
        })
        .collect()
}

/// Ready when some model is configured and every model has an instance an attempt could go to;
/// otherwise the reason.
pub fn readiness(registry: &Registry, now: Instant) -> Result<(), String> {
    if registry.models.is_empty() {
        return Err("not ready: no model configured".into());
    }
    let mut unusable: Vec<String> = registry
        .models
        .values()
        .filter(|m| !instances_of(&m.provider, now).iter().any(Instance::usable))
        .map(|m| format!("{} (provider {})", m.name, m.provider.name))
        .collect();
    if unusable.is_empty() {
        return Ok(());
    }
    unusable.sort();
    Err(format!(
        "not ready: no usable instance (none resolved, all unhealthy or all circuits open) for {}",
        unusable.join(", ")
    ))
}

/// `GET /admin/instances`: every instance of every provider, with the models it serves.
pub fn instances(registry: &Registry, now: Instant) -> Value {
    let mut out = Vec::new();
    for p in &registry.providers {
        let models = models_of(registry, p);
        for i in instances_of(p, now) {
            let mut v = i.to_json();
            v["provider"] = json!(p.name);
            v["models"] = json!(models);
            out.push(v);
        }
    }
    json!({ "instances": out })
}

fn models_of(registry: &Registry, p: &Arc<Provider>) -> Vec<String> {
    let mut models: Vec<String> = registry
        .models
        .values()
        .filter(|m| Arc::ptr_eq(&m.provider, p))
        .map(|m| m.name.clone())
        .collect();
    models.sort();
    models
}

/// `GET /admin/status`, what the status page shows and refreshes. Counters are totals since
/// each instance was first seen; the page turns their differences into rates.
pub fn status(registry: &Registry, reloader: &Reloader, now: Instant) -> Value {
    let mut providers = Vec::new();
    for p in &registry.providers {
        let list = instances_of(p, now);
        let sum = |f: &dyn Fn(&Instance) -> u64| list.iter().map(f).sum::<u64>();
        providers.push(json!({
            "name": p.name,
            "kind": p.kind.as_str(),
            "balance": p.balance.as_str(),
            "models": models_of(registry, p),
            "usable_instances": list.iter().filter(|i| i.usable()).count(),
            "in_flight": sum(&|i| u64::from(i.load.inflight)),
            "attempts": sum(&|i| i.load.attempts),
            "failures": sum(&|i| i.breaker.failures.iter().sum()),
            "instances": list.iter().map(Instance::to_json).collect::<Vec<_>>(),
        }));
    }
    let mut names: Vec<&String> = registry.models.keys().collect();
    names.sort();
    let models: Vec<Value> = names
        .into_iter()
        .filter_map(|n| registry.models.get(n))
        .map(|m| {
            let list = instances_of(&m.provider, now);
            json!({
                "name": m.name,
                "provider": m.provider.name,
                "upstream_model": m.upstream_model,
                "fallbacks": m.fallbacks,
                "instances": list.len(),
                "usable_instances": list.iter().filter(|i| i.usable()).count(),
            })
        })
        .collect();
    let ready = readiness(registry, now);
    json!({
        "generation": reloader.generation(),
        "uptime_seconds": now.saturating_duration_since(reloader.started_at).as_secs(),
        "ready": ready.is_ok(),
        "ready_reason": ready.err(),
        "last_reload": reloader.last().map(|r| r.to_json()),
        "models": models,
        "providers": providers,
    })
}
