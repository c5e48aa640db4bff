//! The usage chunk the gateway asked for on a client's behalf. To count a stream's tokens the
//! gateway adds `stream_options: {include_usage: true}` to an OpenAI stream request whose client
//! did not ask for usage; the upstream then ends with one extra chunk (empty `choices`, a `usage`
//! object) that this client must not see. Every other event goes on as the very same bytes.

use crate::stream::event_filter::{event_data, EventJudge, Judged, SseEventFilter};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Drops the usage-only chunk; notes `data: [DONE]`.
#[derive(Debug, Default)]
pub struct UsageChunkJudge {
    done: bool,
}

/// An OpenAI stream without the usage chunk its client did not ask for.
pub type UsageChunkFilter = SseEventFilter<UsageChunkJudge>;

/// The member that, added to an OpenAI stream request, asks for the usage chunk.
pub const INCLUDE_USAGE: &str = r#""stream_options":{"include_usage":true}"#;

impl EventJudge for UsageChunkJudge {
    fn judge(&mut self, event: &[u8]) -> Judged {
        let Some(data) = event_data(event) else {
            return Judged::Keep;
        };
        if *data == *b"[DONE]" {
            self.done = true;
            return Judged::Keep;
        }
        // Every chunk of such a stream says `"usage":null`; only the last one carries an object.
        let Some(at) = memchr::memmem::find(&data, b"\"usage\"") else {
            return Judged::Keep;
        };
        let after = data[at + 7..]
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace() && *b != b':')
            .take(1)
            .next();
        if after != Some(b'{') {
            return Judged::Keep;
        }
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow, default)]
            choices: Option<Vec<&'a RawValue>>,
        }
        match serde_json::from_slice::<Head>(&data) {
            Ok(Head {
                choices: Some(choices),
            }) if choices.is_empty() => Judged::Drop,
            _ => Judged::Keep,
        }
    }

    fn saw_terminal(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const TEXT: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}"#;
    const FINISH: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;
    const USAGE: &str = r#"data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

    #[test]
    fn only_the_usage_chunk_is_dropped_at_any_cut() {
        let stream = format!("{TEXT}\n\n{FINISH}\n\n{USAGE}\n\ndata: [DONE]\n\n");
        let expected = format!("{TEXT}\n\n{FINISH}\n\ndata: [DONE]\n\n");
        let bytes = stream.as_bytes();
        for cut in 0..bytes.len() {
            let mut f = UsageChunkFilter::new();
            let mut out = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..]] {
                out.extend_from_slice(&f.filter(&Bytes::copy_from_slice(piece)).unwrap());
            }
            assert_eq!(String::from_utf8(out).unwrap(), expected, "cut at {cut}");
            assert!(f.ended_properly());
        }
    }

    #[test]
    fn a_chunk_with_choices_and_usage_is_kept() {
        // Some servers put the usage on the last content chunk: the client's content stays.
        let both =
            r#"data: {"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"total_tokens":3}}"#;
        let stream = format!("{both}\n\ndata: [DONE]\n\n");
        let mut f = UsageChunkFilter::new();
        let out = f.filter(&Bytes::from(stream.clone())).unwrap();
        assert_eq!(out, stream.as_bytes());
    }
}
