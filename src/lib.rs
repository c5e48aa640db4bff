//! dragoman: an LLM API gateway on Pingora.
pub mod admin;
pub mod anthropic_api;
pub mod balance;
pub mod breaker;
pub mod call;
pub mod chat_request;
pub mod config;
pub mod discovery;
pub mod error;
pub mod frontend;
pub mod ids;
pub mod mock;
pub mod providers;
pub mod proxy;
pub mod registry;
pub mod sse;
pub mod stream;
#[cfg(test)]
mod test_support;
