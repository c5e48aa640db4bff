//! Compare and batch: one client request split into several chat requests (`api::fanout`), each
//! checked against the key, admitted under its limits, planned for its model and run as a leg
//! whose whole answer is collected (`dispatch::collect`); then all the results go back at once.
//!
//! A compare runs all its models at once. A batch runs at most `batch.concurrency` of its
//! requests at once, and all batches together at most `batch.global_concurrency`; its results
//! keep the input order. A client that goes away cancels every leg.

use super::client_watch;
use super::dispatch;
use super::ingress;
use super::local_response;
use crate::access::GatewayKey;
use crate::api::fanout::{self, ItemResult, StreamEvent};
use crate::api::{ClientEndpoint, ClientRequest};
use crate::buffers::Held;
use crate::error::{ErrorCode, GatewayError};
use crate::observe::{LegKind, LegTally};
use crate::registry::Registry;
use crate::stream::sse::SseParser;
use bytes::Bytes;
use futures::future::select_all;
use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::value::RawValue;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// `POST /v1/compare`.
pub async fn compare(
    session: &mut Session,
    registry: &Arc<Registry>,
    key: Option<&GatewayKey>,
    body: &[u8],
) -> Result<(), GatewayError> {
    let compare = fanout::read_compare(body, registry.fanout.compare_max_models)?;
    prepare_legs(session);
    if compare.stream {
        compare_streams(session, registry, key, &compare.requests).await;
        return Ok(());
    }
    let results = {
        let session = &*session;
        let all = compare
            .requests
            .iter()
            .map(|(model, request)| run_one(session, registry, key, Some(model), request));
        until_client_leaves(session, futures::future::join_all(all)).await
    };
    let Some(results) = results else {
        log::debug!("client went away; its compare was cancelled");
        return Ok(());
    };
    // The answers stay counted in the buffer budget until they are written.
    let (results, _held): (Vec<ItemResult>, Vec<Held>) = results.into_iter().unzip();
    answer(session, fanout::render_compare(&results)).await;
    Ok(())
}

