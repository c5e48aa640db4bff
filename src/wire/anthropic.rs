//! Anthropic's Messages API on the wire, for both directions: `providers::anthropic` reads
//! upstream answers and stream events with the types of [`read`]; `api::anthropic` writes answers
//! and events for its clients with the types of [`write`]. The vocabulary both share, and the
//! mapping of each term onto OpenAI's, is here: [`StopReason`] (to and from `finish_reason`),
//! [`Usage`] (to and from OpenAI usage), [`ErrorType`] (from and to statuses) and [`EventKind`].

use crate::error::GatewayError;
use crate::wire::lenient::{lenient, lenient_enums, lenient_structs};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Stop reasons
// ---------------------------------------------------------------------------------------------

/// Why a message ended: the `stop_reason` of a message and of `message_delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    PauseTurn,
    Refusal,
    /// A reason added after this was written. Never written.
    #[serde(other, skip_serializing)]
    Other,
}

impl StopReason {
    /// OpenAI's `finish_reason` for a message that ended for `reason` (`None`: no reason given).
    pub fn to_finish_reason(reason: Option<StopReason>) -> &'static str {
        match reason {
            Some(StopReason::MaxTokens) => "length",
            Some(StopReason::ToolUse) => "tool_calls",
            Some(StopReason::Refusal) => "content_filter",
            // end_turn, stop_sequence, pause_turn, null and reasons added after this was written.
            Some(
                StopReason::EndTurn
                | StopReason::StopSequence
                | StopReason::PauseTurn
                | StopReason::Other,
            )
            | None => "stop",
        }
    }

    /// The reason for OpenAI's `finish_reason`, the inverse of [`Self::to_finish_reason`].
    /// Backends that answer tool calls with `stop` (Ollama, some vLLM versions) still get
    /// `tool_use`, since Anthropic clients run tools on that reason.
    pub fn from_finish_reason(finish: Option<&str>, has_tool_use: bool) -> StopReason {
        match finish {
            Some("length") => StopReason::MaxTokens,
            Some("tool_calls" | "function_call") => StopReason::ToolUse,
            Some("content_filter") => StopReason::Refusal,
            // stop, null, and reasons added after this was written.
            _ if has_tool_use => StopReason::ToolUse,
            _ => StopReason::EndTurn,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

/// Token counts, as a message and the stream events carry them. Anthropic counts cached prompt
/// tokens apart from `input_tokens`; OpenAI counts them inside `prompt_tokens`. A count that is
/// absent (or not a count) is `None`, and is not written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Usage {
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_tokens: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_tokens: Option<u64>,
}

impl Usage {
    /// Input (cache reads and writes included) and output tokens.
    pub fn tokens(&self) -> crate::limits::usage::TokenUsage {
        crate::limits::usage::TokenUsage {
            input: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0)),
            output: self.output_tokens.unwrap_or(0),
            cached_input: self.cache_read_input_tokens.unwrap_or(0),
            reasoning: 0,
        }
    }

    /// Stream events carry cumulative counts: those `newer` has replace these, none are added.
    pub fn update(&mut self, newer: &Usage) {
        let fields = [
            (&mut self.input_tokens, newer.input_tokens),
            (
                &mut self.cache_read_input_tokens,
                newer.cache_read_input_tokens,
            ),
            (
                &mut self.cache_creation_input_tokens,
                newer.cache_creation_input_tokens,
            ),
            (&mut self.output_tokens, newer.output_tokens),
        ];
        for (slot, count) in fields {
            if count.is_some() {
                *slot = count;
            }
        }
    }

    /// OpenAI's usage object; cached prompt tokens are folded back into `prompt_tokens`.
    pub fn to_openai(&self) -> Value {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cache_read)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        let completion = self.output_tokens.unwrap_or(0);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": { "cached_tokens": cache_read },
        })
    }

    /// From OpenAI's usage object: cached prompt tokens leave `input_tokens` for
    /// `cache_read_input_tokens`, written only when there are some.
    pub fn from_openai(usage: Option<&Value>) -> Usage {
        let count = |pointer: &str| {
            usage
                .and_then(|u| u.pointer(pointer))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let cache_read = count("/prompt_tokens_details/cached_tokens");
        Usage {
            input_tokens: Some(count("/prompt_tokens").saturating_sub(cache_read)),
            cache_read_input_tokens: (cache_read > 0).then_some(cache_read),
            cache_creation_input_tokens: None,
            output_tokens: Some(count("/completion_tokens")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Anthropic's error types: the `error.type` of an error body or `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    AuthenticationError,
    BillingError,
    PermissionError,
    NotFoundError,
    RequestTooLarge,
    RateLimitError,
    ApiError,
    TimeoutError,
    OverloadedError,
    /// A type added after this was written. Never written.
    #[serde(other, skip_serializing)]
    Other,
}

impl ErrorType {
    const ALL: [ErrorType; 10] = [
        ErrorType::InvalidRequestError,
        ErrorType::AuthenticationError,
        ErrorType::BillingError,
        ErrorType::PermissionError,
        ErrorType::NotFoundError,
        ErrorType::RequestTooLarge,
        ErrorType::RateLimitError,
        ErrorType::ApiError,
        ErrorType::TimeoutError,
        ErrorType::OverloadedError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequestError => "invalid_request_error",
            ErrorType::AuthenticationError => "authentication_error",
            ErrorType::BillingError => "billing_error",
            ErrorType::PermissionError => "permission_error",
            ErrorType::NotFoundError => "not_found_error",
            ErrorType::RequestTooLarge => "request_too_large",
            ErrorType::RateLimitError => "rate_limit_error",
            ErrorType::ApiError => "api_error",
            ErrorType::TimeoutError => "timeout_error",
            ErrorType::OverloadedError => "overloaded_error",
            ErrorType::Other => "api_error",
        }
    }

    /// The type named `name`, if Anthropic has one of that name.
    pub fn from_name(name: &str) -> Option<ErrorType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The type Anthropic gives an error of this HTTP status.
    pub fn for_status(status: u16) -> ErrorType {
        match status {
            401 => ErrorType::AuthenticationError,
            402 => ErrorType::BillingError,
            403 => ErrorType::PermissionError,
            404 => ErrorType::NotFoundError,
            408 | 504 => ErrorType::TimeoutError,
            413 => ErrorType::RequestTooLarge,
            429 => ErrorType::RateLimitError,
            529 => ErrorType::OverloadedError,
            400..=499 => ErrorType::InvalidRequestError,
            _ => ErrorType::ApiError,
        }
    }

    /// The type of a gateway error: its kind when that is an Anthropic type, else its status's.
    pub fn for_error(e: &GatewayError) -> ErrorType {
        e.kind
            .as_deref()
            .and_then(ErrorType::from_name)
            .unwrap_or_else(|| ErrorType::for_status(e.status))
    }

    /// The status the client gets for an `error` event in the middle of an upstream's stream,
    /// whose HTTP status was already 200: the types an upstream sends mid-stream keep theirs,
    /// every other is a 500.
    pub fn mid_stream_status(kind: Option<ErrorType>) -> u16 {
        match kind {
            Some(ErrorType::OverloadedError) => 529,
            Some(ErrorType::RateLimitError) => 429,
            Some(ErrorType::InvalidRequestError) => 400,
            _ => 500,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream events
// ---------------------------------------------------------------------------------------------

/// The events of a Messages stream: the `event:` name of each, and the `type` of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MessageStart,
    ContentBlockStart,
    ContentBlockDelta,
    ContentBlockStop,
    MessageDelta,
    MessageStop,
    Ping,
    Error,
    /// An event added after this was written.
    #[serde(other)]
    Other,
}

impl EventKind {
    const ALL: [EventKind; 8] = [
        EventKind::MessageStart,
        EventKind::ContentBlockStart,
        EventKind::ContentBlockDelta,
        EventKind::ContentBlockStop,
        EventKind::MessageDelta,
        EventKind::MessageStop,
        EventKind::Ping,
        EventKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessageStart => "message_start",
            EventKind::ContentBlockStart => "content_block_start",
            EventKind::ContentBlockDelta => "content_block_delta",
            EventKind::ContentBlockStop => "content_block_stop",
            EventKind::MessageDelta => "message_delta",
            EventKind::MessageStop => "message_stop",
            EventKind::Ping => "ping",
            EventKind::Error => "error",
            EventKind::Other => "",
        }
    }

    /// The kind of an `event:` name; [`EventKind::Other`] for names added after this was written.
    pub fn from_name(name: &str) -> EventKind {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .unwrap_or(EventKind::Other)
    }
}

lenient_enums!(StopReason, ErrorType, EventKind);
lenient_structs!(Usage);

// ---------------------------------------------------------------------------------------------
// Reading: upstream answers and events
// ---------------------------------------------------------------------------------------------

/// What an upstream sends, read leniently: every field is optional, a field of the wrong type
/// reads as absent, unknown fields are skipped, and kinds added after this was written read as
/// `Other`. Tool `input` stays a tree, to be passed on as it is.
pub mod read {
    use super::{ErrorType, EventKind, StopReason, Usage};
    use crate::wire::lenient::{lenient, lenient_enums, lenient_structs};
    use serde::Deserialize;
    use serde_json::Value;

    /// A whole answer (`"type": "message"`), an error body (`"type": "error"`), and the message
    /// of `message_start`.
    #[derive(Debug, Default, Deserialize)]
    pub struct Message {
        #[serde(rename = "type", default, deserialize_with = "lenient")]
        pub kind: Option<MessageKind>,
        #[serde(default, deserialize_with = "lenient")]
        pub id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pub model: Option<String>,
        /// `None` unless a list; items that are not objects are left out.
        #[serde(default, deserialize_with = "lenient")]
        pub content: Option<Vec<ContentBlock>>,
        #[serde(default, deserialize_with = "lenient")]
        pub stop_reason: Option<StopReason>,
        #[serde(default, deserialize_with = "lenient")]
        pub usage: Option<Usage>,
        /// The error of an error body.
        #[serde(default, deserialize_with = "lenient")]
        pub error: Option<ErrorDetail>,
    }

    /// The `type` of a top-level body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum MessageKind {
        Message,
        Error,
        #[serde(other)]
        Other,
    }

    /// One content block of a message, or the block of `content_block_start`.
    #[derive(Debug, Default, Deserialize)]
    pub struct ContentBlock {
        #[serde(rename = "type", default, deserialize_with = "lenient")]
        pub kind: Option<BlockKind>,
        #[serde(default, deserialize_with = "lenient")]
        pub text: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pub thinking: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pub id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pub name: Option<String>,
        /// A `tool_use` block's input, any JSON but `null`.
        #[serde(default)]
        pub input: Option<Value>,
    }

    /// The blocks the gateway reads; `redacted_thinking`, server tool blocks and blocks added
    /// after this was written have no OpenAI counterpart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum BlockKind {
        Text,
        Thinking,
        ToolUse,
        #[serde(other)]
        Other,
    }

    /// `error` of an error body or an `error` event.
    #[derive(Debug, Default, Deserialize)]
    pub struct ErrorDetail {
        #[serde(rename = "type", default, deserialize_with = "lenient")]
        pub kind: Option<ErrorType>,
        #[serde(default, deserialize_with = "lenient")]
        pub message: Option<String>,
    }

    /// Any event's data, for its `type` alone (streams relayed without `event:` names).
    #[derive(Debug, Default, Deserialize)]
    pub struct EventType {
        #[serde(rename = "type", default, deserialize_with = "lenient")]
        pub kind: Option<EventKind>,
    }

    /// The data of an event whose fields are not read (`ping`, `content_block_stop`,
    /// `message_stop`): it must still be a JSON object.
    #[derive(Debug, Default, Deserialize)]
    pub struct Unread {}

    /// `message_start`.
    #[derive(Debug, Default, Deserialize)]
    pub struct MessageStart {
        #[serde(default, deserialize_with = "lenient")]
        pub message: Option<Message>,
    }

    /// `content_block_start`.
    #[derive(Debug, Default, Deserialize)]
    pub struct ContentBlockStart {
        #[serde(default, deserialize_with = "lenient")]
        pub index: Option<u64>,
        #[serde(default, deserialize_with = "lenient")]
        pub content_block: Option<ContentBlock>,
    }

    /// `content_block_delta`.
    #[derive(Debug, Default, Deserialize)]
    pub struct ContentBlockDelta {
        #[serde(default, deserialize_with = "lenient")]
        pub index: Option<u64>,
        #[serde(default, deserialize_with = "lenient")]
        pub delta: Option<Delta>,
    }

    /// The delta of `content_block_delta`.
    #[derive(Debug, Default, Deserialize)]
    pub struct Delta {
        #[serde(rename = "type", default, deserialize_with = "lenient")]
        pub kind: Option<DeltaKind>,
        #[serde(default, deserialize_with = "lenient")]
        pub text: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pub thinking: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pub partial_json: Option<String>,
    }

    /// The deltas the gateway reads; `signature_delta`, `citations_delta` and deltas added after
    /// this was written have no OpenAI counterpart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum DeltaKind {
        TextDelta,
        ThinkingDelta,
        InputJsonDelta,
        #[serde(other)]
        Other,
    }

    /// `message_delta`.
    #[derive(Debug, Default, Deserialize)]
    pub struct MessageDelta {
        #[serde(default, deserialize_with = "lenient")]
        pub delta: Option<MessageDeltaBody>,
        #[serde(default, deserialize_with = "lenient")]
        pub usage: Option<Usage>,
    }

    /// The delta of `message_delta`.
    #[derive(Debug, Default, Deserialize)]
    pub struct MessageDeltaBody {
        #[serde(default, deserialize_with = "lenient")]
        pub stop_reason: Option<StopReason>,
    }

    /// `error`.
    #[derive(Debug, Default, Deserialize)]
    pub struct ErrorEvent {
        #[serde(default, deserialize_with = "lenient")]
        pub error: Option<ErrorDetail>,
    }

    lenient_enums!(MessageKind, BlockKind, DeltaKind);
    lenient_structs!(
        Message,
        ContentBlock,
        ErrorDetail,
        EventType,
        Unread,
        MessageStart,
        ContentBlockStart,
        ContentBlockDelta,
        Delta,
        MessageDelta,
        MessageDeltaBody,
        ErrorEvent,
    );
}

