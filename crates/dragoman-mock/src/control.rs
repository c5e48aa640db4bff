//! The HTTP control API, for the binary and benchmarks. Control requests are not recorded and take
//! no behaviour from the queue.
//!
//! - `GET /_mock/requests`: the recorded requests, `[{"method","path","headers":{name: value},
//!   "body": "<UTF-8 text>"}]` (repeated headers joined with ", ").
//! - `DELETE /_mock/requests`: forgets them.
//! - `POST /_mock/behaviour`: queues one-shot behaviours. The body is a spec or a list of specs:
//!   `{"status":503,"body":{...}}` (JSON reply; with `"content_type"` and a string body, a raw reply;
//!   `"headers":{..}` adds headers), `{"delay_ms":500}` (delay, then the spec's other fields, or a
//!   normal reply), `{"drop":true}`, `{"sse":["data: ..\n\n",..],"interval_ms":10,"hold_after":1}`,
//!   `{"sse_then_drop":[..]}`. `"times":n` queues it n times; `"default":true` sets the default
//!   behaviour instead of queuing.
//! - `DELETE /_mock/behaviour`: empties the queue and restores the default ([`Behaviour::Reply`]).
//! - `POST /_mock/release`: releases held streams.
//! - `GET /_mock/stats`: `{"requests","recorded","connections_accepted","connections_closed_early"}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use serde_json::{json, Map, Value};

use super::behaviour::{full, Behaviour};
use super::body::MockBody;
use super::server::{lock, Shared};

pub(crate) fn handle(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Response<MockBody> {
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/_mock/requests") => ok(requests_json(shared)),
        ("DELETE", "/_mock/requests") => {
            let n = {
                let mut r = lock(&shared.requests);
                let n = r.len();
                r.clear();
                n
            };
            ok(json!({"cleared": n}))
        }
        ("POST", "/_mock/behaviour") => match push_specs(shared, body) {
            Ok(n) => ok(json!({"queued": n})),
            Err(e) => reply(400, json!({"error": e})),
        },
        ("DELETE", "/_mock/behaviour") => {
            shared.clear_queue();
            shared.default.store(Arc::new(Behaviour::Reply));
            ok(json!({"cleared": true}))
        }
        ("POST", "/_mock/release") => {
            shared.release();
            ok(json!({"released": true}))
        }
        ("GET", "/_mock/stats") => ok(json!({
            "requests": shared.request_count.load(Ordering::Relaxed),
            "recorded": lock(&shared.requests).len(),
            "connections_accepted": shared.connections.load(Ordering::Relaxed),
            "connections_closed_early": shared.closed_early.load(Ordering::Relaxed),
        })),
        _ => reply(404, json!({"error": "not found"})),
    }
}

fn ok(v: Value) -> Response<MockBody> {
    reply(200, v)
}

fn reply(status: u16, v: Value) -> Response<MockBody> {
    full(status, "application/json", Bytes::from(v.to_string()), &[])
}

fn requests_json(shared: &Shared) -> Value {
    let reqs = lock(&shared.requests).clone();
    Value::Array(
        reqs.iter()
            .map(|r| {
                let mut headers = Map::new();
                for (k, v) in &r.headers {
                    match headers.get_mut(k) {
                        Some(Value::String(prev)) => {
                            prev.push_str(", ");
                            prev.push_str(v);
                        }
                        _ => {
                            headers.insert(k.clone(), Value::String(v.clone()));
                        }
                    }
                }
                json!({"method": r.method, "path": r.path, "headers": headers,
                       "body": r.body_text()})
            })
            .collect(),
    )
}

/// Parses and applies the specs in `body`; returns how many behaviours were queued.
fn push_specs(shared: &Shared, body: &[u8]) -> Result<usize, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let specs = match v {
        Value::Array(a) => a,
        v @ Value::Object(_) => vec![v],
        _ => return Err("expected a JSON object or a list of objects".to_owned()),
    };
    // Parse them all before applying any.
    let parsed = specs
        .iter()
        .map(|s| {
            let times = match s.get("times") {
                None => 1,
                Some(t) => t
                    .as_u64()
                    .filter(|t| *t <= 1_000_000)
                    .ok_or("times must be an integer up to 1000000")?
                    as usize,
            };
            let default = s.get("default").and_then(Value::as_bool) == Some(true);
            Ok((parse_spec(s)?, times, default))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut queued = 0;
    for (b, times, default) in parsed {
        if default {
            shared.default.store(Arc::new(b));
        } else {
            for _ in 0..times {
                shared.push(b.clone());
            }
            queued += times;
        }
    }
    Ok(queued)
}

/// One behaviour spec (see the module docs).
pub fn parse_spec(s: &Value) -> Result<Behaviour, String> {
    let obj = s
        .as_object()
        .ok_or("a behaviour spec must be a JSON object")?;
    let strings = |key: &str| -> Result<Option<Vec<String>>, String> {
        match obj.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| e.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| format!("{key} must be a list of strings")),
            Some(_) => Err(format!("{key} must be a list of strings")),
        }
    };
    let millis = |key: &str| -> Result<Option<Duration>, String> {
        match obj.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|ms| Some(Duration::from_millis(ms)))
                .ok_or_else(|| format!("{key} must be a non-negative integer")),
        }
    };
    let status = match obj.get("status") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (100..=999).contains(s))
                .ok_or("status must be an HTTP status code")?,
        ),
    };
    let inner = if obj.get("drop").and_then(Value::as_bool) == Some(true) {
        Behaviour::Drop
    } else if let Some(events) = strings("sse")? {
        let hold_after = match obj.get("hold_after") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or("hold_after must be an integer")? as usize),
        };
        Behaviour::Sse {
            events,
            interval: millis("interval_ms")?.unwrap_or(Duration::ZERO),
            hold_after,
        }
    } else if let Some(events) = strings("sse_then_drop")? {
        Behaviour::SseThenDrop { events }
    } else if status.is_some() || obj.contains_key("body") {
        let status = status.unwrap_or(200);
        let body = obj.get("body").cloned().unwrap_or(Value::Null);
        let content_type = obj.get("content_type").and_then(Value::as_str);
        let headers = match obj.get("headers") {
            None => Vec::new(),
            Some(Value::Object(h)) => h
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect::<Option<Vec<_>>>()
                .ok_or("header values must be strings")?,
            Some(_) => return Err("headers must be an object of strings".to_owned()),
        };
        match (content_type, body) {
            (None, body) if headers.is_empty() => Behaviour::Json { status, body },
            (ct, Value::String(text)) => Behaviour::Raw {
                status,
                content_type: ct.unwrap_or("text/plain").to_owned(),
                body: Bytes::from(text),
                headers,
            },
            (ct, body) => Behaviour::Raw {
                status,
                content_type: ct.unwrap_or("application/json").to_owned(),
                body: Bytes::from(body.to_string()),
                headers,
            },
        }
    } else {
        Behaviour::Reply
    };
    Ok(match millis("delay_ms")? {
        Some(delay) => Behaviour::Delay {
            delay,
            then: Box::new(inner),
        },
        None => inner,
    })
}
