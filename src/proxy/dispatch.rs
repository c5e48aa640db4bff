//! The coordinator of one client request: runs the planned upstream call as a Pingora subrequest
//! (a "leg"), and decides what reaches the client.
//!
//! - The client's model governs the whole chain: its `fallbacks`, in order, and its `fallback_on`.
//!   Until anything reached the client, a failed leg is replaced by the next fallback model,
//!   planned afresh for its provider.
//! - Deadlines: each leg is bounded by its own model's `timeout`, counted from the leg's start
//!   (the first byte of a stream, the whole of any other answer), and the request by the client's
//!   model's `total_timeout`, counted from when it was planned. A leg that runs out of time is
//!   cancelled and counts as a `timeout` failure, like an upstream's 504: the next fallback then
//!   gets its own full `timeout`, within what is left of the total.
//! - `hedge` (streamed requests only): if no first byte came after the delay, a second leg is
//!   started on another instance (or the next fallback); the first answer wins and the others are
//!   cancelled. A non-streamed answer's first byte comes when all of it is generated, so its wait
//!   says nothing about a stalled upstream: those requests are not hedged.
//! - A client that goes away cancels every leg at once.
//!
//! Cancelling a leg drops its task, which drops its upstream connection. The decisions themselves
//! (`failure_condition`, `after_failure`, `leg_deadline`, ...) are pure functions, tested below.

use super::client_watch;
use super::local_response::{self, ServedBy};
use crate::api::ClientProtocol;
use crate::buffers::{Exhausted, Held};
use crate::config::FallbackCondition;
use crate::error::ErrorCode;
use crate::error::GatewayError;
use crate::limits;
use crate::observe::{LegKind, LegReport, LegTally};
use crate::plan::PlannedCall;
use crate::registry::Model;
use crate::upstream::budget::{self, RequestBudget};
use crate::upstream::retry;
use futures::future::{select_all, FutureExt};
use pingora_core::protocols::http::HttpTask;
use pingora_error::Error;
use pingora_proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora_proxy::Session;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Response header naming how many upstream attempts a request took, over all its legs.
pub const ATTEMPTS_HEADER: &str = "x-dragoman-attempts";

/// What a leg's subrequest is given: the call it makes, and where it reports what it saw.
pub struct LegStart {
    pub call: Arc<PlannedCall>,
    pub report: Arc<LegReport>,
}

/// In the subrequest: where it reports to the dispatcher.
pub fn report_of_subrequest(session: &Session) -> Option<Arc<LegReport>> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<LegStart>()
        .map(|start| start.report.clone())
}

/// One running subrequest.
pub(super) struct Leg {
    pub(super) call: Arc<PlannedCall>,
    report: Arc<LegReport>,
    pub(super) rx: mpsc::Receiver<HttpTask>,
    /// Held so the subrequest keeps its input open; dropping it is a cancellation signal.
    _tx: mpsc::Sender<HttpTask>,
    /// The error the leg failed with, which Pingora sends before the leg's output closes.
    pub(super) error: oneshot::Receiver<Box<Error>>,
    pub(super) deadline: budget::LegDeadline,
    task: tokio::task::JoinHandle<()>,
}

