//! Which client headers reach an upstream.
//!
//! - Never: credentials (the provider's own key replaces them), the operator's account selectors,
//!   framing and hop-by-hop fields (the gateway frames its own request), `accept-encoding` (the
//!   response filters need plain bytes), and the `forwarded` family (the gateway says who the
//!   client is, from the connection, never from what the client claims).
//! - Provider feature headers (the `anthropic-`, `openai-`, `x-goog-` and `x-ms-` families, such
//!   as `anthropic-beta` and `openai-beta`) turn on behaviour the operator pays for: only those a
//!   provider lists in its `forward_headers` reach it.
//! - Everything else (`content-type`, `user-agent`, `traceparent`, the SDKs' `x-stainless-*`...)
//!   passes.
//!
//! Names are compared in lower case, as `http::HeaderName` stores them.

use http::HeaderName;

/// Client headers that never reach an upstream, whatever the configuration says.
pub fn is_never_forwarded(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "cookie"
            | "openai-organization"
            | "openai-project"
            | "anthropic-version"
            | "host"
            | "content-length"
            | "transfer-encoding"
            | "accept-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "forwarded"
            | "x-real-ip"
    ) || name.starts_with("x-forwarded-")
}

/// Headers of the providers' own families: features and betas a provider is asked for.
pub fn is_provider_feature(name: &str) -> bool {
    name.starts_with("anthropic-")
        || name.starts_with("openai-")
        || name.starts_with("x-goog-")
        || name.starts_with("x-ms-")
}

/// Whether a client header named `name` reaches a provider that allows `allowed`.
pub fn forwards(name: &str, allowed: &[HeaderName]) -> bool {
    if is_never_forwarded(name) {
        return false;
    }
    !is_provider_feature(name) || allowed.iter().any(|a| a.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_headers_pass_only_when_the_provider_allows_them() {
        let allowed = [HeaderName::from_static("anthropic-beta")];
        assert!(forwards("anthropic-beta", &allowed));
        assert!(!forwards("anthropic-beta", &[]));
        assert!(!forwards("openai-beta", &allowed));
        assert!(!forwards("x-goog-user-project", &allowed));
        assert!(!forwards("x-ms-useragent", &allowed));
    }

    #[test]
    fn credentials_and_forwarding_claims_never_pass_even_when_listed() {
        let listed = [
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("openai-organization"),
            HeaderName::from_static("x-forwarded-for"),
        ];
        for name in [
            "authorization",
            "x-api-key",
            "openai-organization",
            "x-forwarded-for",
            "x-forwarded-proto",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(!forwards(name, &listed), "{name}");
        }
    }

    #[test]
    fn ordinary_headers_pass() {
        for name in [
            "content-type",
            "user-agent",
            "traceparent",
            "x-stainless-lang",
        ] {
            assert!(forwards(name, &[]), "{name}");
        }
    }
}
