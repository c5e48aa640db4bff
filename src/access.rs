//! Who may call: gateway keys. A client presents its key as its SDK does; the gateway keeps only
//! each key's SHA-256 and compares digests in constant time, so neither the file nor the
//! process need hold the keys themselves, and no timing tells how much of a guess was right.

use crate::error::{ErrorCode, GatewayError};
use crate::limits::ScopeLimits;
use bytes::Bytes;
use pingora_http::RequestHeader;
use std::collections::HashSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A gateway key at run time.
#[derive(Debug)]
pub struct GatewayKey {
    pub name: String,
    sha256: [u8; 32],
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
            sha256,
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

/// The key a client presents, where each SDK puts it: `Authorization: Bearer` (OpenAI),
/// `x-api-key` (Anthropic), `api-key` (Azure OpenAI), `x-goog-api-key` (Gemini).
pub fn presented_key(req: &RequestHeader) -> Option<&[u8]> {
    let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());
    if let Some(value) = header("authorization") {
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

/// The key entry matching the client's request. Every entry is compared, each in constant time.
pub fn authenticate<'k>(
    keys: &'k [GatewayKey],
    req: &RequestHeader,
) -> Result<&'k GatewayKey, GatewayError> {
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
    let digest = sha256(presented);
    let mut found = None;
    for key in keys {
        if bool::from(key.sha256.ct_eq(&digest)) {
            found = Some(key);
        }
    }
    found.ok_or_else(unauthorized)
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

    fn keys() -> Vec<GatewayKey> {
        vec![
            GatewayKey::new("a".into(), sha256(b"key-a"), None, Bytes::new()),
            GatewayKey::new(
                "b".into(),
                sha256(b"key-b"),
                Some(&["m1".to_string()]),
                Bytes::new(),
            ),
        ]
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
            let key = authenticate(&keys, &request(&headers)).expect("authenticated");
            assert_eq!(key.name, "a", "{headers:?}");
        }
        let key = authenticate(&keys, &request(&[("x-api-key", "key-b")])).unwrap();
        assert_eq!(key.name, "b");
    }

    #[test]
    fn missing_wrong_and_empty_keys_are_401() {
        let keys = keys();
        for headers in [
            vec![],
            vec![("authorization", "Bearer key-c")],
            vec![("authorization", "Basic a2V5LWE=")],
            vec![("authorization", "Bearer ")],
            vec![("x-api-key", "key-a-and-more")],
            vec![("x-api-key", "")],
        ] {
            let e = authenticate(&keys, &request(&headers)).unwrap_err();
            assert_eq!(e.status, 401, "{headers:?}");
            assert!(e.has_code(ErrorCode::InvalidApiKey));
            assert!(!e.message.contains("key-"), "the error echoes the key");
        }
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