impl Leg {
    pub(super) fn spawn(
        session: &Session,
        call: Arc<PlannedCall>,
        kind: LegKind,
        tally: &mut LegTally,
    ) -> Option<Leg> {
        // No fallback or hedge starts once a shutdown's grace period has ended.
        if crate::drain::DRAIN.is_grace_over() {
            return None;
        }
        let spawner = session.subrequest_spawner.as_ref()?;
        let report = LegReport::new(kind, session);
        // The subrequest gets a context of its own, whose `started` (now) the upstream hooks
        // count the same `timeout` from.
        let deadline =
            budget::leg_deadline(Instant::now(), call.model.timeout, call.budget.deadline);
        let ctx = SubrequestCtx::builder()
            .body_mode(BodyMode::NoBody)
            .user_ctx(Box::new(LegStart {
                call: call.clone(),
                report: report.clone(),
            }))
            .build();
        let (subrequest, handle) = spawner.create_subrequest(session.as_downstream(), ctx);
        let task = tokio::spawn(subrequest.run());
        tally.started(&report);
        Some(Leg {
            call,
            report,
            rx: handle.rx,
            _tx: handle.tx,
            error: handle.subreq_proxy_error,
            deadline,
            task,
        })
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `call` (and, if needed, its fallbacks) to the client. `replan` plans the same client
/// request for another model.
pub async fn run(
    session: &mut Session,
    call: Arc<PlannedCall>,
    replan: &(dyn Fn(&str) -> Result<PlannedCall, GatewayError> + Send + Sync),
    tally: &mut LegTally,
) {
    let protocol = call.endpoint.protocol();
    // Pingora 0.9.1 builds each subrequest from the client's request head written out as HTTP/1
    // text, with the client's version; "HTTP/2" is refused by the subrequest's HTTP/1 parser (a
    // bare 400). The legs need only the head's method, path and headers.
    if session.as_downstream().is_http2() {
        session.req_header_mut().set_version(http::Version::HTTP_11);
    }
    // The client's model: its settings govern the whole chain, whichever model answers.
    let chain = call.model.clone();
    let budget = call.budget.clone();
    let total_deadline = budget.deadline;
    let mut fallbacks = chain.fallbacks.iter();
    let hedge = retry::hedge_for(chain.hedge, call.stream);
    let mut hedges_left = hedge.map_or(0, |h| h.max);
    let mut hedge_at = hedge.map(|h| Instant::now() + h.after.0);
    let client_socket = client_watch::duplicate_client_socket(session);
    let client_gone = async move {
        match client_socket {
            Some(socket) => client_watch::closed(socket).await,
            None => std::future::pending().await,
        }
    }
    .fuse();
    tokio::pin!(client_gone);

    let Some(first) = Leg::spawn(session, call.clone(), LegKind::First, tally) else {
        let e = if crate::drain::DRAIN.is_grace_over() {
            crate::drain::shutting_down()
        } else {
            GatewayError::new(500, "Internal gateway error").with_code(ErrorCode::InternalError)
        };
        return local_response::write_error(session, &e, protocol, None).await;
    };
    let mut legs = vec![first];
    // The last failure that was not delivered, kept for when nothing better comes.
    let mut last_failure: Option<Failure> = None;
    // Fallback models' own rate limits, held until the answer is written.
    let mut admissions: Vec<limits::Admission> = Vec::new();

    loop {
        // Phase 1: wait for an answer worth delivering.
        let mut answer = loop {
            if legs.is_empty() {
                // No fallback is planned once a shutdown's grace period has ended.
                if !crate::drain::DRAIN.is_grace_over()
                    && budget::may_start_leg(Instant::now(), total_deadline, budget.calls_left())
                {
                    let next =
                        next_fallback(&mut fallbacks, replan, &budget, &mut admissions).await;
                    let leg = next.and_then(|c| Leg::spawn(session, c, LegKind::Fallback, tally));
                    if let Some(leg) = leg {
                        legs.push(leg);
                        continue;
                    }
                }
                match last_failure.take() {
                    Some(Failure::Answer(answer)) => break answer,
                    Some(Failure::Leg(failure)) => {
                        return failure.write(session, protocol, &call).await;
                    }
                    None => {
                        let e = GatewayError::new(502, "No upstream answered")
                            .with_code(ErrorCode::UpstreamUnreachable);
                        return local_response::write_error(session, &e, protocol, None).await;
                    }
                }
            }
            let hedge_timer = async {
                match hedge_at {
                    Some(at) if hedges_left > 0 => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await
                    }
                    _ => std::future::pending().await,
                }
            };
            let deadline = legs
                .iter()
                .map(|l| l.deadline.at)
                .min()
                .unwrap_or(total_deadline);
            let event = tokio::select! {
                // `legs` is not empty here, which select_all requires.
                (task, index, _) = select_all(legs.iter_mut().map(|l| Box::pin(l.rx.recv()))) => {
                    Event::Task(index, task)
                }
                () = hedge_timer => Event::Hedge,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Event::Deadline,
                () = gone(session, &mut client_gone) => Event::ClientGone,
            };
            let (failure, condition) = match event {
                Event::Task(index, Some(HttpTask::Header(header, ended))) => {
                    let status = header.status.as_u16();
                    let mut answer = Answer {
                        leg: legs.swap_remove(index),
                        tasks: vec![HttpTask::Header(header, ended)],
                        ended,
                        body_bytes: 0,
                        held: Held::default(),
                    };
                    match retry::failure_condition(status) {
                        Some(FallbackCondition::ContextLength) => {
                            // Only the body tells a context window error from other 400s.
                            let gone = std::pin::pin!(gone(session, &mut client_gone));
                            match answer.complete(&chain, gone).await {
                                Completion::Whole => {
                                    let condition = answer
                                        .mentions_context_length()
                                        .then_some(FallbackCondition::ContextLength);
                                    (Failure::Answer(answer), condition)
                                }
                                Completion::Failed(failure) => {
                                    let condition = Some(failure.condition);
                                    (Failure::Leg(failure), condition)
                                }
                                Completion::ClientGone => return client_left(&chain),
                            }
                        }
                        condition => (Failure::Answer(answer), condition),
                    }
                }
                Event::Task(index, task) => {
                    // The leg ended without an answer.
                    let mut leg = legs.swap_remove(index);
                    let error = match task {
                        Some(HttpTask::Failed(e)) => Some(e),
                        _ => leg.error.try_recv().ok(),
                    };
                    let failure = LegFailure::broke_off(&leg, error);
                    let condition = Some(failure.condition);
                    (Failure::Leg(failure), condition)
                }
                Event::Hedge => {
                    hedges_left -= 1;
                    hedge_at = hedge.map(|h| Instant::now() + h.after.0);
                    if crate::drain::DRAIN.is_grace_over()
                        || !budget::may_start_leg(
                            Instant::now(),
                            total_deadline,
                            budget.calls_left(),
                        )
                    {
                        continue;
                    }
                    // Another instance of the same model, or else the next fallback, which the
                    // hedge then uses up (a later failure moves on to the one after it).
                    let hedge = if chain.provider.endpoint_count > 1 {
                        Leg::spawn(session, call.clone(), LegKind::Hedge, tally)
                    } else {
                        next_fallback(&mut fallbacks, replan, &budget, &mut admissions)
                            .await
                            .and_then(|call| Leg::spawn(session, call, LegKind::Hedge, tally))
                    };
                    if let Some(leg) = hedge {
                        log::debug!("hedging {} after no first byte", chain.name);
                        legs.push(leg);
                    }
                    continue;
                }
                Event::Deadline => {
                    // Legs out of time are cancelled; the latest stands for them.
                    let now = Instant::now();
                    let (expired, running): (Vec<Leg>, Vec<Leg>) =
                        legs.drain(..).partition(|l| l.deadline.at <= now);
                    legs = running;
                    let Some(leg) = expired.last() else { continue };
                    let failure = LegFailure::timed_out(leg, &chain);
                    (Failure::Leg(failure), Some(FallbackCondition::Timeout))
                }
                Event::ClientGone => return client_left(&chain),
            };
            match retry::after_failure(condition, &chain.fallback_on, !legs.is_empty()) {
                retry::Next::Deliver => match failure {
                    Failure::Answer(answer) => break answer,
                    Failure::Leg(failure) => {
                        drop(legs);
                        return failure.write(session, protocol, &call).await;
                    }
                },
                retry::Next::Keep => last_failure = Some(failure),
            }
        };
        tally.serving(&answer.leg.report);
        // Hedges that lost, and failures that the answer made moot.
        legs.clear();
        drop(last_failure.take());

        // Phase 2: deliver the answer. Streams go out as they come.
        if answer.leg.call.stream {
            set_attempts(&mut answer.tasks, budget.calls_made());
            if !write(session, std::mem::take(&mut answer.tasks)).await {
                return;
            }
            while !answer.ended {
                tokio::select! {
                    task = answer.leg.rx.recv() => {
                        let Some(task) = task else { break };
                        answer.ended = task.is_end();
                        if !write(session, vec![task]).await {
                            return;
                        }
                    }
                    () = gone(session, &mut client_gone) => return client_left(&chain),
                }
            }
            return;
        }
        // Other answers are held until complete: until then nothing has reached the client, so
        // one that runs out of time or breaks off can still fall back, or become a clean error.
        let completion = {
            let gone = std::pin::pin!(gone(session, &mut client_gone));
            answer.complete(&chain, gone).await
        };
        let failure = match completion {
            Completion::Whole => {
                set_attempts(&mut answer.tasks, budget.calls_made());
                write(session, answer.tasks).await;
                return;
            }
            Completion::ClientGone => return client_left(&chain),
            Completion::Failed(failure) => failure,
        };
        drop(answer);
        match retry::after_failure(Some(failure.condition), &chain.fallback_on, false) {
            retry::Next::Deliver => return failure.write(session, protocol, &call).await,
            retry::Next::Keep => last_failure = Some(Failure::Leg(failure)),
        }
    }
}

/// A call's whole answer, collected instead of written to the client (compare, batch).
pub struct Collected {
    pub status: u16,
    /// The answer in the client's protocol.
    pub body: bytes::Bytes,
    /// The body's share of `edge.max_buffered_bytes`, held while the caller keeps it.
    pub held: Held,
}

/// Runs `call` as one leg (its retries across instances; no fallbacks, no hedging) and collects
/// its whole answer, within the leg's deadline and `max_response_bytes`; the gateway's error when
/// no whole answer came. Dropping the future cancels the leg.
pub async fn collect(session: &Session, call: Arc<PlannedCall>) -> Result<Collected, GatewayError> {
    let chain = call.model.clone();
    let Some(mut leg) = Leg::spawn(session, call, LegKind::First, &mut LegTally::default()) else {
        return Err(
            GatewayError::new(500, "Internal gateway error").with_code(ErrorCode::InternalError)
        );
    };
    let first = tokio::select! {
        task = leg.rx.recv() => task,
        () = tokio::time::sleep_until(tokio::time::Instant::from_std(leg.deadline.at)) => {
            return Err(LegFailure::timed_out(&leg, &chain).error);
        }
    };
    let (status, ended) = match first {
        Some(HttpTask::Header(header, ended)) => (header.status.as_u16(), ended),
        Some(HttpTask::Failed(e)) => return Err(LegFailure::broke_off(&leg, Some(e)).error),
        _ => {
            let error = leg.error.try_recv().ok();
            return Err(LegFailure::broke_off(&leg, error).error);
        }
    };
    let mut answer = Answer {
        leg,
        tasks: Vec::new(),
        ended,
        body_bytes: 0,
        held: Held::default(),
    };
    match answer.complete(&chain, std::future::pending()).await {
        Completion::Whole => {}
        Completion::Failed(failure) => return Err(failure.error),
        // No client watch was given.
        Completion::ClientGone => return Err(GatewayError::new(499, "client gone")),
    }
    let mut body = bytes::BytesMut::with_capacity(answer.body_bytes);
    for task in &answer.tasks {
        if let HttpTask::Body(Some(bytes), _) = task {
            body.extend_from_slice(bytes);
        }
    }
    Ok(Collected {
        status,
        body: body.freeze(),
        held: std::mem::take(&mut answer.held),
    })
}

/// Resolves when the client went away: an HTTP/2 client's stream reset, or else `h1_closed`, the
/// watch on an HTTP/1 client's socket. (An HTTP/2 connection carries other streams: its socket
/// says nothing of this one.)
async fn gone(session: &mut Session, h1_closed: &mut (impl Future<Output = ()> + Unpin)) {
    match session.downstream_session.watch_h2_stream_close() {
        Some(reset) => {
            let _ = reset.await;
        }
        None => h1_closed.await,
    }
}

fn client_left(chain: &Model) {
    log::debug!(
        "client went away; upstream calls for {} cancelled",
        chain.name
    );
}

/// What woke the dispatcher up.
enum Event {
    Task(usize, Option<HttpTask>),
    Hedge,
    Deadline,
    ClientGone,
}

/// A leg's answer: the tasks read so far (the header first).
struct Answer {
    leg: Leg,
    tasks: Vec<HttpTask>,
    ended: bool,
    /// Body bytes held in `tasks`, bounded by `max_response_bytes`.
    body_bytes: usize,
    /// Their share of `edge.max_buffered_bytes`.
    held: Held,
}

/// How reading the rest of an answer went.
enum Completion {
    Whole,
    Failed(LegFailure),
    ClientGone,
}

impl Answer {
    /// Reads the rest of the answer, within the leg's deadline.
    async fn complete(
        &mut self,
        chain: &Model,
        mut client_gone: impl Future<Output = ()> + Unpin,
    ) -> Completion {
        while !self.ended {
            tokio::select! {
                task = self.leg.rx.recv() => match task {
                    Some(HttpTask::Failed(e)) => {
                        return Completion::Failed(LegFailure::broke_off(&self.leg, Some(e)));
                    }
                    Some(task) => {
                        if let HttpTask::Body(Some(bytes), _) = &task {
                            self.body_bytes += bytes.len();
                            let limit = self.leg.call.registry.max_response_bytes;
                            if self.body_bytes > limit {
                                return Completion::Failed(LegFailure::too_large(&self.leg, limit));
                            }
                            if let Err(e) = self.held.grow(bytes.len()) {
                                return Completion::Failed(LegFailure::overloaded(&self.leg, e));
                            }
                        }
                        self.ended = task.is_end();
                        self.tasks.push(task);
                    }
                    // Closed without an end: the leg failed if Pingora says so.
                    None => match self.leg.error.try_recv() {
                        Ok(e) => return Completion::Failed(LegFailure::broke_off(&self.leg, Some(e))),
                        Err(_) => self.ended = true,
                    },
                },
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(self.leg.deadline.at)) => {
                    return Completion::Failed(LegFailure::timed_out(&self.leg, chain));
                }
                () = &mut client_gone => return Completion::ClientGone,
            }
        }
        Completion::Whole
    }

