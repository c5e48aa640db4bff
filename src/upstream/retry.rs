//! The one classification of failed attempts (README, "Failures"): what kind of failure an
//! upstream's answer or error is, whether the same provider tries another instance, and whether
//! the client's model falls back. Pure functions, each with its tests, so the rules read in one
//! place; the Pingora hooks and the dispatcher only apply them.

use crate::config::{FallbackCondition, HedgeConfig};
use crate::upstream::breaker::FailureKind;
use pingora_error::ErrorType;
use std::time::Duration;

/// What an upstream's status says of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// An answer to deliver (a success, or an error that is the client's to see).
    Answer,
    /// 429: this key has used up this model's quota; the instance is fine.
    RateLimited,
    /// 5xx (529 included): the instance failed.
    ServerError,
}

/// Classifies an upstream status for retries and circuit breaking.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        429 => StatusClass::RateLimited,
        500..=599 => StatusClass::ServerError,
        _ => StatusClass::Answer,
    }
}

/// Whether a status says the upstream refused the key itself (401) or its quota (429): with
/// several keys, the attempt may go again with another.
pub fn refuses_key(status: u16) -> bool {
    matches!(status, 401 | 429)
}

/// What a connection-level error counts as against the instance.
pub fn failure_kind(error: &ErrorType) -> FailureKind {
    match error {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            FailureKind::Timeout
        }
        _ => FailureKind::Connect,
    }
}

/// Another attempt needs attempts left for the provider (`max_attempts`), an instance that has not
/// failed this request, and an upstream call left in the request's budget (`max_upstream_calls`,
/// shared by all its legs). When one is missing, the last failure is the answer.
pub fn retry_allowed(
    attempts: u32,
    max_attempts: u32,
    instances: usize,
    failed_instances: usize,
    calls_left: u32,
) -> bool {
    attempts < max_attempts && instances > failed_instances && calls_left > 0
}

/// `base * 2^(attempt-1)`, scaled by a random factor in [0.5, 1.5), capped at 5 s.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    exp.mul_f64(jitter).min(Duration::from_secs(5))
}

/// The one classification of failed answers for fallbacks (README, "Failures"): 429 is rate
/// limited, 504/408 a timeout, other 5xx (529 and the gateway's own 502/503 included) a server
/// error, and a 400/413 may be a context window error. Everything else is delivered as it is.
pub fn failure_condition(status: u16) -> Option<FallbackCondition> {
    match status {
        429 => Some(FallbackCondition::RateLimited),
        504 | 408 => Some(FallbackCondition::Timeout),
        500..=599 => Some(FallbackCondition::ServerError),
        400 | 413 => Some(FallbackCondition::ContextLength),
        _ => None,
    }
}

/// Whether an error body says the prompt exceeded the model's context window (the providers' own
/// wordings), which only the body tells apart from other 400s.
pub fn mentions_context_length(body: &[u8]) -> bool {
    const MARKERS: &[&str] = &[
        "context_length_exceeded",
        "maximum context length",
        "context window",
        "prompt is too long",
        "too many tokens",
        "exceeds the maximum number of tokens",
    ];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    MARKERS.iter().any(|m| text.contains(m))
}

/// A leg that broke off without a whole answer: a timeout if its error says so, else a server
/// error (the upstream failed, went away, or could not be reached).
pub fn broken_leg_condition(error: Option<&ErrorType>) -> FallbackCondition {
    match error {
        Some(
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout,
        ) => FallbackCondition::Timeout,
        _ => FallbackCondition::ServerError,
    }
}

/// What the dispatcher does with a leg's answer or failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Deliver it: nothing better can come.
    Deliver,
    /// Keep it as the last failure, and wait for the legs still running or, when none is, start
    /// the next fallback (delivering it if there is none, or no budget for one).
    Keep,
}

/// The decision for an answer classified as `condition` (`None`: a success, or an error that is
/// the client's to see). A failure is kept while other legs (hedges) may still succeed, and when
/// the client's model falls back on it; `fallback_on` is the client's model's, which governs the
/// whole chain (a fallback model's own `fallbacks` and `fallback_on` play no part).
pub fn after_failure(
    condition: Option<FallbackCondition>,
    fallback_on: &[FallbackCondition],
    others_running: bool,
) -> Next {
    match condition {
        None => Next::Deliver,
        Some(_) if others_running => Next::Keep,
        Some(c) if fallback_on.contains(&c) => Next::Keep,
        Some(_) => Next::Deliver,
    }
}

