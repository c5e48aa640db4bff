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
}
