//! Streams on their way to the client: translated event by event (upstream parser, provider
//! source, client sink), or passed through with a watch for the terminal event so that a cut
//! stream never ends looking like a success. Azure's OpenAI streams pass through an event filter
//! that drops its annotation chunks ([`AzureChunkFilter`]).

pub mod chunk;
pub mod event_filter;
pub mod redact;
pub mod sse;

use crate::api::anthropic::AnthropicEventSink;
use crate::api::openai::stream::OpenAiEventSink;
use crate::api::ClientProtocol;
use crate::error::GatewayError;
use crate::stream::chunk::{ChunkSource, StreamOut};
use crate::stream::sse::SseParser;
use bytes::Bytes;

/// Largest single upstream event accepted (tool arguments and images can be large).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

pub enum ClientSink {
    OpenAi(OpenAiEventSink),
    Anthropic(Box<AnthropicEventSink>),
}

impl ClientSink {
    fn write(&mut self, item: &StreamOut, out: &mut Vec<u8>) {
        match self {
            ClientSink::OpenAi(s) => s.write(item, out),
            ClientSink::Anthropic(s) => s.write(item, out),
        }
    }
}

/// A translated stream: upstream bytes in, client bytes out.
pub struct StreamTranslation {
    parser: SseParser,
    source: Box<dyn ChunkSource>,
    sink: ClientSink,
    events: Vec<crate::stream::sse::SseEvent>,
    items: Vec<StreamOut>,
    ended: bool,
    /// The provider's key, kept out of the errors the client sees.
    secret: Option<Box<str>>,
}

impl StreamTranslation {
    pub fn new(source: Box<dyn ChunkSource>, sink: ClientSink) -> Self {
        StreamTranslation {
            parser: SseParser::new(MAX_EVENT_BYTES),
            source,
            sink,
            events: Vec::new(),
            items: Vec::new(),
            ended: false,
            secret: None,
        }
    }

    /// Replaces `secret` (the provider's key) wherever an upstream error event echoes it, before
    /// the error reaches the client.
    pub fn redacting(mut self, secret: &str) -> Self {
        self.secret = (!secret.is_empty()).then(|| secret.into());
        self
    }

    /// Upstream bytes -> the client bytes they complete (possibly none).
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if let Err(e) = self.parser.push(bytes, &mut self.events) {
            self.items.clear();
            self.fail(GatewayError::bad_upstream(e.to_string()), out);
            return;
        }
        for event in self.events.drain(..) {
            self.source.on_event(&event, &mut self.items);
        }
        self.flush(out);
    }

    /// The upstream's body ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.parser.finish();
        self.source.on_end(&mut self.items);
        self.flush(out);
        self.ended = true;
    }

    /// The tokens the upstream's stream reported, where its source reads them.
    pub fn usage(&self) -> Option<crate::limits::usage::TokenUsage> {
        self.source.usage()
    }

    /// The upstream failed mid-stream: a terminal error event in the client's protocol.
    pub fn fail(&mut self, error: GatewayError, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.sink.write(&StreamOut::Error(error), out);
        self.ended = true;
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        for mut item in self.items.drain(..) {
            if let (StreamOut::Error(e), Some(secret)) = (&mut item, &self.secret) {
                e.redact(secret);
            }
            let terminal = item.is_terminal();
            self.sink.write(&item, out);
            if terminal {
                self.ended = true;
                break;
            }
        }
        self.items.clear();
    }
}

/// Watches a passed-through stream for its terminal event (`data: [DONE]` for OpenAI,
/// `message_stop` for Anthropic), looking only at the last bytes seen.
pub struct TerminalWatch {
    marker: &'static [u8],
    tail: Vec<u8>,
}

const TAIL: usize = 128;

impl TerminalWatch {
    pub fn new(protocol: ClientProtocol) -> Self {
        TerminalWatch {
            marker: match protocol {
                ClientProtocol::OpenAi => b"data: [DONE]",
                ClientProtocol::Anthropic => b"message_stop",
            },
            tail: Vec::with_capacity(TAIL * 2),
        }
    }

    pub fn observe(&mut self, bytes: &[u8]) {
        if bytes.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - TAIL..]);
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > TAIL {
                self.tail.drain(..self.tail.len() - TAIL);
            }
        }
    }

    /// Whether the stream's last event was its terminal one.
    pub fn ended_properly(&self) -> bool {
        self.tail
            .windows(self.marker.len())
            .any(|w| w == self.marker)
    }
}

/// A filter over a stream already in the client's protocol, for provider kinds whose streams
/// carry events a client must not see (a provider's dialect supplies it). Events it keeps go on
/// byte for byte.
pub trait NativeStreamFilter: Send + Sync {
    /// Upstream bytes -> the bytes the client gets for them (possibly none, until an event
    /// completes). `Err` when the stream cannot go on; nothing passes after that.
    fn filter(&mut self, input: &Bytes) -> Result<Bytes, GatewayError>;
    /// Whether the stream's last event was its terminal one.
    fn ended_properly(&self) -> bool;
    /// Whether `filter` failed.
    fn has_failed(&self) -> bool;
}

/// A terminal error event in the client's protocol, for streams that are passed through.
pub fn error_event(protocol: ClientProtocol, error: &GatewayError) -> Vec<u8> {
    let mut out = Vec::new();
    match protocol {
        ClientProtocol::OpenAi => {
            OpenAiEventSink::new().write(&StreamOut::Error(error.clone()), &mut out)
        }
        ClientProtocol::Anthropic => {
            out.extend_from_slice(b"event: error\ndata: ");
            out.extend_from_slice(&crate::api::anthropic::error_body(error));
            out.extend_from_slice(b"\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_watch_sees_the_last_event_across_chunks() {
        let mut w = TerminalWatch::new(ClientProtocol::OpenAi);
        w.observe(b"data: {\"x\":1}\n\ndata: [DO");
        assert!(!w.ended_properly());
        w.observe(b"NE]\n\n");
        assert!(w.ended_properly());
        let mut w = TerminalWatch::new(ClientProtocol::Anthropic);
        w.observe(&[b' '; 1000]);
        w.observe(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        assert!(w.ended_properly());
        let mut w = TerminalWatch::new(ClientProtocol::Anthropic);
        w.observe(b"event: message_delta\ndata: {}\n\n");
        assert!(!w.ended_properly());
    }

    #[test]
    fn translation_stops_after_a_terminal_item_and_fails_once() {
        let mut t = StreamTranslation::new(
            Box::new(crate::providers::openai::OpenAiChunkSource::new()),
            ClientSink::OpenAi(OpenAiEventSink::new()),
        );
        let mut out = Vec::new();
        t.feed(
            b"data: {\"id\":\"a\"}\n\ndata: [DONE]\n\ndata: {\"id\":\"b\"}\n\n",
            &mut out,
        );
        t.finish(&mut out);
        t.fail(GatewayError::new(502, "late"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"id\":\"a\"}\n\ndata: [DONE]\n\n"
        );
        let mut t = StreamTranslation::new(
            Box::new(crate::providers::openai::OpenAiChunkSource::new()),
            ClientSink::OpenAi(OpenAiEventSink::new()),
        );
        let mut out = Vec::new();
        t.feed(b"data: {\"id\":\"a\"}\n\n", &mut out);
        t.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("stream_truncated"), "{text}");
        assert!(!text.contains("[DONE]"));
    }
}
