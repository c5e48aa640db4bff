//! The upstream leg: choosing an instance, writing the provider's request, and deciding retries.

use super::ctx::RequestCtx;
use crate::call::{encode_component, UpstreamCall};
use crate::config::EndpointUrl;
use crate::providers::{AuthPlacement, ProviderKind};
use bytes::Bytes;
use http::header;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

/// Client headers that never reach an upstream: credentials (the gateway's key replaces them),
/// account selectors, framing (the gateway sets its own), hop-by-hop fields, and
/// `accept-encoding` (the response filters need plain bytes).
const STRIPPED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "openai-organization",
    "openai-project",
    "anthropic-version",
    "host",
    "content-length",
    "transfer-encoding",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Picks an instance that has not failed this request yet.
pub fn select_peer(call: &UpstreamCall, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let provider = &call.model.provider;
    let failed = &ctx.failed_backends;
    let backend = provider
        .upstreams
        .select_with(b"", 256, |b, healthy| healthy && !failed.contains(&b.addr))
        .ok_or_else(|| {
            Error::explain(
                ErrorType::HTTPStatus(503),
                format!("No instance of provider `{}` is available", provider.name),
            )
        })?;
    let endpoint = backend
        .ext
        .get::<Arc<EndpointUrl>>()
        .cloned()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "backend without endpoint"))?;
    let SocketAddr::Inet(addr) = backend.addr else {
        return Error::e_explain(
            ErrorType::InternalError,
            "unix socket upstreams are not supported",
        );
    };
    let sni = if endpoint.tls {
        endpoint.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, endpoint.tls, sni);
    let options = &mut peer.options;
    options.connection_timeout = Some(provider.connect_timeout);
    options.total_connection_timeout = Some(provider.connect_timeout * 2);
    options.read_timeout = Some(call.model.timeout);
    options.write_timeout = Some(Duration::from_secs(60));
    options.idle_timeout = Some(Duration::from_secs(90));
    ctx.attempts += 1;
    ctx.backend = Some(backend);
    Ok(Box::new(peer))
}

/// Rewrites the client's request header into the provider's.
pub fn write_request_header(
    req: &mut RequestHeader,
    call: &UpstreamCall,
    endpoint: &EndpointUrl,
) -> Result<()> {
    let provider = &call.model.provider;
    for name in STRIPPED_HEADERS {
        req.remove_header(*name);
    }
    let mut path = String::with_capacity(endpoint.base_path.len() + call.path.len() + 64);
    path.push_str(&endpoint.base_path);
    path.push_str(&call.path);
    if let AuthPlacement::Query { name } = &provider.auth {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&encode_component(name));
        path.push('=');
        path.push_str(&encode_component(provider.credential.expose()));
    }
    req.set_method(http::Method::POST);
    req.set_uri(
        http::Uri::try_from(path).or_err(ErrorType::InternalError, "invalid upstream path")?,
    );
    req.insert_header(header::HOST, endpoint.authority())?;
    req.insert_header(header::CONTENT_TYPE, "application/json")?;
    req.insert_header(header::CONTENT_LENGTH, call.body.len())?;
    if call.stream {
        req.insert_header(header::ACCEPT, "text/event-stream")?;
    }
    if let AuthPlacement::Header { name, prefix } = &provider.auth {
        let mut value =
            http::HeaderValue::try_from(format!("{prefix}{}", provider.credential.expose()))
                .or_err(
                    ErrorType::InternalError,
                    "credential is not a valid header value",
                )?;
        value.set_sensitive(true);
        req.insert_header(name.clone(), value)?;
    }
    if provider.kind == ProviderKind::Anthropic {
        req.insert_header("anthropic-version", provider.anthropic_version.as_str())?;
    }
    for (name, value) in &provider.headers {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// The body Pingora sends upstream: the planned bytes at the end of the (empty) client body,
/// on every attempt.
pub fn fill_body(call: &UpstreamCall, body: &mut Option<Bytes>, end_of_stream: bool) {
    *body = Some(if end_of_stream {
        call.body.clone()
    } else {
        Bytes::new()
    });
}

/// A failed connection: retry on another instance while untried ones remain.
pub fn on_connect_failure(
    call: &UpstreamCall,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    if let Some(b) = ctx.backend.take() {
        ctx.failed_backends.push(b.addr);
    }
    let untried = call.model.provider.endpoint_count > ctx.failed_backends.len();
    e.set_retry(untried);
    e
}

/// An error after connecting. Retried only on a reused pooled connection that the upstream had
/// closed (nothing was processed), and never once the response started.
pub fn on_proxy_error(
    ctx: &mut RequestCtx,
    response_started: bool,
    client_reused: bool,
    mut e: Box<Error>,
) -> Box<Error> {
    if response_started {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(client_reused);
        if !e.retry() {
            if let Some(b) = ctx.backend.take() {
                ctx.failed_backends.push(b.addr);
            }
        }
    }
    e
}
