//! Gemini generateContent (AI Studio, v1beta) <-> OpenAI chat completions: the whole dialect
//! lives in `request.rs` until it is split by concern.

mod request;

pub use request::*;