/// The hedging that applies to a request: a model's `hedge` for streamed requests, whose time to
/// first byte is the time to first token, and none for the others, whose first byte comes only
/// once the whole answer is generated (hedging them would double every long generation).
pub fn hedge_for(hedge: Option<HedgeConfig>, stream: bool) -> Option<HedgeConfig> {
    hedge.filter(|_| stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use FallbackCondition::*;

    #[test]
    fn statuses_say_answer_rate_limit_or_server_error() {
        assert_eq!(classify_status(200), StatusClass::Answer);
        assert_eq!(classify_status(400), StatusClass::Answer);
        assert_eq!(classify_status(404), StatusClass::Answer);
        assert_eq!(classify_status(429), StatusClass::RateLimited);
        for status in [500, 502, 503, 504, 529] {
            assert_eq!(
                classify_status(status),
                StatusClass::ServerError,
                "{status}"
            );
        }
    }

    #[test]
    fn only_401_and_429_refuse_a_key() {
        assert!(refuses_key(401) && refuses_key(429));
        for status in [200, 400, 403, 404, 500, 503] {
            assert!(!refuses_key(status), "{status}");
        }
    }

    #[test]
    fn connection_errors_are_timeouts_or_connect_failures() {
        assert_eq!(
            failure_kind(&ErrorType::ConnectTimedout),
            FailureKind::Timeout
        );
        assert_eq!(failure_kind(&ErrorType::ReadTimedout), FailureKind::Timeout);
        assert_eq!(
            failure_kind(&ErrorType::ConnectRefused),
            FailureKind::Connect
        );
        assert_eq!(
            failure_kind(&ErrorType::ConnectionClosed),
            FailureKind::Connect
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4u32 {
            let exp = base * (1 << (attempt - 1));
            let b = backoff(base, attempt);
            assert!(b >= exp / 2 && b < exp * 3 / 2, "{attempt}: {b:?}");
        }
        assert!(backoff(Duration::from_secs(10), 30) <= Duration::from_secs(5));
    }

    #[test]
    fn context_window_errors_are_told_by_their_wording() {
        assert!(mentions_context_length(
            br#"{"error":{"code":"context_length_exceeded"}}"#
        ));
        assert!(mentions_context_length(
            b"prompt is too long: 210000 tokens"
        ));
        assert!(mentions_context_length(
            b"This model's Maximum Context Length is 8192"
        ));
        assert!(!mentions_context_length(
            br#"{"error":{"message":"bad temperature"}}"#
        ));
    }

    #[test]
    fn retries_stop_at_max_attempts_failed_instances_or_the_call_budget() {
        assert!(retry_allowed(1, 3, 2, 1, 5));
        assert!(!retry_allowed(3, 3, 5, 1, 5), "max_attempts reached");
        assert!(!retry_allowed(1, 3, 2, 2, 5), "every instance failed");
        assert!(!retry_allowed(1, 3, 2, 1, 0), "no upstream call left");
    }

    #[test]
    fn statuses_are_classified_once() {
        assert_eq!(failure_condition(429), Some(RateLimited));
        assert_eq!(failure_condition(504), Some(Timeout));
        assert_eq!(failure_condition(408), Some(Timeout));
        for status in [500, 502, 503, 529] {
            assert_eq!(failure_condition(status), Some(ServerError), "{status}");
        }
        assert_eq!(failure_condition(400), Some(ContextLength));
        assert_eq!(failure_condition(413), Some(ContextLength));
        for status in [200, 201, 401, 403, 404, 422] {
            assert_eq!(failure_condition(status), None, "{status}");
        }
    }

    #[test]
    fn broken_legs_are_timeouts_or_server_errors() {
        for timeout in [
            ErrorType::ReadTimedout,
            ErrorType::ConnectTimedout,
            ErrorType::WriteTimedout,
        ] {
            assert_eq!(broken_leg_condition(Some(&timeout)), Timeout);
        }
        assert_eq!(
            broken_leg_condition(Some(&ErrorType::ConnectionClosed)),
            ServerError
        );
        assert_eq!(broken_leg_condition(None), ServerError);
    }

    #[test]
    fn failures_are_kept_for_the_chain_or_delivered() {
        let on = [ServerError, Timeout];
        // Successes and the client's own errors are delivered, whatever else runs.
        assert_eq!(after_failure(None, &on, false), Next::Deliver);
        assert_eq!(after_failure(None, &on, true), Next::Deliver);
        // Listed failures move on to the next fallback (or are delivered when none is left).
        assert_eq!(after_failure(Some(ServerError), &on, false), Next::Keep);
        assert_eq!(after_failure(Some(Timeout), &on, false), Next::Keep);
        // Others are delivered, unless a hedge still runs that may do better.
        assert_eq!(after_failure(Some(RateLimited), &on, false), Next::Deliver);
        assert_eq!(after_failure(Some(Timeout), &[], false), Next::Deliver);
        assert_eq!(after_failure(Some(RateLimited), &on, true), Next::Keep);
    }

    #[test]
    fn only_streams_are_hedged() {
        let hedge = HedgeConfig {
            after: crate::config::HumanDuration(Duration::from_millis(200)),
            max: 2,
        };
        assert_eq!(hedge_for(Some(hedge), true), Some(hedge));
        assert_eq!(hedge_for(Some(hedge), false), None);
        assert_eq!(hedge_for(None, true), None);
    }
}
