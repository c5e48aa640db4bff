//! Anthropic Messages API <-> OpenAI chat completions: being split into files by concern.

mod request;

pub use request::*;
