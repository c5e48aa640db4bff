//! Cached answers and streams, both ways, in the client's protocol: a streamed request is
//! answered from a cached whole answer as a well-formed stream, and a streamed answer is gathered
//! into the whole answer it carried, to be stored (so a later request, streamed or not, hits).
//!
//! OpenAI chat clients (`/v1/chat/completions`, [`openai`]) and Anthropic Messages clients
//! (`/v1/messages`, [`anthropic`]); streams at other endpoints bypass the cache.

pub mod anthropic;
pub mod openai;

use crate::api::ClientEndpoint;
use crate::stream::sse::{SseEvent, SseParser};
use bytes::Bytes;

/// Whether streamed requests to `endpoint` are served from and stored in the cache.
pub fn supported(endpoint: ClientEndpoint) -> bool {
    matches!(
        endpoint,
        ClientEndpoint::ChatCompletions | ClientEndpoint::Messages
    )
}

/// The stream carrying `whole` (a cached answer at `endpoint`) for a request with this body;
/// `None` when `whole` is not an answer of that endpoint.
pub fn whole_to_sse(endpoint: ClientEndpoint, whole: &[u8], request_body: &[u8]) -> Option<Bytes> {
    match endpoint {
        ClientEndpoint::ChatCompletions => {
            openai::completion_to_sse(whole, openai::asks_for_usage(request_body))
        }
        ClientEndpoint::Messages => anthropic::message_to_sse(whole),
        _ => None,
    }
}

/// Gathers one protocol's stream, event by event, into the whole answer it carried.
pub trait Gatherer {
    /// Takes one event; false when it means nothing will be stored.
    fn event(&mut self, event: &SseEvent) -> bool;
    /// The whole answer, when the stream ended properly and it is at most `limit` bytes.
    fn finish(self, limit: usize) -> Option<Bytes>;
}

/// A stream's bytes, as the client received them, parsed into events for a [`Gatherer`]: at
/// most four times `limit` of them, and no event longer than `limit`.
pub struct Gathering<G> {
    parser: SseParser,
    events: Vec<SseEvent>,
    size: usize,
    limit: usize,
    failed: bool,
    gatherer: G,
}

impl<G: Gatherer> Gathering<G> {
    pub fn new(limit: usize, gatherer: G) -> Gathering<G> {
        Gathering {
            parser: SseParser::new(limit),
            events: Vec::new(),
            size: 0,
            limit,
            failed: false,
            gatherer,
        }
    }

    /// Feeds the stream's bytes; false once nothing will be stored (malformed, refused by the
    /// gatherer, too large).
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if self.failed {
            return false;
        }
        self.size += bytes.len();
        if self.size > self.limit.saturating_mul(4)
            || self.parser.push(bytes, &mut self.events).is_err()
        {
            self.failed = true;
        }
        for event in self.events.drain(..) {
            if !self.failed {
                self.failed = !self.gatherer.event(&event);
            }
        }
        !self.failed
    }

    /// The whole answer, when every byte formed events the gatherer took and it has one.
    pub fn finish(mut self) -> Option<Bytes> {
        if self.failed || self.parser.finish() {
            return None;
        }
        self.gatherer.finish(self.limit)
    }
}

/// Gathers a stream, as the client received it, into the whole answer it carried.
pub enum StreamGather {
    OpenAi(Gathering<openai::ChunkGather>),
    Anthropic(Gathering<anthropic::EventGather>),
}

impl StreamGather {
    /// The gatherer of streams at `endpoint`, bounded by `limit` bytes of whole answer.
    pub fn new(endpoint: ClientEndpoint, limit: usize) -> Option<StreamGather> {
        match endpoint {
            ClientEndpoint::ChatCompletions => Some(StreamGather::OpenAi(Gathering::new(
                limit,
                Default::default(),
            ))),
            ClientEndpoint::Messages => Some(StreamGather::Anthropic(Gathering::new(
                limit,
                Default::default(),
            ))),
            _ => None,
        }
    }

    /// Feeds the stream's bytes; false once nothing will be stored.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        match self {
            StreamGather::OpenAi(g) => g.push(bytes),
            StreamGather::Anthropic(g) => g.push(bytes),
        }
    }

    /// The whole answer, when the stream ended properly and it fits.
    pub fn finish(self) -> Option<Bytes> {
        match self {
            StreamGather::OpenAi(g) => g.finish(),
            StreamGather::Anthropic(g) => g.finish(),
        }
    }
}
