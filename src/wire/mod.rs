//! Providers' wire formats as types, each written down once for every direction the gateway
//! speaks it in. A provider's vocabulary (stop reasons, usage counts, error types, stream event
//! names) belongs to neither side: `providers::` reads it from upstreams, `api::` writes it for
//! clients of the matching front door, and both take it from here.
//!
//! Reading is as tolerant as the `serde_json::Value` lookups it replaced (see [`lenient`]): a
//! field of the wrong type reads as absent, unknown fields and unknown kinds are skipped.

pub mod anthropic;
pub mod lenient;