/// A streamed compare: every model's stream at once, each event passed on as it comes, tagged with
/// its model (`api::fanout::StreamEvent`), then `data: [DONE]`.
async fn compare_streams(
    session: &mut Session,
    registry: &Arc<Registry>,
    key: Option<&GatewayKey>,
    requests: &[(String, Vec<u8>)],
) {
    let mut events = Vec::new();
    let mut streams = Vec::new();
    let started = Instant::now();
    for (model, body) in requests {
        let planned = match ClientRequest::read(ClientEndpoint::ChatCompletions, body) {
            Ok(request) => ingress::admit_and_plan(session, registry, key, &request).await,
            Err(e) => Err(e),
        };
        let leg = planned.and_then(|(admission, call)| {
            let leg = dispatch::Leg::spawn(
                session,
                Arc::new(call),
                LegKind::First,
                &mut LegTally::default(),
            )
            .ok_or_else(|| {
                GatewayError::new(500, "Internal gateway error").with_code(ErrorCode::InternalError)
            })?;
            Ok((admission, leg))
        });
        match leg {
            Ok((admission, leg)) => streams.push(ModelStream::new(model, leg, admission)),
            Err(e) => {
                let named = Some(model.as_str());
                crate::observe::fanout_request(
                    registry,
                    key,
                    None,
                    named,
                    e.status,
                    started.elapsed(),
                );
                events.push(StreamEvent::failed(model, &e));
            }
        }
    }
    let mut header = match ResponseHeader::build(200, Some(3)) {
        Ok(h) => h,
        Err(_) => return,
    };
    let _ = header.insert_header(http::header::CONTENT_TYPE, "text/event-stream");
    let _ = header.insert_header(http::header::CACHE_CONTROL, "no-cache");
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
    {
        return;
    }
    let client_socket = client_watch::duplicate_client_socket(session);
    let gone = async move {
        match client_socket {
            Some(socket) => client_watch::closed(socket).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(gone);
    loop {
        if !events.is_empty() {
            let bytes = fanout::render_stream_events(&events);
            events.clear();
            if session
                .write_response_body(Some(bytes), false)
                .await
                .is_err()
            {
                return; // gone: dropping the streams cancels their legs
            }
        }
        if streams.is_empty() {
            break;
        }
        // Until its head comes, a leg is bounded by its model's timeout; after, by its
        // upstream's stream idle timeout, in the leg itself.
        let deadline = streams.iter().filter_map(ModelStream::deadline).min();
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        enum Woke {
            Task(usize, Option<HttpTask>),
            Deadline,
            ClientGone,
        }
        let woke = tokio::select! {
            (task, index, _) = select_all(streams.iter_mut().map(|s| Box::pin(s.leg.rx.recv()))) => {
                Woke::Task(index, task)
            }
            () = timer => Woke::Deadline,
            () = &mut gone => Woke::ClientGone,
        };
        match woke {
            Woke::Task(index, task) => {
                if streams[index].take(task, &mut events) {
                    streams.swap_remove(index).count(registry, key, started);
                }
            }
            Woke::Deadline => {
                let now = Instant::now();
                streams.retain_mut(|s| match s.deadline() {
                    Some(at) if at <= now => {
                        let chain = s.leg.call.model.clone();
                        let error = dispatch::LegFailure::timed_out(&s.leg, &chain).error;
                        s.fail(&error, &mut events);
                        s.count(registry, key, started);
                        false
                    }
                    _ => true,
                });
            }
            // Dropping the streams cancels their legs.
            Woke::ClientGone => return,
        }
    }
    let _ = session
        .write_response_body(Some(Bytes::from_static(b"data: [DONE]\n\n")), true)
        .await;
}

/// One model's leg in a streamed compare.
struct ModelStream<'m> {
    model: &'m str,
    leg: dispatch::Leg,
    /// Its rate limits, held until its stream ends.
    _admission: Option<crate::limits::Admission>,
    /// The answer's status, once its head came.
    status: Option<u16>,
    events: SseParser,
    /// An error answer's body, collected whole (up to `max_response_bytes`).
    error_body: Vec<u8>,
    /// The status it ended with: its answer's, or its failure's.
    ended_with: Option<u16>,
}

impl<'m> ModelStream<'m> {
    fn new(
        model: &'m str,
        leg: dispatch::Leg,
        admission: Option<crate::limits::Admission>,
    ) -> Self {
        let max_event = leg.call.registry.max_response_bytes;
        ModelStream {
            model,
            leg,
            _admission: admission,
            status: None,
            events: SseParser::new(max_event),
            error_body: Vec::new(),
            ended_with: None,
        }
    }

    /// Its leg failed with `error`: said in the stream, and the status it ended with.
    fn fail(&mut self, error: &GatewayError, out: &mut Vec<StreamEvent<'m>>) {
        self.ended_with = Some(error.status);
        out.push(StreamEvent::failed(self.model, error));
    }

    /// Counts its request, ended, like a client's request to its model.
    fn count(&self, registry: &Registry, key: Option<&GatewayKey>, started: Instant) {
        let status = self.ended_with.unwrap_or(502);
        let call = Some(&*self.leg.call);
        crate::observe::fanout_request(registry, key, call, None, status, started.elapsed());
    }

    fn deadline(&self) -> Option<Instant> {
        self.status.is_none().then_some(self.leg.deadline.at)
    }

    /// Takes one task of the leg, adding what it says to `out`; true when the leg is over.
    fn take(&mut self, task: Option<HttpTask>, out: &mut Vec<StreamEvent<'m>>) -> bool {
        let task = match task {
            Some(HttpTask::Failed(e)) => {
                let error = dispatch::LegFailure::broke_off(&self.leg, Some(e)).error;
                self.fail(&error, out);
                return true;
            }
            Some(task) => task,
            None => {
                // Closed without an end: a failure if Pingora says so.
                match self.leg.error.try_recv() {
                    Ok(e) => {
                        let error = dispatch::LegFailure::broke_off(&self.leg, Some(e)).error;
                        self.fail(&error, out);
                    }
                    Err(_) => self.finish(out),
                }
                return true;
            }
        };
        let ended = task.is_end();
        match task {
            HttpTask::Header(header, _) => self.status = Some(header.status.as_u16()),
            HttpTask::Body(Some(bytes), _) => match self.status {
                Some(200) => {
                    let mut parsed = Vec::new();
                    if let Err(e) = self.events.push(&bytes, &mut parsed) {
                        let error = GatewayError::bad_upstream(e.to_string());
                        self.fail(&error, out);
                        return true;
                    }
                    out.extend(
                        parsed
                            .into_iter()
                            .filter(|e| e.data != "[DONE]")
                            .map(|e| StreamEvent::Chunk(self.model, e.data)),
                    );
                }
                _ => {
                    let limit = self.leg.call.registry.max_response_bytes;
                    let room = limit.saturating_sub(self.error_body.len());
                    self.error_body
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            },
            _ => {}
        }
        if ended {
            self.finish(out);
        }
        ended
    }

    /// The leg's answer ended: its stream is done, or its error answer is whole.
    fn finish(&mut self, out: &mut Vec<StreamEvent<'m>>) {
        self.ended_with = Some(self.status.unwrap_or(502));
        match self.status {
            Some(200) => out.push(StreamEvent::Done(self.model)),
            status => out.push(StreamEvent::UpstreamError(
                self.model,
                status.unwrap_or(502),
                std::mem::take(&mut self.error_body),
            )),
        }
    }
}

/// `POST /v1/batch`.
pub async fn batch(
    session: &mut Session,
    registry: &Arc<Registry>,
    key: Option<&GatewayKey>,
    body: &[u8],
) -> Result<(), GatewayError> {
    let requests = fanout::read_batch(body, registry.fanout.batch_max_requests)?;
    prepare_legs(session);
    let results = {
        let session = &*session;
        // This batch's bound; the registry's is over every batch.
        let batch_slots = tokio::sync::Semaphore::new(registry.fanout.batch_concurrency);
        let all = requests
            .iter()
            .map(|request| batch_item(session, registry, key, &batch_slots, request));
        // `join_all` keeps the input order; the semaphores let only so many run at once.
        until_client_leaves(session, futures::future::join_all(all)).await
    };
    let Some(results) = results else {
        log::debug!("client went away; its batch was cancelled");
        return Ok(());
    };
    let (results, _held): (Vec<ItemResult>, Vec<Held>) = results.into_iter().unzip();
    answer(session, fanout::render_batch(&results)).await;
    Ok(())
}

/// One request of a batch, once its batch's bound and the bound over every batch let it run.
async fn batch_item(
    session: &Session,
    registry: &Arc<Registry>,
    key: Option<&GatewayKey>,
    batch_slots: &tokio::sync::Semaphore,
    request: &RawValue,
) -> (ItemResult, Held) {
    let metrics = registry.observe.batches();
    let _waiting = metrics.map(|m| Gauged::new(&m.batch_waiting));
    // Held while the request runs. Neither semaphore is ever closed.
    let _in_batch = batch_slots.acquire().await;
    let _in_all = registry.batch_slots.acquire().await;
    drop(_waiting);
    let _running = metrics.map(|m| Gauged::new(&m.batch_running));
    let (result, held) = run_one(session, registry, key, None, request.get().as_bytes()).await;
    if let Some(m) = metrics {
        m.batch_done(match &result.outcome {
            Ok((status, _)) => *status,
            Err(e) => e.status,
        });
    }
    (result, held)
}

/// Counts one in a gauge while it lives (a batch's request waiting, or running), also when the
/// batch is cancelled.
struct Gauged<'a>(&'a prometheus::IntGauge);

impl<'a> Gauged<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Gauged(gauge)
    }
}

