//! `POST /v1/compare` and `POST /v1/batch`: several chat completions in one request, each answered
//! on its own, reported with its status, latency and usage.
//!
//! - Compare: an OpenAI chat completion request with `models: [...]` in place of `model`. Every
//!   model gets the same request (translated for its own provider), all at once.
//!   `{"object": "compare", "results": [{"model", "status", "latency_ms", "usage", "response"}
//!   or {"model", "status", "latency_ms", "error"}, ...]}`, in the order of `models`; streamed,
//!   every model's events in one stream, each tagged with its model ([`StreamEvent`]).
//! - Batch: `{"requests": [chat completion request, ...]}`.
//!   `{"object": "batch", "results": [{"index", "model", "status", "latency_ms", "response" or
//!   "error"}, ...]}`, in input order.

use crate::api::openai::chat::RawChatRequest;
use crate::error::GatewayError;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::time::Duration;

/// A compare request: each model's own request body, in the order of `models`.
pub struct Compare {
    pub stream: bool,
    pub requests: Vec<(String, Vec<u8>)>,
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::bad_request(message)
}

/// Reads a compare request: a chat request with `models` (1 to `max_models` distinct names)
/// instead of `model`.
pub fn read_compare(body: &[u8], max_models: usize) -> Result<Compare, GatewayError> {
    let raw = RawChatRequest::parse(body)?;
    if raw.member("model").is_some() {
        return Err(invalid(
            "A compare request names its models in `models` (a list), not `model`",
        ));
    }
    let models: Vec<String> = raw
        .member("models")
        .ok_or_else(|| invalid("`models` is required: the list of models to compare"))
        .and_then(|v| {
            serde_json::from_str(v.get())
                .map_err(|_| invalid("`models` must be a list of model names"))
        })?;
    if models.is_empty() || models.len() > max_models {
        return Err(invalid(format!(
            "`models` must list from 1 to {max_models} models"
        )));
    }
    if let Some(twice) = models
        .iter()
        .enumerate()
        .find_map(|(i, m)| models[..i].contains(m).then_some(m))
    {
        return Err(invalid(format!("`models` lists `{twice}` twice")));
    }
    let stream = raw
        .member("stream")
        .is_some_and(|v| v.get().trim() == "true");
    let requests = models
        .into_iter()
        .map(|m| {
            let body = raw.for_model(&m, &["models"]);
            (m, body)
        })
        .collect();
    Ok(Compare { stream, requests })
}

/// Reads a batch: `{"requests": [...]}` with 1 to `max_requests` requests, each kept raw.
pub fn read_batch(body: &[u8], max_requests: usize) -> Result<Vec<&RawValue>, GatewayError> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        requests: Vec<&'a RawValue>,
    }
    let text = std::str::from_utf8(body).map_err(|_| invalid("The body is not UTF-8"))?;
    let batch: Batch = serde_json::from_str(text).map_err(|_| {
        invalid("A batch is a JSON object whose `requests` is a list of chat completion requests")
    })?;
    if batch.requests.is_empty() || batch.requests.len() > max_requests {
        return Err(invalid(format!(
            "`requests` must hold from 1 to {max_requests} requests"
        )));
    }
    Ok(batch.requests)
}

/// One request's outcome.
pub struct ItemResult {
    /// The model the request named (`None` when it could not be read).
    pub model: Option<String>,
    pub latency: Duration,
    /// The answer (its status and body, in OpenAI's format), or the gateway's error.
    pub outcome: Result<(u16, Bytes), GatewayError>,
}

impl ItemResult {
    fn to_json(&self) -> Value {
        let mut out = json!({
            "model": self.model,
            "latency_ms": (self.latency.as_secs_f64() * 1e6).round() / 1e3,
        });
        match &self.outcome {
            Ok((status, body)) => {
                out["status"] = json!(status);
                let answer: Value = serde_json::from_slice(body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()));
                if (200..300).contains(status) {
                    out["usage"] = answer.get("usage").cloned().unwrap_or(Value::Null);
                    out["response"] = answer;
                } else {
                    // An upstream's error answer: its `error` object, as OpenAI clients read it.
                    out["error"] = match answer {
                        Value::Object(mut o) if o.contains_key("error") => {
                            o.remove("error").unwrap_or(Value::Null)
                        }
                        other => json!({"message": other, "type": "upstream_error"}),
                    };
                }
            }
            Err(e) => {
                out["status"] = json!(e.status);
                out["error"] = serde_json::from_slice::<Value>(&e.to_openai_body())
                    .ok()
                    .and_then(|mut v| v.get_mut("error").map(Value::take))
                    .unwrap_or(Value::Null);
            }
        }
        out
    }
}

/// The compare answer, results in the order of `models`.
pub fn render_compare(results: &[ItemResult]) -> Bytes {
    let results: Vec<Value> = results.iter().map(ItemResult::to_json).collect();
    Bytes::from(json!({"object": "compare", "results": results}).to_string())
}

/// The batch answer, results in input order.
pub fn render_batch(results: &[ItemResult]) -> Bytes {
    let results: Vec<Value> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = r.to_json();
            v["index"] = json!(i);
            v
        })
        .collect();
    Bytes::from(json!({"object": "batch", "results": results}).to_string())
}

