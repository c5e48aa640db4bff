//! dragoman: an LLM API gateway on Pingora.
//!
//! Data flows one way: client bytes are read by [`api`] (what clients speak), planned into one
//! upstream call by [`plan`], written in the provider's protocol by [`providers`] (what upstreams
//! speak), sent to an instance chosen by [`upstream`] (balancing, breakers, retries), and the
//! answer comes back the same way. [`proxy`] holds the thin Pingora hooks that drive it.
//! [`wire`] holds providers' wire formats as types, shared by both directions.
pub mod access;
pub mod admin;
pub mod api;
pub mod buffers;
pub mod cache;
pub mod config;
pub mod drain;
pub mod error;
pub mod experiments;
pub mod header_policy;
pub mod ids;
pub mod limits;
pub mod observe;
pub mod plan;
pub mod providers;
pub mod proxy;
pub mod registry;
pub mod stream;
#[cfg(test)]
mod test_support;
pub mod tls;
pub mod upstream;
pub mod wire;
