//! The Pingora `ProxyHttp` implementation. It stays thin: each hook hands its work to the module
//! that owns it.
//!
//! The client's session routes and plans ([`ingress`]). The planned call then goes upstream either
//! in that same session (small bodies, models without fallbacks or hedging) or in subrequests run
//! by the [`dispatch`]er; both use the same upstream and response hooks ([`upstream`],
//! [`response`]).

mod cache_hook;
pub mod client_watch;
mod cork;
pub mod ctx;
pub mod dispatch;
pub mod edge;
mod fanout;
mod headers;
pub mod ingress;
pub mod local_response;
pub mod upstream;
pub mod upstream_response;

use crate::config::InstanceUrl;
use crate::registry::Registry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::RequestCtx;
use local_response::ServedBy;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Duration;

pub struct Gateway {
    registry: Arc<ArcSwap<Registry>>,
}

impl Gateway {
    pub fn new(registry: Arc<ArcSwap<Registry>>) -> Self {
        Gateway { registry }
    }
}

fn no_call() -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        "upstream hook without a planned call",
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if session.subrequest_ctx.is_some() {
            ctx.call = ingress::call_of_subrequest(session);
            crate::observe::begin_leg(session, ctx, dispatch::report_of_subrequest(session));
            ctx.is_upstream_leg = true;
            return match ctx.call {
                Some(_) => Ok(false),
                None => Err(no_call()),
            };
        }
        let registry = self.registry.load_full();
        crate::observe::begin(session, &registry, ctx);
        match ingress::handle(session, registry, ctx).await {
            ingress::Handled::Answered => Ok(true),
            ingress::Handled::ProxyHere => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let call = ctx.call.clone().ok_or_else(no_call)?;
        let peer = upstream::select_peer(&call, ctx).await?;
        crate::observe::attempt_started(&call, ctx);
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let call = ctx.call.as_ref().ok_or_else(no_call)?;
        let endpoint = ctx
            .backend
            .as_ref()
            .and_then(|b| b.ext.get::<Arc<InstanceUrl>>())
            .ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "attempt without an instance")
            })?;
        let origin = upstream::ClientOrigin {
            ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        };
        upstream::write_request_header(req, call, endpoint, ctx.key.as_ref(), &origin)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        cork::hold_request(fd, ctx);
        ctx.upstream_socket = Some(crate::drain::DRAIN.hold_upstream(fd));
        // Held first, then checked: an end of the grace period either sees this socket or is
        // seen here (a connection that was still being made when it ended).
        if crate::drain::DRAIN.is_grace_over() {
            return Err(upstream::shutting_down_error());
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let call = ctx.call.as_ref().ok_or_else(no_call)?;
        upstream::fill_body(call, body, end_of_stream);
        if end_of_stream {
            cork::release_request(ctx);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        match ctx.call.clone() {
            Some(call) => {
                crate::observe::attempt_failed(&call, &e);
                upstream::on_connect_failure(&call, ctx, e)
            }
            None => e,
        }
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let started = session.response_written().is_some();
        match ctx.call.clone() {
            Some(call) => {
                if !started && *e.esource() == pingora_error::ErrorSource::Upstream {
                    crate::observe::attempt_failed(&call, &e);
                }
                upstream::on_proxy_error(&call, ctx, started, client_reused, e)
            }
            None => e,
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let call = ctx.call.clone().ok_or_else(no_call)?;
        crate::observe::attempt_answered(&call, resp.status.as_u16());
        upstream::on_response_status(&call, ctx, resp)?;
        let request_id = session
            .req_header()
            .headers
            .get(crate::observe::request_id::HEADER);
        upstream_response::on_response_header(resp, &call, ctx, request_id);
        crate::observe::response_header(resp.status.as_u16(), &call, ctx);
        cork::coalesce_unsized_response(session, resp, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let call = ctx.call.clone().ok_or_else(no_call)?;
        crate::observe::response_body(ctx, body, end_of_stream);
        upstream_response::on_response_body(body, end_of_stream, &call, ctx)?;
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(call) = ctx.call.clone() else {
            return FailToProxy {
                error_code: 500,
                can_reuse_downstream: false,
            };
        };
        let provider = &call.model.provider.name;
        let overran = call.stream && session.response_written().is_some();
        let error = match overran
            .then(|| upstream_response::stream_overran(&call, ctx))
            .flatten()
        {
            Some(error) => Some(error),
            // The drain ended this request's upstream call.
            None if crate::drain::DRAIN.is_grace_over() => Some(crate::drain::shutting_down()),
            None => local_response::error_for_proxy_failure(e, provider),
        };
        let status = error.as_ref().map_or(0, |e| e.status);
        match error {
            Some(error) if session.response_written().is_some() => {
                // Too late for a status: end the stream with an error event instead.
                if let Some(bytes) = upstream_response::on_failure_after_start(&call, ctx, error) {
                    if let Err(e) = session.write_response_body(Some(bytes), true).await {
                        log::debug!("could not send the terminal error event: {e}");
                    }
                }
            }
            Some(error) => {
                let served_by = ServedBy::of(&call, ctx.attempts);
                local_response::write_error(
                    session,
                    &error,
                    call.endpoint.protocol(),
                    Some(served_by),
                )
                .await;
            }
            None => {}
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // The response has been written and flushed by now.
        cork::release_response(ctx);
        if session.subrequest_ctx.is_none() {
            crate::observe::finish(session, ctx);
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _e: &Error) -> bool {
        // The client's session logs nothing of its own: its upstream leg already did.
        !ctx.is_upstream_leg
    }
}
