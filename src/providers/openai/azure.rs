//! Azure OpenAI: OpenAI's bodies, the deployment and `api-version` in the path, an `api-key`
//! header, and streams annotated with content-filter chunks that an OpenAI client must not see.

use super::{encode_component, parse_completion, ChunkFate, OpenAiChunkSource, StreamIdentity};
use crate::api::ClientProtocol;
use crate::config::ProviderSettings;
use crate::error::GatewayError;
use crate::providers::{AuthPlacement, Dialect, ResponseContext, UpstreamPaths};
use crate::stream::chunk::{ChunkSource, StreamContext};
use crate::stream::event_filter::{event_data, EventJudge, Judged, SseEventFilter};
use crate::stream::NativeStreamFilter;
use serde_json::Value;

/// Azure OpenAI.
pub struct AzureOpenAi;

impl Dialect for AzureOpenAi {
    fn default_endpoint(&self) -> Option<&'static str> {
        // Every Azure resource has its own host.
        None
    }

    fn default_auth(&self) -> AuthPlacement {
        AuthPlacement::Header {
            name: "api-key".into(),
            prefix: String::new(),
        }
    }

    fn native_protocol(&self) -> Option<ClientProtocol> {
        Some(ClientProtocol::OpenAi)
    }

    fn paths(&self, upstream_model: &str, settings: &ProviderSettings) -> UpstreamPaths {
        let deployment = encode_component(upstream_model);
        let version = encode_component(settings.api_version.as_deref().unwrap_or_default());
        let path =
            |what: &str| format!("/openai/deployments/{deployment}/{what}?api-version={version}");
        UpstreamPaths {
            chat: path("chat/completions"),
            embeddings: Some(path("embeddings")),
            ..UpstreamPaths::default()
        }
    }

    fn chat_response(&self, body: &[u8], _ctx: &ResponseContext) -> Result<Value, GatewayError> {
        parse_completion(body)
    }

    fn chunk_source(&self, _ctx: StreamContext) -> Box<dyn ChunkSource> {
        Box::new(OpenAiChunkSource::new())
    }

    fn native_stream_filter(&self) -> Option<Box<dyn NativeStreamFilter>> {
        Some(Box::new(AzureChunkFilter::new()))
    }
}

/// Azure's annotation chunks are dropped, or given the stream's id when they carry a filter
/// verdict ([`ChunkFate`]); every other event is kept. Notes the stream's identity and its end
/// (`data: [DONE]`) on the way.
#[derive(Debug, Default)]
pub struct AzureJudge {
    identity: Option<StreamIdentity>,
    done: bool,
}

impl EventJudge for AzureJudge {
    fn judge(&mut self, event: &[u8]) -> Judged {
        judge(&mut self.identity, &mut self.done, event)
    }

    fn saw_terminal(&self) -> bool {
        self.done
    }
}

/// Passes an Azure OpenAI stream to an OpenAI client event by event, without Azure's annotation
/// chunks.
pub type AzureChunkFilter = SseEventFilter<AzureJudge>;

