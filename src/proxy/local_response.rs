//! Answers written by the gateway itself: errors in the client's protocol, and local endpoints.

use super::headers::{edit_answer_head, set};
use crate::api::ClientProtocol;
use crate::cache::{CacheStatus, CACHE_HEADER};
use crate::error::ErrorCode;
use crate::error::GatewayError;
use crate::limits::RateLimitHeaders;
use crate::plan::PlannedCall;
use crate::registry::Model;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Who answered, for the `x-dragoman-*` headers.
pub struct ServedBy<'a> {
    pub model: &'a Model,
    /// Upstream attempts made (0: not said).
    pub attempts: u32,
    /// The request's rate-limit readings, when limits apply to it.
    pub limits: Option<&'a RateLimitHeaders>,
    /// The experiment arm the request was assigned to.
    pub variant: Option<&'a HeaderValue>,
    /// What the response cache did, for a model that caches.
    pub cache: Option<CacheStatus>,
}

/// The experiment arm a request was assigned to.
pub const VARIANT_HEADER: &str = "x-dragoman-variant";

impl<'a> ServedBy<'a> {
    /// The most headers [`ServedBy::write`] sets.
    pub const HEADERS: usize = 11;

    /// Who answered `call`, after `attempts` upstream attempts (0: not said).
    pub fn of(call: &'a PlannedCall, attempts: u32) -> ServedBy<'a> {
        ServedBy {
            model: &call.model,
            attempts,
            limits: call.accounting.as_deref().map(|a| &a.headers),
            variant: call.variant.as_ref().map(|a| &a.variant),
            cache: call.cache.as_ref().map(|fill| fill.status),
        }
    }

    /// Sets `x-dragoman-model`, `-provider`, `-attempts`, `-variant` and the rate-limit headers.
    pub fn write(&self, headers: &mut HeaderMap) {
        if let Some(name) = &self.model.name_header {
            set(
                headers,
                const { HeaderName::from_static("x-dragoman-model") },
                name.clone(),
            );
        }
        if let Some(name) = &self.model.provider.name_header {
            let provider = const { HeaderName::from_static("x-dragoman-provider") };
            set(headers, provider, name.clone());
        }
        if self.attempts > 0 {
            let attempts = const { HeaderName::from_static(super::dispatch::ATTEMPTS_HEADER) };
            set(headers, attempts, HeaderValue::from(self.attempts));
        }
        if let Some(variant) = self.variant {
            set(
                headers,
                const { HeaderName::from_static(VARIANT_HEADER) },
                variant.clone(),
            );
        }
        if let Some(limits) = self.limits {
            limits.apply(headers);
        }
        if let Some(status) = self.cache {
            let cache = const { HeaderName::from_static(CACHE_HEADER) };
            set(headers, cache, HeaderValue::from_static(status.as_str()));
        }
    }
}

pub async fn write_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    served_by: Option<ServedBy<'_>>,
) -> pingora_error::Result<()> {
    write_json_with(session, status, body, served_by, None).await
}

async fn write_json_with(
    session: &mut Session,
    status: u16,
    body: Bytes,
    served_by: Option<ServedBy<'_>>,
    retry_after: Option<u64>,
) -> pingora_error::Result<()> {
    // No map of name spellings: every name here is the gateway's own.
    let mut resp = ResponseHeader::build_no_case(status, Some(5 + ServedBy::HEADERS))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if let Some(seconds) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, seconds)?;
    }
    if let Some(id) = session
        .req_header()
        .headers
        .get(crate::observe::request_id::HEADER)
    {
        resp.insert_header(crate::observe::request_id::HEADER, id.clone())?;
    }
    if let Some(served_by) = served_by {
        edit_answer_head(&mut resp, ServedBy::HEADERS, |head| {
            served_by.write(&mut head.headers)
        });
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// An error response in the client's protocol, unless a response already started.
pub async fn write_error(
    session: &mut Session,
    error: &GatewayError,
    protocol: ClientProtocol,
    served_by: Option<ServedBy<'_>>,
) {
    if session.response_written().is_some() {
        return;
    }
    let body = protocol.error_body(error);
    if let Err(e) = write_json_with(session, error.status, body, served_by, error.retry_after).await
    {
        log::debug!("could not send error response: {e}");
    }
}

/// The client-facing error for a proxy failure, or `None` when the client itself went away.
/// Messages are the gateway's own: Pingora's carry addresses and internals.
pub fn error_for_proxy_failure(e: &Error, provider: &str) -> Option<GatewayError> {
    use ErrorType::*;
    // The gateway's own refusal, already worded for the client.
    if let Some(own) = e
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<GatewayError>())
    {
        return Some(own.clone());
    }
    let error = match e.etype() {
        HTTPStatus(code) => {
            let message = e.context.as_ref().map_or_else(
                || format!("upstream provider `{provider}` failed"),
                |c| c.as_str().to_string(),
            );
            let error = GatewayError::new(*code, message);
            // The gateway's own 503: no instance may take the request.
            if *code == 503 {
                error.with_code(ErrorCode::UpstreamUnavailable)
            } else {
                error
            }
        }
        ConnectTimedout | TLSHandshakeTimedout => GatewayError::new(
            504,
            format!("Timed out connecting to provider `{provider}`"),
        )
        .with_code(ErrorCode::UpstreamTimeout),
        ReadTimedout | WriteTimedout => {
            GatewayError::new(504, format!("Provider `{provider}` did not answer in time"))
                .with_code(ErrorCode::UpstreamTimeout)
        }
        _ if *e.esource() == ErrorSource::Downstream => return None,
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
        | BindError | TLSHandshakeFailure | InvalidCert | TLSWantX509Lookup => {
            GatewayError::new(502, format!("Could not connect to provider `{provider}`"))
                .with_code(ErrorCode::UpstreamUnreachable)
        }
        _ if *e.esource() == ErrorSource::Upstream => {
            GatewayError::new(502, format!("Provider `{provider}` failed mid-response"))
                .with_code(ErrorCode::UpstreamError)
        }
        _ => GatewayError::new(500, "Internal gateway error").with_code(ErrorCode::InternalError),
    };
    Some(error)
}
