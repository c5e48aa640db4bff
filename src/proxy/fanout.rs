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
use crate::api::fanout::{self, ItemResult};
use crate::api::{ClientEndpoint, ClientRequest};
use crate::buffers::Held;
use crate::error::GatewayError;
use crate::registry::Registry;
use bytes::Bytes;
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
    if compare.stream {
        return Err(GatewayError::bad_request(
            "A compare request cannot stream: leave `stream` out, or ask each model on its own",
        ));
    }
    prepare_legs(session);
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
    // Held while the request runs. Neither semaphore is ever closed.
    let _in_batch = batch_slots.acquire().await;
    let _in_all = registry.batch_slots.acquire().await;
    run_one(session, registry, key, None, request.get().as_bytes()).await
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
                answer_of(session, registry, key, &request).await,
            )
        }
        Err(e) => (model.map(str::to_owned), Err(e)),
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
) -> Result<dispatch::Collected, GatewayError> {
    if request.envelope.stream {
        return Err(GatewayError::bad_request(
            "A request in a batch cannot stream: leave `stream` out",
        ));
    }
    let (admission, call) = ingress::admit_and_plan(session, registry, key, request).await?;
    let collected = dispatch::collect(session, Arc::new(call)).await;
    // The request's concurrency slots and token settling last until its answer is whole.
    drop(admission);
    collected
}
