//! The upstream instances of every provider: discovery (DNS in the background), load-aware
//! balancing, per-instance circuit breakers, and the classification of failed attempts.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod credentials;
pub mod discovery;
pub mod report;
pub mod retry;
pub mod select;
pub mod upkeep;
