//! dragoman: an LLM API gateway on Pingora.
pub mod error;
pub mod ids;
pub mod providers;
