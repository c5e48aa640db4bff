//! `GET /admin/config`: the configuration in force, as validated, with every secret replaced.
//!
//! Written field by field rather than serialised: [`crate::config::Secret`] has no `Serialize`,
//! so a credential cannot reach this output by a derive. Replaced: provider keys (literal or a
//! command's arguments; a key file shows its path), the gateway keys and their digests, the
//! values of providers' extra `headers` (they may carry credentials), the rate-limit store's URL
//! credentials and the admin token.

use super::status::endpoint_url;
use crate::config::{FallbackCondition, KeySource, LimitsConfig, Secret, Settings};
use crate::providers::AuthPlacement;
use serde_json::{json, Map, Value};
use std::time::Duration;

const REDACTED: &str = "[redacted]";

fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn limits(l: &LimitsConfig) -> Value {
    if l.is_empty() {
        return Value::Null;
    }
    json!({ "rpm": l.rpm, "tpm": l.tpm, "concurrency": l.concurrency })
}

/// A Redis URL without its user name and password.
fn redact_url(url: &Secret) -> String {
    let text = url.expose();
    let Some((scheme, rest)) = text.split_once("://") else {
        return REDACTED.into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => text.to_string(),
    }
}

fn key_source(source: &KeySource) -> Value {
    match source {
        KeySource::Literal(_) => json!({ "key": REDACTED }),
        KeySource::File { path, .. } => json!({ "file": path }),
        // Arguments may hold a secret (a client secret, a script): only the program is shown.
        KeySource::Command(c) => json!({
            "command": c.run.first(),
            "args": if c.run.len() > 1 { Value::from(REDACTED) } else { json!([]) },
            "refresh_every": duration(c.refresh_every),
            "timeout": duration(c.timeout),
        }),
    }
}

fn fallback_condition(c: FallbackCondition) -> &'static str {
    match c {
        FallbackCondition::RateLimited => "rate_limited",
        FallbackCondition::ServerError => "server_error",
        FallbackCondition::Timeout => "timeout",
        FallbackCondition::ContextLength => "context_length",
    }
}

fn auth(a: &AuthPlacement) -> Value {
    match a {
        AuthPlacement::Header { name, prefix } => json!({ "header": name, "prefix": prefix }),
        AuthPlacement::Query { name } => json!({ "query": name }),
        AuthPlacement::Body { field } => json!({ "body": field }),
        AuthPlacement::None => json!("none"),
    }
}