impl Drop for Gauged<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Pingora 0.9.1 builds each leg from the client's request head written out as HTTP/1 text, with
/// the client's version; see `dispatch::run`.
fn prepare_legs(session: &mut Session) {
    if session.as_downstream().is_http2() {
        session.req_header_mut().set_version(http::Version::HTTP_11);
    }
}

/// `work`, unless the (HTTP/1) client closes its connection first. An HTTP/2 client's reset
/// stream is noticed when the answer is written.
async fn until_client_leaves<T>(session: &Session, work: impl Future<Output = T>) -> Option<T> {
    let client_socket = client_watch::duplicate_client_socket(session);
    let gone = async move {
        match client_socket {
            Some(socket) => client_watch::closed(socket).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        out = work => Some(out),
        () = gone => None,
    }
}

async fn answer(session: &mut Session, body: Bytes) {
    if let Err(e) = local_response::write_json(session, 200, body, None).await {
        log::debug!("could not send the results: {e}");
    }
}

/// One chat request of a compare (`model` given) or batch, from reading to its whole answer, with
/// the answer's share of the buffer budget.
async fn run_one<'a>(
    session: &'a Session,
    registry: &'a Arc<Registry>,
    key: Option<&'a GatewayKey>,
    model: Option<&'a str>,
    body: &'a [u8],
) -> (ItemResult, Held) {
    let started = Instant::now();
    let (named, outcome) = match ClientRequest::read(ClientEndpoint::ChatCompletions, body) {
        Ok(request) => {
            let named = request.envelope.model.clone();
            (
                Some(named),
                answer_of(session, registry, key, &request, started).await,
            )
        }
        Err(e) => {
            crate::observe::fanout_request(registry, key, None, model, e.status, started.elapsed());
            (model.map(str::to_owned), Err(e))
        }
    };
    let (outcome, held) = match outcome {
        Ok(collected) => (Ok((collected.status, collected.body)), collected.held),
        Err(e) => (Err(e), Held::default()),
    };
    let result = ItemResult {
        model: named,
        latency: started.elapsed(),
        outcome,
    };
    (result, held)
}

/// The whole answer to one read request.
async fn answer_of<'a>(
    session: &'a Session,
    registry: &'a Arc<Registry>,
    key: Option<&'a GatewayKey>,
    request: &'a ClientRequest<'a>,
    started: Instant,
) -> Result<dispatch::Collected, GatewayError> {
    let planned = if request.envelope.stream {
        Err(GatewayError::bad_request(
            "A request in a batch cannot stream: leave `stream` out",
        ))
    } else {
        ingress::admit_and_plan(session, registry, key, request).await
    };
    let (admission, call) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            let named = Some(&*request.envelope.model);
            crate::observe::fanout_request(registry, key, None, named, e.status, started.elapsed());
            return Err(e);
        }
    };
    let call = Arc::new(call);
    let collected = dispatch::collect(session, call.clone()).await;
    // The request's concurrency slots and token settling last until its answer is whole.
    drop(admission);
    let status = collected.as_ref().map_or_else(|e| e.status, |c| c.status);
    crate::observe::fanout_request(registry, key, Some(&call), None, status, started.elapsed());
    collected
}