fn judge(identity: &mut Option<StreamIdentity>, done: &mut bool, event: &[u8]) -> Judged {
    let Some(data) = event_data(event) else {
        return Judged::Keep;
    };
    if *data == *b"[DONE]" {
        *done = true;
        return Judged::Keep;
    }
    let (fate, head) = ChunkFate::of_json(&data);
    match fate {
        ChunkFate::Pass => {
            if let Some(head) = head {
                if let Some(id) = head.id.as_deref() {
                    let model = head.model.as_deref().unwrap_or_default();
                    StreamIdentity::note(identity, id, model, head.created.unwrap_or(0));
                }
            }
            Judged::Keep
        }
        ChunkFate::Drop => Judged::Drop,
        ChunkFate::Restamp => {
            let (Some(identity), Ok(serde_json::Value::Object(mut chunk))) = (
                &*identity,
                serde_json::from_slice::<serde_json::Value>(&data),
            ) else {
                return Judged::Keep;
            };
            identity.stamp(&mut chunk);
            let mut bytes = b"data: ".to_vec();
            // Writing a map into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut bytes, &chunk);
            bytes.extend_from_slice(b"\n\n");
            Judged::Replace(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::sse::SseParser;
    use crate::stream::MAX_EVENT_BYTES;
    use bytes::Bytes;

    const PROMPT_FILTER: &str = r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#;
    const FIRST: &str = r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"created":1700000000,"id":"chatcmpl-1","model":"gpt-4o","object":"chat.completion.chunk"}"#;
    const ANNOTATION: &str = r#"{"id":"","object":"","created":0,"model":"","choices":[{"index":0,"finish_reason":null,"content_filter_results":{},"content_filter_offsets":{"check_offset":0,"start_offset":0,"end_offset":2}}]}"#;
    const TEXT: &str = r#"{"choices":[{"delta":{"content":"Hi é"},"finish_reason":null,"index":0}],"created":1700000000,"id":"chatcmpl-1","model":"gpt-4o","object":"chat.completion.chunk"}"#;
    const VERDICT: &str = r#"{"id":"","object":"","created":0,"model":"","choices":[{"index":0,"finish_reason":"content_filter","content_filter_results":{}}]}"#;
    const USAGE: &str = r#"{"choices":[],"created":1700000000,"id":"chatcmpl-1","model":"gpt-4o","object":"chat.completion.chunk","usage":{"total_tokens":4}}"#;

    /// The stream in `eol` line endings.
    fn azure_stream(eol: &str) -> Vec<u8> {
        let mut s = String::new();
        for data in [
            PROMPT_FILTER,
            FIRST,
            ANNOTATION,
            TEXT,
            VERDICT,
            USAGE,
            "[DONE]",
        ] {
            s.push_str(&format!("data: {data}{eol}{eol}"));
        }
        s.into_bytes()
    }

    /// Feeds `input` cut at `cuts`; returns everything the client got.
    fn filtered(input: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
        let mut f = AzureChunkFilter::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &at in cuts.iter().chain([input.len()].iter()) {
            let piece = Bytes::copy_from_slice(&input[from..at]);
            out.extend_from_slice(&f.filter(&piece).expect("filtered"));
            from = at;
        }
        (out, f.ended_properly())
    }

    fn data_of(bytes: &[u8]) -> Vec<String> {
        let mut parser = SseParser::new(MAX_EVENT_BYTES);
        let mut events = Vec::new();
        parser.push(bytes, &mut events).expect("valid SSE");
        assert!(!parser.finish(), "an unfinished event was passed on");
        events.into_iter().map(|e| e.data).collect()
    }

    #[test]
    fn azure_filter_drops_annotations_and_restamps_verdicts() {
        let (out, ended) = filtered(&azure_stream("\n"), &[]);
        assert!(ended);
        let data = data_of(&out);
        assert_eq!(data.len(), 5, "{data:#?}");
        assert_eq!(data[0], FIRST);
        assert_eq!(data[1], TEXT);
        let verdict: serde_json::Value = serde_json::from_str(&data[2]).unwrap();
        assert_eq!(verdict["id"], "chatcmpl-1");
        assert_eq!(verdict["model"], "gpt-4o");
        assert_eq!(verdict["created"], 1_700_000_000);
        assert_eq!(verdict["object"], "chat.completion.chunk");
        assert_eq!(verdict["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(data[3], USAGE);
        assert_eq!(data[4], "[DONE]");
        // Kept events go on byte for byte.
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(&format!("data: {FIRST}\n\ndata: {TEXT}\n\n")));
        assert!(text.ends_with(&format!("data: {USAGE}\n\ndata: [DONE]\n\n")));
    }

    #[test]
    fn azure_filter_is_the_same_however_the_stream_is_cut() {
        for eol in ["\n", "\r\n", "\r"] {
            let input = azure_stream(eol);
            let (whole, _) = filtered(&input, &[]);
            assert_eq!(data_of(&whole).len(), 5, "{eol:?}");
            for a in 0..=input.len() {
                let (out, ended) = filtered(&input, &[a]);
                assert_eq!(out, whole, "{eol:?} cut at {a}");
                assert!(ended);
            }
            // Byte by byte.
            let cuts: Vec<usize> = (1..input.len()).collect();
            assert_eq!(filtered(&input, &cuts).0, whole, "{eol:?} byte by byte");
        }
    }

    #[test]
    fn azure_filter_passes_whole_reads_without_copying() {
        let mut f = AzureChunkFilter::new();
        let input = Bytes::from(format!("data: {FIRST}\n\ndata: {TEXT}\n\n"));
        let out = f.filter(&input).unwrap();
        assert_eq!(out.as_ptr(), input.as_ptr());
        assert_eq!(out.len(), input.len());
        assert!(!f.ended_properly());
        // Half an event is held back until it completes.
        let half = Bytes::from(format!("data: {TEXT}"));
        assert!(f.filter(&half).unwrap().is_empty());
        let rest = f
            .filter(&Bytes::from_static(b"\n\ndata: [DONE]\n\n"))
            .unwrap();
        assert_eq!(rest, format!("data: {TEXT}\n\ndata: [DONE]\n\n").as_bytes());
        assert!(f.ended_properly());
    }

    #[test]
    fn azure_filter_bounds_an_unfinished_event() {
        let mut f = AzureChunkFilter::new();
        let line = Bytes::from(vec![b'x'; 1024 * 1024]);
        let mut failed = false;
        for _ in 0..=(MAX_EVENT_BYTES / line.len()) {
            assert!(f.pending().len() <= MAX_EVENT_BYTES);
            match f.filter(&line) {
                Ok(out) => assert!(out.is_empty()),
                Err(e) => {
                    assert!(e.message.contains("larger than"), "{}", e.message);
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "an endless event was held without bound");
        assert!(f.has_failed());
        assert_eq!(f.pending().capacity(), 0, "the held event was not freed");
        assert!(f
            .filter(&Bytes::from_static(b"\n\ndata: [DONE]\n\n"))
            .unwrap()
            .is_empty());
    }
}