    fn mentions_context_length(&self) -> bool {
        self.tasks.iter().any(|t| match t {
            HttpTask::Body(Some(b), _) => retry::mentions_context_length(b),
            _ => false,
        })
    }
}

/// What the client gets if nothing better comes.
enum Failure {
    /// An upstream's answer (an error status), delivered as it is.
    Answer(Answer),
    /// A leg that gave no whole answer, answered for by the gateway.
    Leg(LegFailure),
}

/// A leg that ran out of time or broke off before its answer was whole.
pub(super) struct LegFailure {
    condition: FallbackCondition,
    pub(super) error: GatewayError,
    /// The leg's model, for the `x-dragoman-*` headers.
    model: Arc<Model>,
}

impl LegFailure {
    pub(super) fn timed_out(leg: &Leg, chain: &Model) -> LegFailure {
        let model = leg.call.model.clone();
        let message = if !leg.deadline.total {
            format!(
                "Model `{}` did not answer within {:?}",
                model.name, model.timeout
            )
        } else if chain.fallbacks.is_empty() {
            format!(
                "Model `{}` did not answer within {:?}",
                chain.name, chain.total_timeout
            )
        } else {
            format!(
                "Model `{}` and its fallbacks did not answer within {:?}",
                chain.name, chain.total_timeout
            )
        };
        LegFailure {
            condition: FallbackCondition::Timeout,
            error: GatewayError::new(504, message).with_code(ErrorCode::UpstreamTimeout),
            model,
        }
    }

