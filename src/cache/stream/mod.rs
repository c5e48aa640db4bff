//! Cached answers and streams, both ways, in the client's protocol: a streamed request is
//! answered from a cached whole answer as a well-formed stream, and a streamed answer is gathered
//! into the whole answer it carried, to be stored (so a later request, streamed or not, hits).
//!
//! OpenAI chat clients (`/v1/chat/completions`, [`openai`]) and Anthropic Messages clients
//! (`/v1/messages`, [`anthropic`]); streams at other endpoints bypass the cache.

pub mod anthropic;
pub mod openai;

use crate::api::ClientEndpoint;
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

/// Gathers a stream, as the client received it, into the whole answer it carried.
pub enum StreamGather {
    OpenAi(openai::ChunkGather),
    Anthropic(anthropic::EventGather),
}

impl StreamGather {
    /// The gatherer of streams at `endpoint`, bounded by `limit` bytes of whole answer.
    pub fn new(endpoint: ClientEndpoint, limit: usize) -> Option<StreamGather> {
        match endpoint {
            ClientEndpoint::ChatCompletions => {
                Some(StreamGather::OpenAi(openai::ChunkGather::new(limit)))
            }
            ClientEndpoint::Messages => {
                Some(StreamGather::Anthropic(anthropic::EventGather::new(limit)))
            }
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
