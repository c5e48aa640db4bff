//! Token usage as upstreams report it, read without parsing whole answers: the `usage` object of
//! an OpenAI or Anthropic answer is found in the answer's last bytes (and, for an Anthropic
//! stream, the input count in its first event).

use serde::Deserialize;
use std::sync::LazyLock;

/// Tokens one request used, as its answer reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones included.
    pub input: u64,
    pub output: u64,
    /// Of `input`, those read from the provider's prompt cache.
    pub cached_input: u64,
    /// Of `output`, the model's reasoning (thinking) tokens, when the provider says.
    pub reasoning: u64,
}

impl TokenUsage {
    pub fn total(self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// `usage` in either client protocol (OpenAI's or Anthropic's names).
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

/// OpenAI's `usage.completion_tokens_details`.
#[derive(Debug, Default, Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    fn input(&self) -> Option<u64> {
        self.prompt_tokens.or_else(|| {
            // Anthropic counts cache reads and writes apart from `input_tokens`.
            let parts = [
                self.input_tokens,
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ];
            parts.iter().any(Option::is_some).then(|| {
                parts
                    .iter()
                    .flatten()
                    .fold(0u64, |a, b| a.saturating_add(*b))
            })
        })
    }

    fn output(&self) -> Option<u64> {
        self.completion_tokens.or(self.output_tokens)
    }

    fn cached_input(&self) -> Option<u64> {
        self.prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(self.cache_read_input_tokens)
    }

    fn reasoning(&self) -> Option<u64> {
        self.completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
    }
}

const HEAD: usize = 4096;
const TAIL: usize = 4096;

/// Watches an answer's bytes for its usage, keeping only its last few KiB (and, for an Anthropic
/// stream, its first few).
#[derive(Debug, Default)]
pub struct UsageScan {
    /// Whether the input count is in the first event (an Anthropic stream's `message_start`).
    keeps_head: bool,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl UsageScan {
    /// `keeps_head`: the answer is an Anthropic stream, whose input count comes first.
    pub fn new(keeps_head: bool) -> Self {
        UsageScan {
            keeps_head,
            ..Default::default()
        }
    }

    pub fn observe(&mut self, bytes: &[u8]) {
        if self.keeps_head && self.head.len() < HEAD {
            let n = (HEAD - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
        }
        if bytes.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - TAIL..]);
        } else {
            let excess = (self.tail.len() + bytes.len()).saturating_sub(TAIL);
            self.tail.drain(..excess);
            self.tail.extend_from_slice(bytes);
        }
    }

    /// The usage the answer reported: its last `usage` object, with the input count of its first
    /// one when the last lacks it (an Anthropic stream's `message_delta`).
    pub fn usage(&self) -> Option<TokenUsage> {
        let last = last_usage(&self.tail)?;
        let first = || first_usage(&self.head);
        let input = last.input().or_else(|| first()?.input());
        let cached_input = last.cached_input().or_else(|| first()?.cached_input());
        Some(TokenUsage {
            input: input.unwrap_or(0),
            output: last.output().unwrap_or(0),
            cached_input: cached_input.unwrap_or(0),
            reasoning: last.reasoning().unwrap_or(0),
        })
    }
}

const NEEDLE: &[u8] = b"\"usage\"";

fn usage_at(bytes: &[u8], at: usize) -> Option<WireUsage> {
    let rest = &bytes[at + NEEDLE.len()..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = rest[start..].strip_prefix(b":")?;
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<WireUsage>();
    values.next()?.ok()
}

/// The searchers for [`NEEDLE`], built once: building one costs more than a search of a short
/// answer.
static FORWARD: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(NEEDLE));
static BACKWARD: LazyLock<memchr::memmem::FinderRev<'static>> =
    LazyLock::new(|| memchr::memmem::FinderRev::new(NEEDLE));

/// The last `"usage": {...}` object in `bytes` (an object, not `null`).
fn last_usage(bytes: &[u8]) -> Option<WireUsage> {
    BACKWARD
        .rfind_iter(bytes)
        .find_map(|at| usage_at(bytes, at))
}

fn first_usage(bytes: &[u8]) -> Option<WireUsage> {
    FORWARD.find_iter(bytes).find_map(|at| usage_at(bytes, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Option<TokenUsage> {
        let mut s = UsageScan::new(true);
        for p in pieces {
            s.observe(p);
        }
        s.usage()
    }

    #[test]
    fn openai_answer_and_stream_usage() {
        let answer = br#"{"id":"c","choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\": 999}"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":3}},"system_fingerprint":"x"}"#;
        assert_eq!(
            scan(&[answer]),
            Some(TokenUsage {
                input: 12,
                output: 5,
                cached_input: 3,
                reasoning: 0,
            })
        );
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n\
            data: [DONE]\n\n";
        // Split anywhere, including inside the usage object.
        for cut in 0..stream.len() {
            assert_eq!(
                scan(&[&stream[..cut], &stream[cut..]]),
                Some(TokenUsage {
                    input: 7,
                    output: 2,
                    ..Default::default()
                }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn anthropic_answer_and_stream_usage() {
        let answer = br#"{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":1}}}],"usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":4}}"#;
        assert_eq!(
            scan(&[answer]),
            Some(TokenUsage {
                input: 100,
                output: 4,
                cached_input: 90,
                reasoning: 0,
            })
        );
        let start = br#"event: message_start
data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"output_tokens":1}}}

"#;
        let filler = vec![b'x'; 20_000];
        let end = br#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"#;
        assert_eq!(
            scan(&[start, &filler, end]),
            Some(TokenUsage {
                input: 25,
                output: 15,
                ..Default::default()
            })
        );
    }

    #[test]
    fn no_usage_or_null_usage_or_garbage_is_none() {
        assert_eq!(scan(&[b"data: {\"usage\":null}\n\ndata: [DONE]\n\n"]), None);
        assert_eq!(scan(&[b"{\"choices\":[]}"]), None);
        assert_eq!(scan(&[b"\"usage\""]), None);
        assert_eq!(scan(&[b"\"usage\":{\"prompt_tokens\":-1}"]), None);
        assert_eq!(scan(&[b"\"usage\" : {\"prompt_tokens\":"]), None);
    }
}
