//! The cache key: a SHA-256 of everything that changes an answer, and nothing that does not.
//!
//! What goes in: the served model (its name, provider and upstream model id, so that a reload
//! pointing the name elsewhere misses; not the name the client used: an experiment's arm is
//! served by its model), the client's endpoint (its protocol and operation), and the request
//! body made canonical — parsed, then written back out with its object keys sorted and no
//! whitespace (`serde_json`'s map is ordered by key), so bodies that differ only in key order or
//! spacing share an entry.
//!
//! Left out of the body: `model` (the served model is hashed instead), `stream` and
//! `stream_options` (how the answer is delivered, not what it says), and `user` (OpenAI's
//! end-user id, which does not change the answer; keeping it would give every user their own
//! copy of the same answer). Credentials are headers and never reach the key.

use crate::api::ClientEndpoint;
use ring::digest;

/// The members of a request body that do not change its answer.
const IGNORED_MEMBERS: [&str; 4] = ["model", "stream", "stream_options", "user"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of a request to `model` (its identifying names) at `endpoint` with this body;
    /// `None` when the body is not a JSON object (such requests are not cached).
    pub fn for_request(model: &[&str], endpoint: ClientEndpoint, body: &[u8]) -> Option<CacheKey> {
        let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let members = value.as_object_mut()?;
        for name in IGNORED_MEMBERS {
            members.remove(name);
        }
        let canonical = serde_json::to_vec(&value).ok()?;
        let mut hash = digest::Context::new(&digest::SHA256);
        // Lengths first: no two different (model, body) pairs hash the same bytes.
        hash.update(b"dragoman-cache-v1");
        for part in model {
            hash.update(&(part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        hash.update(endpoint_tag(endpoint).as_bytes());
        hash.update(&canonical);
        let mut key = [0u8; 32];
        key.copy_from_slice(hash.finish().as_ref());
        Some(CacheKey(key))
    }

    /// The key's name in the shared store.
    pub fn store_name(&self) -> String {
        use std::fmt::Write;
        self.0
            .iter()
            .fold(String::from("dragoman:cache:"), |mut name, b| {
                let _ = write!(name, "{b:02x}");
                name
            })
    }

    /// The first eight bytes, for the LRU's index (the whole key is compared on a hit).
    pub fn short(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(head)
    }
}

/// A fixed tag per endpoint (the enum's `Debug` names may change; stored keys should not).
fn endpoint_tag(endpoint: ClientEndpoint) -> &'static str {
    match endpoint {
        ClientEndpoint::ChatCompletions => "openai/chat",
        ClientEndpoint::Complete => "complete",
        ClientEndpoint::Models => "models",
        ClientEndpoint::Embeddings => "openai/embeddings",
        ClientEndpoint::Messages => "anthropic/messages",
        ClientEndpoint::CountTokens => "anthropic/count_tokens",
        ClientEndpoint::Compare => "compare",
        ClientEndpoint::Batch => "batch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &str, endpoint: ClientEndpoint, body: &str) -> Option<CacheKey> {
        CacheKey::for_request(&[model, "p", "upstream"], endpoint, body.as_bytes())
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = key(
            "m",
            ClientEndpoint::ChatCompletions,
            r#"{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let b = key(
            "m",
            ClientEndpoint::ChatCompletions,
            "{ \"messages\" : [ {\"content\":\"hi\", \"role\":\"user\"} ],\n \"temperature\": 0.5, \"model\":\"m\" }",
        );
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn what_changes_the_answer_changes_the_key() {
        let body = r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;
        let base = key("m", ClientEndpoint::ChatCompletions, body);
        let warmer = r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#;
        assert_ne!(base, key("m", ClientEndpoint::ChatCompletions, warmer));
        assert_ne!(base, key("other", ClientEndpoint::ChatCompletions, body));
        assert_ne!(base, key("m", ClientEndpoint::Messages, body));
    }

    #[test]
    fn delivery_and_user_do_not_change_the_key() {
        let plain = r#"{"messages":[],"model":"a"}"#;
        let streamed = r#"{"messages":[],"model":"b","stream":true,"stream_options":{"include_usage":true},"user":"u1"}"#;
        assert_eq!(
            key("m", ClientEndpoint::ChatCompletions, plain),
            key("m", ClientEndpoint::ChatCompletions, streamed)
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_has_no_key() {
        assert!(key("m", ClientEndpoint::ChatCompletions, "[1]").is_none());
        assert!(key("m", ClientEndpoint::ChatCompletions, "{").is_none());
    }
}
