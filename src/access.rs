//! Who may call: gateway keys. A client presents its key as its SDK does; the gateway keeps only
//! each key's SHA-256 and compares digests in constant time, so neither the file nor the
//! process need hold the keys themselves, and no timing tells how much of a guess was right.
//! A key presented and verified once is recognised afterwards by a keyed 128-bit SipHash tag of
//! it, compared the same way, which costs a tenth of the digest.

use crate::error::{ErrorCode, GatewayError};
use crate::limits::ScopeLimits;
use bytes::Bytes;
use pingora_http::RequestHeader;
use siphasher::sip128::SipHasher13;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use subtle::{Choice, ConstantTimeEq};

/// A gateway key at run time.
#[derive(Debug)]
pub struct GatewayKey {
    pub name: String,
    /// The key's SHA-256 as four words: compared a word at a time.
    sha256: [u64; 4],
    /// `None`: every model.
    models: Option<HashSet<String>>,
    /// `GET /v1/models` for this key: only the models it may use.
    pub model_list: Bytes,
    /// This key's rate limits.
    pub limits: Option<Arc<ScopeLimits>>,
}

impl GatewayKey {
    pub fn new(
        name: String,
        sha256: [u8; 32],
        models: Option<&[String]>,
        model_list: Bytes,
    ) -> Self {
        GatewayKey {
            name,
            sha256: digest_words(&sha256),
            models: models.map(|m| m.iter().cloned().collect()),
            model_list,
            limits: None,
        }
    }

    pub fn with_limits(mut self, limits: Option<Arc<ScopeLimits>>) -> Self {
        self.limits = limits;
        self
    }

    /// Whether this key may use the model the client named.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn digest_words(digest: &[u8; 32]) -> [u64; 4] {
    let mut words = [0; 4];
    for (word, bytes) in words.iter_mut().zip(digest.chunks_exact(8)) {
        let mut le = [0; 8];
        le.copy_from_slice(bytes);
        *word = u64::from_le_bytes(le);
    }
    words
}

/// The key a client presents, where each SDK puts it: `Authorization: Bearer` (OpenAI),
/// `x-api-key` (Anthropic), `api-key` (Azure OpenAI), `x-goog-api-key` (Gemini).
pub fn presented_key(req: &RequestHeader) -> Option<&[u8]> {
    let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
    if let Some(value) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
    {
        let scheme = b"bearer ";
        if value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(value[scheme.len()..].trim_ascii());
        }
    }
    ["x-api-key", "api-key", "x-goog-api-key"]
        .into_iter()
        .find_map(header)
        .map(<[u8]>::trim_ascii)
}

/// The gateway keys, and the ones clients already presented.
pub struct GatewayKeys {
    entries: Vec<GatewayKey>,
    recognised: Option<Recognised>,
}

impl std::ops::Deref for GatewayKeys {
    type Target = [GatewayKey];
    fn deref(&self) -> &[GatewayKey] {
        &self.entries
    }
}

/// What clients presented and was verified, by a SipHash-1-3 tag (128 bits, under a key random
/// to this set of keys) of what they sent: a key's later requests are recognised without
/// SHA-256 (about 2,300 instructions a request), and what is kept is no key. Only verified
/// keys are added, so it holds at most one tag per gateway key; a reload builds a new set.
struct Recognised {
    tagger: SipHasher13,
    tags: RwLock<Vec<([u64; 2], usize)>>,
}

impl Recognised {
    fn new() -> Option<Recognised> {
        let mut seed = [0u8; 16];
        // Without a random key there is no safe tag: every request is verified by its digest.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).ok()?;
        let (k0, k1) = seed.split_at(8);
        let word = |b: &[u8]| {
            let mut le = [0; 8];
            le.copy_from_slice(b);
            u64::from_le_bytes(le)
        };
        Some(Recognised {
            tagger: SipHasher13::new_with_keys(word(k0), word(k1)),
            tags: RwLock::new(Vec::new()),
        })
    }

    fn tag(&self, presented: &[u8]) -> [u64; 2] {
        let tag = self.tagger.hash(presented);
        [tag.h1, tag.h2]
    }

    /// The key whose tag this is; every tag is compared, each in constant time.
    fn find(&self, tag: [u64; 2]) -> Option<usize> {
        let tags = self.tags.read().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for (known, index) in tags.iter() {
            if bool::from(known[0].ct_eq(&tag[0]) & known[1].ct_eq(&tag[1])) {
                found = Some(*index);
            }
        }
        found
    }

    fn add(&self, tag: [u64; 2], index: usize) {
        let mut tags = self.tags.write().unwrap_or_else(|e| e.into_inner());
        if !tags.iter().any(|(known, _)| *known == tag) {
            tags.push((tag, index));
        }
    }
}

impl GatewayKeys {
    pub fn new(entries: Vec<GatewayKey>) -> GatewayKeys {
        let recognised = if entries.is_empty() {
            None
        } else {
            Recognised::new()
        };
        GatewayKeys {
            entries,
            recognised,
        }
    }

    /// Where `key`, one of these, stands among them (the metrics' and the access log's handle
    /// on it).
    pub fn index_of(&self, key: &GatewayKey) -> Option<usize> {
        self.entries.iter().position(|k| std::ptr::eq(k, key))
    }

