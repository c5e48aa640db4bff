//! OpenAI's API as clients speak it: chat requests (parsed once, borrowing from the body), the
//! `/v1/complete` adapter, and the chunk stream written back.

pub mod chat;
pub mod complete;
pub mod stream;