    pub(super) fn broke_off(leg: &Leg, error: Option<Box<Error>>) -> LegFailure {
        let model = leg.call.model.clone();
        let provider = &model.provider.name;
        let condition = retry::broken_leg_condition(error.as_ref().map(|e| e.etype()));
        let error = if crate::drain::DRAIN.is_grace_over() {
            // The end of a shutdown's grace period broke it off.
            crate::drain::shutting_down()
        } else {
            error
                .and_then(|e| local_response::error_for_proxy_failure(&e, provider))
                .unwrap_or_else(|| {
                    GatewayError::new(502, format!("Provider `{provider}` gave no whole answer"))
                        .with_code(ErrorCode::UpstreamError)
                })
        };
        LegFailure {
            condition,
            error,
            model,
        }
    }

    /// A whole answer held for the client grew past `max_response_bytes`.
    fn too_large(leg: &Leg, limit: usize) -> LegFailure {
        let model = leg.call.model.clone();
        let message = format!(
            "Provider `{}` answered more than the gateway's limit of {limit} bytes",
            model.provider.name
        );
        LegFailure {
            condition: FallbackCondition::ServerError,
            error: GatewayError::new(502, message).with_code(ErrorCode::BadUpstreamResponse),
            model,
        }
    }

    /// The process-wide buffer budget had no room for the rest of a whole answer.
    fn overloaded(leg: &Leg, e: Exhausted) -> LegFailure {
        let message = format!(
            "The gateway is holding its limit of {} bytes of requests and answers; retry later",
            e.limit
        );
        LegFailure {
            condition: FallbackCondition::ServerError,
            error: GatewayError::new(503, message).with_code(ErrorCode::GatewayOverloaded),
            model: leg.call.model.clone(),
        }
    }