// ---------------------------------------------------------------------------------------------
// Writing: answers and events for clients
// ---------------------------------------------------------------------------------------------

/// What the front door writes, in Anthropic's key order (`type` first, then as Anthropic writes
/// each object): clients and golden fixtures compare bytes.
pub mod write {
    use super::{ErrorType, EventKind, StopReason, Usage};
    use serde::Serialize;
    use serde_json::Value;

    /// A whole answer, and the message of `message_start`.
    #[derive(Debug, Serialize)]
    pub struct Message<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        role: &'static str,
        model: &'a str,
        content: &'a [ContentBlock<'a>],
        stop_reason: Option<StopReason>,
        /// Always null: the gateway does not know which stop sequence ended a message.
        stop_sequence: (),
        usage: Usage,
    }

    impl<'a> Message<'a> {
        pub fn new(
            id: &'a str,
            model: &'a str,
            content: &'a [ContentBlock<'a>],
            stop_reason: Option<StopReason>,
            usage: Usage,
        ) -> Self {
            Message {
                id,
                kind: "message",
                role: "assistant",
                model,
                content,
                stop_reason,
                stop_sequence: (),
                usage,
            }
        }
    }

    /// A content block of a message, or the (empty) block of `content_block_start`.
    #[derive(Debug, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ContentBlock<'a> {
        Text {
            text: &'a str,
        },
        Thinking {
            thinking: &'a str,
            signature: &'a str,
        },
        ToolUse {
            id: &'a str,
            name: &'a str,
            input: &'a Value,
        },
    }

    /// The delta of `content_block_delta`.
    #[derive(Debug, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Delta<'a> {
        TextDelta { text: &'a str },
        ThinkingDelta { thinking: &'a str },
        InputJsonDelta { partial_json: &'a str },
    }

    /// The delta of `message_delta`.
    #[derive(Debug, Serialize)]
    pub struct MessageDelta {
        stop_reason: StopReason,
        /// Always null, as in [`Message`].
        stop_sequence: (),
    }

    impl MessageDelta {
        pub fn new(stop_reason: StopReason) -> Self {
            MessageDelta {
                stop_reason,
                stop_sequence: (),
            }
        }
    }

    /// `error` of an error body or an `error` event.
    #[derive(Debug, Serialize)]
    pub struct ErrorDetail<'a> {
        #[serde(rename = "type")]
        pub kind: ErrorType,
        pub message: &'a str,
    }

    /// One stream event's data.
    #[derive(Debug, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Event<'a> {
        MessageStart {
            message: Message<'a>,
        },
        Ping,
        ContentBlockStart {
            index: u64,
            content_block: ContentBlock<'a>,
        },
        ContentBlockDelta {
            index: u64,
            delta: Delta<'a>,
        },
        ContentBlockStop {
            index: u64,
        },
        MessageDelta {
            delta: MessageDelta,
            usage: Usage,
        },
        MessageStop,
        /// Also the whole error body of a failed request.
        Error {
            error: ErrorDetail<'a>,
        },
    }

    impl Event<'_> {
        pub fn kind(&self) -> EventKind {
            match self {
                Event::MessageStart { .. } => EventKind::MessageStart,
                Event::Ping => EventKind::Ping,
                Event::ContentBlockStart { .. } => EventKind::ContentBlockStart,
                Event::ContentBlockDelta { .. } => EventKind::ContentBlockDelta,
                Event::ContentBlockStop { .. } => EventKind::ContentBlockStop,
                Event::MessageDelta { .. } => EventKind::MessageDelta,
                Event::MessageStop => EventKind::MessageStop,
                Event::Error { .. } => EventKind::Error,
            }
        }

        /// Appends the event as SSE: `event: NAME\ndata: JSON\n\n`.
        pub fn write_sse(&self, out: &mut Vec<u8>) {
            let start = out.len();
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(self.kind().as_str().as_bytes());
            out.extend_from_slice(b"\ndata: ");
            // Serialising into a Vec fails only on a value that is never written (a kind's
            // `Other`); then the event is left out whole.
            if serde_json::to_writer(&mut *out, self).is_err() {
                out.truncate(start);
                return;
            }
            out.extend_from_slice(b"\n\n");
        }
    }

    /// An error body: `{"type":"error","error":{"type":..,"message":..}}`.
    pub fn error_body(kind: ErrorType, message: &str) -> Vec<u8> {
        let event = Event::Error {
            error: ErrorDetail { kind, message },
        };
        // As in `Event::write_sse`: only a never-written `Other` could fail.
        serde_json::to_vec(&event).unwrap_or_else(|_| {
            let fallback = Event::Error {
                error: ErrorDetail {
                    kind: ErrorType::ApiError,
                    message,
                },
            };
            serde_json::to_vec(&fallback).unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_with_serde() {
        for kind in EventKind::ALL {
            let read: EventKind =
                serde_json::from_value(json!(kind.as_str())).expect("a known name");
            assert_eq!(read, kind);
            assert_eq!(EventKind::from_name(kind.as_str()), kind);
        }
        assert_eq!(EventKind::from_name("future_event"), EventKind::Other);
        for kind in ErrorType::ALL {
            assert_eq!(
                serde_json::to_value(kind).expect("written"),
                json!(kind.as_str())
            );
            assert_eq!(ErrorType::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorType::from_name("server_error"), None);
        assert!(serde_json::to_value(ErrorType::Other).is_err());
        assert!(serde_json::to_value(StopReason::Other).is_err());
    }

    #[test]
    fn written_events_read_back_as_their_kind() {
        let input = json!({});
        let blocks = [
            write::ContentBlock::Text { text: "" },
            write::ContentBlock::Thinking {
                thinking: "",
                signature: "",
            },
            write::ContentBlock::ToolUse {
                id: "t",
                name: "f",
                input: &input,
            },
        ];
        let events = [
            write::Event::MessageStart {
                message: write::Message::new("m", "x", &[], None, Usage::default()),
            },
            write::Event::Ping,
            write::Event::ContentBlockDelta {
                index: 0,
                delta: write::Delta::TextDelta { text: "hi" },
            },
            write::Event::ContentBlockStop { index: 0 },
            write::Event::MessageDelta {
                delta: write::MessageDelta::new(StopReason::EndTurn),
                usage: Usage::default(),
            },
            write::Event::MessageStop,
            write::Event::Error {
                error: write::ErrorDetail {
                    kind: ErrorType::ApiError,
                    message: "x",
                },
            },
        ];
        let mut out = Vec::new();
        for event in &events {
            out.clear();
            event.write_sse(&mut out);
            let text = String::from_utf8(out.clone()).expect("UTF-8");
            let data = text
                .strip_prefix(&format!("event: {}\ndata: ", event.kind().as_str()))
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("{text}"));
            let read: read::EventType = crate::wire::lenient::read_object(data).expect("an object");
            assert_eq!(read.kind, Some(event.kind()), "{text}");
        }
        for (block, kind) in blocks.iter().zip([
            read::BlockKind::Text,
            read::BlockKind::Thinking,
            read::BlockKind::ToolUse,
        ]) {
            let text = serde_json::to_string(block).expect("written");
            let read: read::ContentBlock =
                crate::wire::lenient::read_object(&text).expect("an object");
            assert_eq!(read.kind, Some(kind), "{text}");
        }
        for (delta, kind) in [
            (
                write::Delta::TextDelta { text: "" },
                read::DeltaKind::TextDelta,
            ),
            (
                write::Delta::ThinkingDelta { thinking: "" },
                read::DeltaKind::ThinkingDelta,
            ),
            (
                write::Delta::InputJsonDelta { partial_json: "" },
                read::DeltaKind::InputJsonDelta,
            ),
        ] {
            let text = serde_json::to_string(&delta).expect("written");
            let read: read::Delta = crate::wire::lenient::read_object(&text).expect("an object");
            assert_eq!(read.kind, Some(kind), "{text}");
        }
    }

    #[test]
    fn stop_reasons_round_trip_through_finish_reasons() {
        for reason in [
            StopReason::EndTurn,
            StopReason::MaxTokens,
            StopReason::ToolUse,
            StopReason::Refusal,
        ] {
            let finish = StopReason::to_finish_reason(Some(reason));
            assert_eq!(StopReason::from_finish_reason(Some(finish), false), reason);
        }
    }

    #[test]
    fn usage_is_written_without_absent_counts() {
        let usage = Usage {
            input_tokens: Some(1),
            cache_read_input_tokens: Some(2),
            cache_creation_input_tokens: None,
            output_tokens: Some(3),
        };
        assert_eq!(
            serde_json::to_string(&usage).expect("written"),
            r#"{"input_tokens":1,"cache_read_input_tokens":2,"output_tokens":3}"#
        );
        let mut cumulative = usage;
        cumulative.update(&Usage {
            output_tokens: Some(9),
            ..Usage::default()
        });
        assert_eq!(cumulative.output_tokens, Some(9));
        assert_eq!(cumulative.input_tokens, Some(1));
    }
}