pub fn render(s: &Settings) -> Value {
    let listen: Vec<Value> = s
        .listen
        .iter()
        .map(|a| match s.tls.get(a) {
            Some(files) => json!({
                "address": a.to_string(),
                "tls": { "cert": files.cert.display().to_string(), "key": files.key.display().to_string() },
            }),
            None => json!(a.to_string()),
        })
        .collect();
    let mut providers = Map::new();
    for p in &s.providers {
        let headers: Map<String, Value> = p
            .headers
            .iter()
            .map(|(name, _)| (name.as_str().to_string(), json!(REDACTED)))
            .collect();
        let cb = &p.circuit_breaker;
        providers.insert(
            p.name.clone(),
            json!({
                "kind": p.kind.as_str(),
                "endpoints": p.endpoints.iter().map(|e| json!({"url": endpoint_url(e), "weight": e.weight})).collect::<Vec<_>>(),
                "keys": p.keys.iter().map(|k| {
                    let mut v = key_source(&k.source);
                    v["config_key"] = json!(k.config_key);
                    v
                }).collect::<Vec<_>>(),
                "key_cooldown": duration(p.key_cooldown),
                "key_file_poll": duration(p.key_file_poll),
                "auth": auth(&p.auth),
                "api_version": p.api_version,
                "anthropic_version": p.anthropic_version,
                "headers": headers,
                "connect_timeout": duration(p.connect_timeout),
                "timeout": duration(p.timeout),
                "stream_idle_timeout": duration(p.stream_idle_timeout),
                "max_attempts": p.max_attempts,
                "retry_backoff": duration(p.retry_backoff),
                "balance": p.balance.as_str(),
                "health_check": p.health_check.as_ref().map(|h| json!({
                    "path": h.path, "interval": duration(h.interval.0), "expect_status": h.expect_status,
                })),
                "circuit_breaker": {
                    "consecutive_failures": cb.consecutive_failures,
                    "failure_rate": cb.failure_rate,
                    "min_requests": cb.min_requests,
                    "window": cb.window.map(|d| duration(d.0)),
                    "cooldown": cb.cooldown.map(|d| duration(d.0)),
                },
                "limits": limits(&p.limits),
                "forward_headers": p.forward_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                "forward_client_address": p.forward_client_address,
            }),
        );
    }
    let mut models = Map::new();
    for m in &s.models {
        models.insert(
            m.name.clone(),
            json!({
                "provider": m.provider,
                "model": m.upstream_model,
                "default_max_tokens": m.default_max_tokens,
                "timeout": duration(m.timeout),
                "total_timeout": duration(m.total_timeout),
                "max_upstream_calls": m.max_upstream_calls,
                "connect_timeout": duration(m.connect_timeout),
                "stream_idle_timeout": duration(m.stream_idle_timeout),
                "fallbacks": m.fallbacks,
                "fallback_on": m.fallback_on.iter().map(|c| fallback_condition(*c)).collect::<Vec<_>>(),
                "hedge": m.hedge.map(|h| json!({"after": duration(h.after.0), "max": h.max})),
                "limits": limits(&m.limits),
            }),
        );
    }
    let mut keys = Map::new();
    for k in &s.keys {
        keys.insert(
            k.name.clone(),
            json!({ "key": REDACTED, "models": k.models, "limits": limits(&k.limits) }),
        );
    }
    let e = &s.edge;
    json!({
        "listen": listen,
        "admin_listen": s.admin_listen.map(|a| a.to_string()),
        "admin_token": s.admin_token.as_ref().map(|_| REDACTED),
        "max_request_bytes": s.max_request_bytes,
        "max_response_bytes": s.max_response_bytes,
        "edge": {
            "header_timeout": duration(e.header_timeout),
            "body_timeout": duration(e.body_timeout),
            "idle_timeout": duration(e.idle_timeout),
            "write_timeout": duration(e.write_timeout),
            "max_stream_duration": duration(e.max_stream_duration),
            "max_connections": e.max_connections,
            "max_buffered_bytes": e.max_buffered_bytes,
        },
        "limits": {
            "store": s.limit_store.redis_url.as_ref().map(redact_url),
            "store_timeout": duration(s.limit_store.store_timeout),
        },
        "providers": providers,
        "models": models,
        "experiments": s.experiments.iter().map(|x| (x.name.clone(), json!({
            "split": x.arms.iter().map(|(model, weight)| json!({"model": model, "weight": weight})).collect::<Vec<_>>(),
            "sticky_header": x.sticky_header.as_ref().map(|h| h.as_str()),
        }))).collect::<Map<String, Value>>(),
        "compare": { "max_models": s.fanout.compare_max_models },
        "batch": {
            "max_requests": s.fanout.batch_max_requests,
            "concurrency": s.fanout.batch_concurrency,
            "global_concurrency": s.fanout.batch_global_concurrency,
        },
        "keys": keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_credentials_are_replaced() {
        let url = |s: &str| redact_url(&Secret::new(s));
        assert_eq!(
            url("redis://user:hunter2@10.0.0.1:6379/0"),
            "redis://[redacted]@10.0.0.1:6379/0"
        );
        assert_eq!(url("rediss://:pw@h"), "rediss://[redacted]@h");
        assert_eq!(url("redis://h:6379"), "redis://h:6379");
        assert_eq!(url("no scheme"), "[redacted]");
    }
}