/// One event of a streamed compare, tagged with its model:
/// `{"model": "a", "chunk": {...}}` (a chunk of its stream, as the model's stream gave it),
/// `{"model": "a", "done": true}` (its stream ended), or `{"model": "b", "status": 502,
/// "error": {...}}` (it failed, before or during its stream).
pub enum StreamEvent<'m> {
    Chunk(&'m str, String),
    Done(&'m str),
    /// An upstream's error answer: its status and body.
    UpstreamError(&'m str, u16, Vec<u8>),
    /// The gateway's error for the model.
    Failed(&'m str, u16, Value),
}

impl<'m> StreamEvent<'m> {
    pub fn failed(model: &'m str, e: &GatewayError) -> Self {
        let error = serde_json::from_slice::<Value>(&e.to_openai_body())
            .ok()
            .and_then(|mut v| v.get_mut("error").map(Value::take))
            .unwrap_or(Value::Null);
        StreamEvent::Failed(model, e.status, error)
    }

    fn to_json(&self) -> Value {
        match self {
            StreamEvent::Chunk(model, data) => {
                let chunk: Value =
                    serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.clone()));
                json!({"model": model, "chunk": chunk})
            }
            StreamEvent::Done(model) => json!({"model": model, "done": true}),
            StreamEvent::UpstreamError(model, status, body) => {
                let answer: Value = serde_json::from_slice(body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()));
                let error = match answer {
                    Value::Object(mut o) if o.contains_key("error") => {
                        o.remove("error").unwrap_or(Value::Null)
                    }
                    other => json!({"message": other, "type": "upstream_error"}),
                };
                json!({"model": model, "status": status, "error": error})
            }
            StreamEvent::Failed(model, status, error) => {
                json!({"model": model, "status": status, "error": error})
            }
        }
    }
}

/// Events as SSE `data:` lines.
pub fn render_stream_events(events: &[StreamEvent]) -> Bytes {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(b"data: ");
        // Writing a value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &e.to_json());
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compare_request_becomes_one_request_per_model() {
        let body = br#"{"models": ["a", "b"], "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}"#;
        let c = read_compare(body, 4).unwrap();
        assert!(!c.stream);
        assert_eq!(c.requests.len(), 2);
        for ((model, request), want) in c.requests.iter().zip(["a", "b"]) {
            assert_eq!(model, want);
            let v: Value = serde_json::from_slice(request).unwrap();
            assert_eq!(
                v,
                json!({"model": want, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5})
            );
        }
    }

    #[test]
    fn bad_compare_requests_are_refused_saying_why() {
        for (body, needle) in [
            (r#"{"model": "a", "messages": []}"#, "not `model`"),
            (r#"{"messages": []}"#, "`models` is required"),
            (r#"{"models": "a", "messages": []}"#, "list of model names"),
            (r#"{"models": [], "messages": []}"#, "from 1 to 3"),
            (r#"{"models": ["a", "b", "c", "d"]}"#, "from 1 to 3"),
            (r#"{"models": ["a", "b", "a"]}"#, "`a` twice"),
        ] {
            let e = read_compare(body.as_bytes(), 3).err().unwrap();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
        assert!(read_compare(b"[1]", 3).is_err());
    }

    #[test]
    fn a_batch_is_read_raw_and_bounded() {
        let requests = read_batch(
            br#"{"requests": [{"model": "a"}, {"model": "b", "x": [1]}]}"#,
            2,
        )
        .unwrap();
        assert_eq!(requests[1].get(), r#"{"model": "b", "x": [1]}"#);
        for body in [
            r#"{"requests": []}"#,
            r#"{"requests": [{}, {}, {}]}"#,
            r#"{"requests": {}}"#,
            r#"[]"#,
        ] {
            assert_eq!(
                read_batch(body.as_bytes(), 2).err().unwrap().status,
                400,
                "{body}"
            );
        }
    }

    #[test]
    fn results_carry_answers_upstream_errors_and_gateway_errors() {
        let ok = ItemResult {
            model: Some("a".into()),
            latency: Duration::from_millis(12),
            outcome: Ok((
                200,
                Bytes::from_static(br#"{"id": "x", "usage": {"total_tokens": 3}}"#),
            )),
        };
        let upstream_error = ItemResult {
            model: Some("b".into()),
            latency: Duration::from_millis(5),
            outcome: Ok((
                400,
                Bytes::from_static(
                    br#"{"error": {"message": "bad", "type": "invalid_request_error"}}"#,
                ),
            )),
        };
        let gateway_error = ItemResult {
            model: None,
            latency: Duration::ZERO,
            outcome: Err(GatewayError::model_not_found("ghost")),
        };
        let v: Value =
            serde_json::from_slice(&render_batch(&[ok, upstream_error, gateway_error])).unwrap();
        let r = &v["results"];
        assert_eq!(v["object"], "batch");
        assert_eq!(r[0]["index"], 0);
        assert_eq!(r[0]["status"], 200);
        assert_eq!(r[0]["latency_ms"], 12.0);
        assert_eq!(r[0]["usage"]["total_tokens"], 3);
        assert_eq!(r[0]["response"]["id"], "x");
        assert_eq!(r[1]["status"], 400);
        assert_eq!(r[1]["error"]["message"], "bad");
        assert_eq!(r[2]["status"], 404);
        assert_eq!(r[2]["model"], Value::Null);
        assert_eq!(r[2]["error"]["code"], "model_not_found");
    }
}
