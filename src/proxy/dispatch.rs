//! The coordinator of one client request: runs the planned upstream call as a Pingora subrequest
//! (a "leg"), and decides what reaches the client.
//!
//! - Before the first byte, a failed leg may be replaced by the next fallback model, planned afresh
//!   for its provider (`fallbacks`, `fallback_on`).
//! - `hedge` (streamed requests only): if no first byte came after the delay, a second leg is
//!   started on another instance (or the first fallback); the first answer wins and the others are
//!   cancelled. A non-streamed answer's first byte comes when all of it is generated, so its wait
//!   says nothing about a stalled upstream: those requests are not hedged.
//! - The model's `timeout` bounds the whole response (non-streaming) or the first byte (streaming).
//! - A client that goes away cancels every leg at once.
//!
//! Cancelling a leg drops its task, which drops its upstream connection.

use super::client_watch;
use super::respond::{self, Answerer};
use crate::call::UpstreamCall;
use crate::config::{FallbackCondition, HedgeConfig};
use crate::error::GatewayError;
use crate::frontend::ClientProtocol;
use crate::registry::Model;
use futures::future::{select_all, FutureExt};
use pingora_core::protocols::http::HttpTask;
use pingora_proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora_proxy::Session;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Response header naming how many upstream attempts a request took.
pub const ATTEMPTS_HEADER: &str = "x-dragoman-attempts";

/// One running subrequest.
struct Leg {
    call: Arc<UpstreamCall>,
    rx: mpsc::Receiver<HttpTask>,
    /// Held so the subrequest keeps its input open; dropping it is a cancellation signal.
    _tx: mpsc::Sender<HttpTask>,
    task: tokio::task::JoinHandle<()>,
}

