//! The Anthropic Messages front door: being split into files by concern.

mod request;

pub use request::*;
