//! What one client request may spend upstream: a deadline and a number of upstream calls,
//! shared by every leg (hedges, fallbacks) and every attempt made for it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What one client request may spend upstream, shared by every leg (hedges, fallbacks) and every
/// attempt made for it: its deadline and its number of upstream calls, set by the client's
/// model's `total_timeout` and `max_upstream_calls`.
#[derive(Debug)]
pub struct RequestBudget {
    /// When the whole request runs out of time.
    pub deadline: Instant,
    pub max_calls: u32,
    calls_left: AtomicU32,
}

impl RequestBudget {
    pub fn new(total_timeout: Duration, max_calls: u32, now: Instant) -> RequestBudget {
        RequestBudget {
            max_calls,
            calls_left: AtomicU32::new(max_calls),
            // A timeout too large to add is no deadline at all: a century stands in for it.
            deadline: now
                .checked_add(total_timeout)
                .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
                .unwrap_or(now),
        }
    }

    /// Takes one upstream call from the budget; false (and nothing taken) when none is left.
    pub fn take_call(&self) -> bool {
        self.calls_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Gives back a call taken for an attempt that never reached an upstream.
    pub fn return_call(&self) {
        let _ = self
            .calls_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_calls).then_some(n + 1)
            });
    }

    pub fn calls_left(&self) -> u32 {
        self.calls_left.load(Ordering::Acquire)
    }

    /// Upstream calls made so far, over every leg.
    pub fn calls_made(&self) -> u32 {
        self.max_calls.saturating_sub(self.calls_left())
    }
}

/// When a leg runs out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegDeadline {
    pub at: Instant,
    /// The request's total deadline came before the leg's own.
    pub total: bool,
}

/// A leg started at `start` has its model's `timeout` from then, within the request's total
/// deadline.
pub fn leg_deadline(start: Instant, timeout: Duration, total: Instant) -> LegDeadline {
    match start.checked_add(timeout) {
        Some(own) if own < total => LegDeadline {
            at: own,
            total: false,
        },
        _ => LegDeadline {
            at: total,
            total: true,
        },
    }
}

/// Whether another leg (a fallback or a hedge) may start: the request has time left
/// (`total_timeout`) and an upstream call left (`max_upstream_calls`). When not, the last failure
/// is the answer.
pub fn may_start_leg(now: Instant, total_deadline: Instant, calls_left: u32) -> bool {
    now < total_deadline && calls_left > 0
}

/// What is left for the next attempt: until the leg's own deadline, `started` plus its model's
/// `timeout` (each leg of the dispatcher is a subrequest with a context of its own, so `started`
/// is when that leg began), or the request's total deadline, whichever comes first.
pub fn time_left(
    started: Instant,
    timeout: Duration,
    total_deadline: Instant,
    now: Instant,
) -> Duration {
    let leg_deadline = started.checked_add(timeout).unwrap_or(total_deadline);
    leg_deadline
        .min(total_deadline)
        .saturating_duration_since(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_calls_down_to_zero_and_no_further() {
        let budget = RequestBudget::new(Duration::from_secs(1), 2, Instant::now());
        assert_eq!((budget.calls_left(), budget.calls_made()), (2, 0));
        assert!(budget.take_call());
        assert!(budget.take_call());
        assert!(!budget.take_call());
        assert_eq!((budget.calls_left(), budget.calls_made()), (0, 2));
        budget.return_call();
        assert_eq!(budget.calls_made(), 1);
        assert!(budget.take_call());
        // Returning more than was taken never raises the cap.
        for _ in 0..5 {
            budget.return_call();
        }
        assert_eq!(budget.calls_left(), 2);
    }

    #[test]
    fn a_budget_deadline_never_overflows() {
        let now = Instant::now();
        let budget = RequestBudget::new(Duration::MAX, 1, now);
        assert!(budget.deadline > now);
        let budget = RequestBudget::new(Duration::from_secs(3), 1, now);
        assert_eq!(budget.deadline, now + Duration::from_secs(3));
    }

    #[test]
    fn a_leg_has_its_own_timeout_within_the_total() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let own = leg_deadline(t0, s(10), t0 + s(30));
        assert_eq!((own.at, own.total), (t0 + s(10), false));
        // A fallback started at 25 s has 5 s left, not its full 10 s.
        let cut = leg_deadline(t0 + s(25), s(10), t0 + s(30));
        assert_eq!((cut.at, cut.total), (t0 + s(30), true));
        let huge = leg_deadline(t0, Duration::MAX, t0 + s(30));
        assert_eq!((huge.at, huge.total), (t0 + s(30), true));
    }

    #[test]
    fn legs_start_only_while_time_and_calls_are_left() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1);
        assert!(may_start_leg(t0, later, 1));
        assert!(!may_start_leg(t0, t0, 1));
        assert!(!may_start_leg(later, t0, 1));
        assert!(!may_start_leg(t0, later, 0), "the call budget is spent");
    }

    #[test]
    fn an_attempt_gets_what_is_left_of_its_leg_within_the_total() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // The leg's own timeout, counted from the leg's start.
        assert_eq!(time_left(t0, s(10), t0 + s(100), t0 + s(4)), s(6));
        // A fallback leg started later gets its own full timeout.
        assert_eq!(time_left(t0 + s(10), s(10), t0 + s(100), t0 + s(10)), s(10));
        // The request's total cuts it short.
        assert_eq!(time_left(t0, s(10), t0 + s(5), t0 + s(1)), s(4));
        // Nothing left: zero, never an underflow.
        assert_eq!(
            time_left(t0, s(10), t0 + s(100), t0 + s(11)),
            Duration::ZERO
        );
        assert_eq!(time_left(t0, s(10), t0 + s(5), t0 + s(6)), Duration::ZERO);
        // A timeout too large to add leaves the total in charge.
        assert_eq!(time_left(t0, Duration::MAX, t0 + s(5), t0), s(5));
    }
}