impl Leg {
    fn spawn(session: &Session, call: Arc<UpstreamCall>) -> Option<Leg> {
        let spawner = session.subrequest_spawner.as_ref()?;
        let ctx = SubrequestCtx::builder()
            .body_mode(BodyMode::NoBody)
            .user_ctx(Box::new(call.clone()))
            .build();
        let (subrequest, handle) = spawner.create_subrequest(session.as_downstream(), ctx);
        let task = tokio::spawn(subrequest.run());
        Some(Leg {
            call,
            rx: handle.rx,
            _tx: handle.tx,
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
    call: Arc<UpstreamCall>,
    replan: &(dyn Fn(&str) -> Result<UpstreamCall, GatewayError> + Send + Sync),
) {
    let protocol = call.endpoint.protocol();
    let model = call.model.clone();
    let deadline = Instant::now() + model.timeout;
    let mut fallbacks = model.fallbacks.iter();
    let hedge = hedge_for(model.hedge, call.stream);
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

    let Some(first) = Leg::spawn(session, call.clone()) else {
        let e = GatewayError::new(500, "Internal gateway error").with_code("internal_error");
        return respond::write_error(session, &e, protocol, None).await;
    };
    let mut legs = vec![first];
    let mut attempts: u64 = 0;
    // The last answer that was not delivered, kept for when nothing better comes.
    let mut last_failure: Option<Answer> = None;

    // Phase 1: wait for a first answer worth delivering.
    let mut answer = loop {
        if legs.is_empty() {
            if let Some(leg) = next_fallback(&mut fallbacks, replan, session) {
                legs.push(leg);
                continue;
            }
            match last_failure.take() {
                Some(answer) => break answer,
                None => {
                    let e = GatewayError::new(502, "No upstream answered")
                        .with_code("upstream_unreachable");
                    return respond::write_error(session, &e, protocol, None).await;
                }
            }
        }
        let hedge_timer = async {
            match hedge_at {
                Some(at) if hedges_left > 0 => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            // `legs` is not empty here, which select_all requires.
            (task, index, _) = select_all(legs.iter_mut().map(|l| Box::pin(l.rx.recv()))) => {
                Event::Task(index, task)
            }
            () = hedge_timer => Event::Hedge,
            () = tokio::time::sleep_until(deadline) => Event::Deadline,
            () = &mut client_gone => Event::ClientGone,
        };
        match event {
            Event::Task(index, task) => {
                let leg = legs.swap_remove(index);
                // A leg that ended without a header has nothing to say; others may.
                let Some(HttpTask::Header(header, ended)) = task else {
                    continue;
                };
                attempts += attempts_of(&header);
                let condition = failure_condition(header.status.as_u16());
                let mut answer = Answer {
                    leg,
                    tasks: vec![HttpTask::Header(header, ended)],
                    ended,
                };
                let condition = match condition {
                    Some(FallbackCondition::ContextLength) => {
                        // Only the body tells a context window error from other 400s.
                        answer.read_to_end().await;
                        answer
                            .mentions_context_length()
                            .then_some(FallbackCondition::ContextLength)
                    }
                    other => other,
                };
                // The client's model decides for the whole chain, whichever model answered.
                if falls_back(condition, &model.fallback_on, !model.fallbacks.is_empty()) {
                    last_failure = Some(answer);
                } else {
                    break answer;
                }
            }
            Event::Hedge => {
                hedges_left -= 1;
                hedge_at = hedge.map(|h| Instant::now() + h.after.0);
                // Another instance of the same model, or else the next fallback, which the
                // hedge then uses up (a later failure moves on to the one after it).
                let hedge = if model.provider.endpoint_count > 1 {
                    Leg::spawn(session, call.clone())
                } else {
                    next_fallback(&mut fallbacks, replan, session)
                };
                if let Some(leg) = hedge {
                    log::debug!("hedging {} after no first byte", model.name);
                    legs.push(leg);
                }
            }
            Event::Deadline => {
                legs.clear();
                if model.fallback_on.contains(&FallbackCondition::Timeout) {
                    if let Some(leg) = next_fallback(&mut fallbacks, replan, session) {
                        legs.push(leg);
                        continue;
                    }
                }
                return timed_out(session, &model, protocol).await;
            }
            Event::ClientGone => {
                log::debug!(
                    "client went away; upstream calls for {} cancelled",
                    model.name
                );
                return;
            }
        }
    };
    drop(legs); // hedges that lost
    drop(last_failure);

    // Phase 2: deliver the winner's answer. Streams go out as they come; other answers are held
    // until complete, so that the whole-response timeout can still answer 504.
    if let Some(HttpTask::Header(header, _)) = answer.tasks.first_mut() {
        let _ = header.insert_header(ATTEMPTS_HEADER, attempts.max(1).to_string());
    }
    let streaming = answer.leg.call.stream;
    if streaming && !write(session, std::mem::take(&mut answer.tasks)).await {
        return;
    }
    while !answer.ended {
        let whole_response_deadline = async {
            if streaming {
                std::future::pending().await
            } else {
                tokio::time::sleep_until(deadline).await
            }
        };
        tokio::select! {
            task = answer.leg.rx.recv() => {
                let Some(task) = task else { break };
                answer.ended = task.is_end() || matches!(task, HttpTask::Failed(_));
                if streaming {
                    if !write(session, vec![task]).await {
                        return;
                    }
                } else {
                    answer.tasks.push(task);
                }
            }
            () = whole_response_deadline => {
                drop(answer);
                return timed_out(session, &model, protocol).await;
            }
            () = &mut client_gone => {
                log::debug!("client went away; upstream call for {} cancelled", model.name);
                return;
            }
        }
    }
    if !answer.tasks.is_empty() {
        write(session, answer.tasks).await;
    }
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
}

impl Answer {
    async fn read_to_end(&mut self) {
        while !self.ended {
            match self.leg.rx.recv().await {
                Some(task) => {
                    self.ended = task.is_end() || matches!(task, HttpTask::Failed(_));
                    self.tasks.push(task);
                }
                None => self.ended = true,
            }
        }
    }

    fn mentions_context_length(&self) -> bool {
        const MARKERS: &[&str] = &[
            "context_length_exceeded",
            "maximum context length",
            "context window",
            "prompt is too long",
            "too many tokens",
            "exceeds the maximum number of tokens",
        ];
        self.tasks.iter().any(|t| match t {
            HttpTask::Body(Some(b), _) => {
                let text = String::from_utf8_lossy(b).to_ascii_lowercase();
                MARKERS.iter().any(|m| text.contains(m))
            }
            _ => false,
        })
    }
}

async fn timed_out(session: &mut Session, model: &Model, protocol: ClientProtocol) {
    let e = GatewayError::new(
        504,
        format!(
            "Model `{}` did not answer within {:?}",
            model.name, model.timeout
        ),
    )
    .with_code("upstream_timeout");
    let answerer = Answerer {
        model: &model.name,
        provider: &model.provider.name,
        attempts: 0,
    };
    respond::write_error(session, &e, protocol, Some(answerer)).await;
}

/// Plans and starts the next fallback model that can be planned.
fn next_fallback<'a>(
    fallbacks: &mut impl Iterator<Item = &'a String>,
    replan: &(dyn Fn(&str) -> Result<UpstreamCall, GatewayError> + Send + Sync),
    session: &Session,
) -> Option<Leg> {
    for name in fallbacks {
        match replan(name) {
            Ok(call) => {
                log::info!("falling back to model {name}");
                return Leg::spawn(session, Arc::new(call));
            }
            Err(e) => log::warn!("fallback model {name} cannot serve this request: {e}"),
        }
    }
    None
}

fn attempts_of(header: &pingora_http::ResponseHeader) -> u64 {
    header
        .headers
        .get(ATTEMPTS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The one classification of failed answers for fallbacks (README, "Failures"): 429 is rate
/// limited, 504/408 a timeout, other 5xx (529 and the gateway's own 502/503 included) a server
/// error, and a 400/413 may be a context window error. Everything else is delivered as it is.
fn failure_condition(status: u16) -> Option<FallbackCondition> {
    match status {
        429 => Some(FallbackCondition::RateLimited),
        504 | 408 => Some(FallbackCondition::Timeout),
        500..=599 => Some(FallbackCondition::ServerError),
        400 | 413 => Some(FallbackCondition::ContextLength),
        _ => None,
    }
}

/// Whether a failed answer moves the request on to the next fallback: its condition is one the
/// client's model falls back on, and that model has fallbacks. The client's model's `fallbacks`
/// and `fallback_on` govern the whole chain; a fallback model's own play no part.
fn falls_back(
    condition: Option<FallbackCondition>,
    fallback_on: &[FallbackCondition],
    has_fallbacks: bool,
) -> bool {
    has_fallbacks && condition.is_some_and(|c| fallback_on.contains(&c))
}

/// The hedging that applies to a request: a model's `hedge` for streamed requests, whose time to
/// first byte is the time to first token, and none for the others, whose first byte comes only
/// once the whole answer is generated (hedging them would double every long generation).
fn hedge_for(hedge: Option<HedgeConfig>, stream: bool) -> Option<HedgeConfig> {
    hedge.filter(|_| stream)
}

/// Writes tasks to the client; false when the client is gone.
async fn write(session: &mut Session, tasks: Vec<HttpTask>) -> bool {
    match session.write_response_tasks(tasks).await {
        Ok(_) => true,
        Err(e) => {
            log::debug!("client went away: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FallbackCondition::*;

    #[test]
    fn statuses_are_classified_once() {
        assert_eq!(failure_condition(429), Some(RateLimited));
        assert_eq!(failure_condition(504), Some(Timeout));
        assert_eq!(failure_condition(408), Some(Timeout));
        for status in [500, 502, 503, 529] {
            assert_eq!(failure_condition(status), Some(ServerError), "{status}");
        }
        assert_eq!(failure_condition(400), Some(ContextLength));
        assert_eq!(failure_condition(413), Some(ContextLength));
        for status in [200, 201, 401, 403, 404, 422] {
            assert_eq!(failure_condition(status), None, "{status}");
        }
    }

    #[test]
    fn only_streams_are_hedged() {
        let hedge = HedgeConfig {
            after: crate::config::HumanDuration(std::time::Duration::from_millis(200)),
            max: 2,
        };
        assert_eq!(hedge_for(Some(hedge), true), Some(hedge));
        assert_eq!(hedge_for(Some(hedge), false), None);
        assert_eq!(hedge_for(None, true), None);
    }

    #[test]
    fn only_listed_failures_fall_back_and_only_with_fallbacks() {
        let on = [ServerError, Timeout];
        assert!(falls_back(Some(ServerError), &on, true));
        assert!(falls_back(Some(Timeout), &on, true));
        assert!(!falls_back(Some(RateLimited), &on, true));
        assert!(!falls_back(None, &on, true));
        assert!(!falls_back(Some(ServerError), &on, false));
        assert!(!falls_back(Some(ServerError), &[], true));
    }
}
