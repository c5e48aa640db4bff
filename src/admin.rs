//! The admin listener: liveness, readiness, Prometheus metrics, the running configuration (secrets
//! replaced), the instances' state, reloads and the status page. Never on the public listener.
//!
//! With `admin_token` set, every endpoint but `/healthz` and `/readyz` (what probes call) needs
//! it, as `Authorization: Bearer TOKEN` or as the password of HTTP Basic authentication (so a
//! browser can open the status page).

mod config_view;
mod page;
pub mod reload;
pub mod status;

use crate::config::Secret;
use crate::registry::Registry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use reload::Reloader;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// The most request body an admin request may carry (none is read; this is only drained).
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub struct AdminApp {
    registry: Arc<ArcSwap<Registry>>,
    reloader: Arc<Reloader>,
}

impl AdminApp {
    pub fn new(registry: Arc<ArcSwap<Registry>>, reloader: Arc<Reloader>) -> Self {
        AdminApp { registry, reloader }
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
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json(status: u16, value: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn method_not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut resp = reply(405, "text/plain", b"method not allowed\n".to_vec());
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

fn unauthorized() -> Response<Vec<u8>> {
    let mut resp = reply(401, "text/plain", b"admin token required\n".to_vec());
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"dragoman admin\", Bearer"),
    );
    resp
}

/// Whether the request carries `token`: `Authorization: Bearer TOKEN`, or Basic with TOKEN as
/// the password (any user name). Compared as SHA-256 digests, in constant time.
fn authorized(req: &pingora_http::RequestHeader, token: Option<&Secret>) -> bool {
    use base64::Engine;
    let Some(token) = token else {
        return true;
    };
    let Some(value) = req.headers.get(http::header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let scheme_is = |scheme: &[u8]| {
        value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme)
    };
    let presented: Vec<u8> = if scheme_is(b"bearer ") {
        value[7..].trim_ascii().to_vec()
    } else if scheme_is(b"basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value[6..].trim_ascii())
        else {
            return false;
        };
        match decoded.iter().position(|b| *b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    let expected = crate::access::sha256(token.expose().as_bytes());
    bool::from(crate::access::sha256(&presented).ct_eq(&expected))
}

/// Reads and drops the request body, up to [`MAX_ADMIN_BODY`]; false past it.
async fn drain_body(session: &mut ServerSession) -> bool {
    let mut seen = 0usize;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                seen += chunk.len();
                if seen > MAX_ADMIN_BODY {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let method = session.req_header().method.clone();
        if !drain_body(session).await {
            session.set_keepalive(None);
            return reply(413, "text/plain", b"request body too large\n".to_vec());
        }
        match path.as_str() {
            "/healthz" => return reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                return match status::readiness(&self.registry.load(), Instant::now()) {
                    Ok(()) => reply(200, "text/plain", b"ready\n".to_vec()),
                    Err(why) => reply(503, "text/plain", format!("{why}\n").into_bytes()),
                }
            }
            _ => {}
        }
        let settings = self.reloader.current();
        if !authorized(session.req_header(), settings.admin_token.as_ref()) {
            return unauthorized();
        }
        let get = method == http::Method::GET;
        match path.as_str() {
            "/metrics" if get => {
                use prometheus::Encoder;
                let mut out = Vec::new();
                crate::observe::metrics::refresh_instances(&self.registry.load());
                let encoder = prometheus::TextEncoder::new();
                match encoder.encode(&prometheus::gather(), &mut out) {
                    Ok(()) => reply(200, encoder.format_type(), out),
                    Err(e) => reply(500, "text/plain", e.to_string().into_bytes()),
                }
            }
            "/" if get => {
                let status = status::status(&self.registry.load(), &self.reloader, Instant::now());
                let mut resp = reply(200, "text/html; charset=utf-8", page::render(&status));
                // Nothing but the page itself and its own status endpoint: no external assets.
                resp.headers_mut().insert(
                    http::header::CONTENT_SECURITY_POLICY,
                    http::HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; \
                         style-src 'unsafe-inline'; connect-src 'self'",
                    ),
                );
                resp
            }
            "/admin/status" if get => json(
                200,
                &status::status(&self.registry.load(), &self.reloader, Instant::now()),
            ),
            "/admin/instances" if get => json(
                200,
                &status::instances(&self.registry.load(), Instant::now()),
            ),
            "/admin/config" if get => json(200, &config_view::render(&settings)),
            "/admin/reload" if method == http::Method::POST => {
                let report = self.reloader.reload("admin API").await;
                json(if report.applied() { 200 } else { 422 }, &report.to_json())
            }
            "/admin/reload" => method_not_allowed("POST"),
            "/" | "/metrics" | "/admin/status" | "/admin/instances" | "/admin/config" => {
                method_not_allowed("GET")
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
