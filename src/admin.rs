//! The admin listener: liveness, readiness and Prometheus metrics. Never on the public listener.

use crate::registry::Registry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    registry: Arc<ArcSwap<Registry>>,
}

impl AdminApp {
    pub fn new(registry: Arc<ArcSwap<Registry>>) -> Self {
        AdminApp { registry }
    }

    /// Ready when every provider has at least one resolved instance.
    fn unready_providers(&self) -> Vec<String> {
        self.registry
            .load()
            .providers
            .iter()
            .filter(|p| p.upstreams.backends().get_backend().is_empty())
            .map(|p| p.name.clone())
            .collect()
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let unready = self.unready_providers();
                if unready.is_empty() {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    let msg = format!("no resolved instance for: {}\n", unready.join(", "));
                    reply(503, "text/plain", msg.into_bytes())
                }
            }
            "/metrics" => {
                use prometheus::Encoder;
                let mut out = Vec::new();
                crate::observe::metrics::refresh_instances(&self.registry.load());
                let encoder = prometheus::TextEncoder::new();
                match encoder.encode(&prometheus::gather(), &mut out) {
                    Ok(()) => reply(200, encoder.format_type(), out),
                    Err(e) => reply(500, "text/plain", e.to_string().into_bytes()),
                }
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