    /// The key entry matching the client's request: one presented before, by its tag, else the
    /// one whose SHA-256 it has. Every entry is compared, each in constant time.
    pub fn authenticate(&self, req: &RequestHeader) -> Result<&GatewayKey, GatewayError> {
        let unauthorized = || {
            GatewayError::new(
                401,
                "Missing or invalid gateway key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`",
            )
            .with_code(ErrorCode::InvalidApiKey)
        };
        let presented = presented_key(req)
            .filter(|k| !k.is_empty())
            .ok_or_else(unauthorized)?;
        let tag = self.recognised.as_ref().map(|r| (r, r.tag(presented)));
        if let Some(index) = tag.and_then(|(r, tag)| r.find(tag)) {
            return self.entries.get(index).ok_or_else(unauthorized);
        }
        let digest = digest_words(&sha256(presented));
        let mut found = None;
        for (index, key) in self.entries.iter().enumerate() {
            let same = (key.sha256.iter().zip(&digest))
                .fold(Choice::from(1), |same, (a, b)| same & a.ct_eq(b));
            if bool::from(same) {
                found = Some(index);
            }
        }
        let index = found.ok_or_else(unauthorized)?;
        if let Some((recognised, tag)) = tag {
            recognised.add(tag, index);
        }
        self.entries.get(index).ok_or_else(unauthorized)
    }
}

/// 403 for a model the key may not use.
pub fn model_not_allowed(key: &GatewayKey, model: &str) -> GatewayError {
    GatewayError::new(
        403,
        format!(
            "The gateway key `{}` may not use the model `{model}`",
            key.name
        ),
    )
    .with_param("model")
    .with_code(ErrorCode::ModelNotAllowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (name, value) in headers {
            req.insert_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn keys() -> GatewayKeys {
        GatewayKeys::new(vec![
            GatewayKey::new("a".into(), sha256(b"key-a"), None, Bytes::new()),
            GatewayKey::new(
                "b".into(),
                sha256(b"key-b"),
                Some(&["m1".to_string()]),
                Bytes::new(),
            ),
        ])
    }

    #[test]
    fn every_sdk_header_is_read() {
        let keys = keys();
        for headers in [
            [("authorization", "Bearer key-a")],
            [("authorization", "bearer  key-a ")],
            [("x-api-key", "key-a")],
            [("api-key", "key-a")],
            [("x-goog-api-key", "key-a")],
        ] {
            let key = keys
                .authenticate(&request(&headers))
                .expect("authenticated");
            assert_eq!(key.name, "a", "{headers:?}");
        }
        let key = keys
            .authenticate(&request(&[("x-api-key", "key-b")]))
            .unwrap();
        assert_eq!(key.name, "b");
    }

    #[test]
    fn missing_wrong_and_empty_keys_are_401() {
        let keys = keys();
        // Also once the right keys were presented and are recognised by their tags.
        for key in ["key-a", "key-b"] {
            assert!(keys.authenticate(&request(&[("x-api-key", key)])).is_ok());
        }
        for headers in [
            vec![],
            vec![("authorization", "Bearer key-c")],
            vec![("authorization", "Basic a2V5LWE=")],
            vec![("authorization", "Bearer ")],
            vec![("x-api-key", "key-a-and-more")],
            vec![("x-api-key", "")],
        ] {
            let e = keys.authenticate(&request(&headers)).unwrap_err();
            assert_eq!(e.status, 401, "{headers:?}");
            assert!(e.has_code(ErrorCode::InvalidApiKey));
            assert!(!e.message.contains("key-"), "the error echoes the key");
        }
    }

    #[test]
    fn a_key_presented_again_is_recognised_by_its_tag() {
        fn name(keys: &GatewayKeys, key: &str) -> String {
            keys.authenticate(&request(&[("authorization", &format!("Bearer {key}"))]))
                .map(|k| k.name.clone())
                .unwrap_or_default()
        }
        let mut keys = keys();
        for _ in 0..3 {
            assert_eq!(
                (name(&keys, "key-a"), name(&keys, "key-b")),
                ("a".into(), "b".into())
            );
        }
        let recognised = keys.recognised.as_ref().unwrap();
        assert_eq!(recognised.tags.read().unwrap().len(), 2, "one tag per key");
        assert_eq!(recognised.find(recognised.tag(b"key-b")), Some(1));
        assert_eq!(recognised.find(recognised.tag(b"key-c")), None);
        // With the digests gone, a recognised key is still found: by its tag alone.
        for key in &mut keys.entries {
            key.sha256 = [0; 4];
        }
        assert_eq!(name(&keys, "key-b"), "b");
        assert_eq!(name(&keys, "key-c"), "");
    }

    #[test]
    fn models_are_limited_per_key() {
        let keys = keys();
        assert!(keys[0].may_use("anything"));
        assert!(keys[1].may_use("m1"));
        assert!(!keys[1].may_use("m2"));
        let e = model_not_allowed(&keys[1], "m2");
        assert_eq!((e.status, e.param.as_deref()), (403, Some("model")));
    }

    #[test]
    fn sha256_is_sha256() {
        // FIPS 180-2 test vector.
        let digest = sha256(b"abc");
        assert_eq!(
            digest[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
    }
}