    /// The failure as the client's answer, with the request's attempts (over all its legs) and
    /// rate-limit readings (`call`: the client's own call).
    async fn write(self, session: &mut Session, protocol: ClientProtocol, call: &PlannedCall) {
        // The leg's model answered: the client's call has the rest.
        let served_by = ServedBy {
            model: &self.model,
            ..ServedBy::of(call, call.budget.calls_made())
        };
        local_response::write_error(session, &self.error, protocol, Some(served_by)).await;
    }
}

/// Plans the next fallback model that can be planned and is within its own rate limits (its
/// model's and its provider's; the key's were taken for the request), spending the request's
/// budget.
async fn next_fallback<'a>(
    fallbacks: &mut impl Iterator<Item = &'a String>,
    replan: &(dyn Fn(&str) -> Result<PlannedCall, GatewayError> + Send + Sync),
    budget: &Arc<RequestBudget>,
    admissions: &mut Vec<limits::Admission>,
) -> Option<Arc<PlannedCall>> {
    for name in fallbacks {
        let call = match replan(name) {
            Ok(call) => call,
            Err(e) => {
                log::warn!("fallback model {name} cannot serve this request: {e}");
                continue;
            }
        };
        let model = &call.model;
        let scopes = [None, model.limits.as_ref(), model.provider.limits.as_ref()];
        match limits::admit_more(&call.registry.limiter, scopes, call.accounting.as_ref()).await {
            Ok(admission) => admissions.extend(admission),
            Err(e) => {
                log::info!("fallback model {name} skipped: {}", e.message);
                continue;
            }
        }
        log::info!("falling back to model {name}");
        return Some(Arc::new(call.sharing_budget(budget.clone())));
    }
    None
}

/// Puts the request's attempts, over all its legs (hedges that lost and legs that timed out
/// included), in the answer's header.
fn set_attempts(tasks: &mut [HttpTask], attempts: u32) {
    if let Some(HttpTask::Header(header, _)) = tasks.first_mut() {
        let _ = header.insert_header(ATTEMPTS_HEADER, attempts.max(1).to_string());
    }
}

/// Writes tasks to the client; false when the client is gone.
async fn write(session: &mut Session, tasks: Vec<HttpTask>) -> bool {
    match session.write_response_tasks(tasks).await {
        Ok(_) => true,
        Err(e) => {
            // Gone, or not reading (`edge.write_timeout`): the connection is not reused either way.
            session.set_keepalive(None);
            log::debug!("client went away: {e}");
            false
        }
    }
}
