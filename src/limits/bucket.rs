//! In-process limits: token buckets (requests or tokens per minute) and a concurrency gauge,
//! shared by every worker thread. Each bucket has its own short lock, never held across an await.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bucket holding up to `capacity` units that refills at `capacity` per minute.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<Level>,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    units: f64,
    at: Instant,
}

/// A bucket's state after a take: what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Units per minute.
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl TokenBucket {
    pub fn per_minute(capacity: u64) -> Self {
        let capacity = capacity as f64;
        TokenBucket {
            capacity,
            per_second: capacity / 60.0,
            state: Mutex::new(Level {
                units: capacity,
                at: Instant::now(),
            }),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// The time `cost` more units than `available` take to refill.
    pub fn wait_for(&self, cost: f64, available: f64) -> Duration {
        Duration::from_secs_f64(((cost - available) / self.per_second).clamp(0.0, 3600.0))
    }

    pub fn reading(&self, units: f64) -> Reading {
        Reading {
            limit: self.capacity as u64,
            remaining: units.max(0.0) as u64,
            reset: Duration::from_secs_f64(
                ((self.capacity - units) / self.per_second).clamp(0.0, 3600.0),
            ),
        }
    }

    fn with_level<T>(&self, now: Instant, f: impl FnOnce(&mut f64) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update: the level is still a
        // number, so keep using it.
        let mut level = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(level.at).as_secs_f64();
        level.units = (level.units + elapsed * self.per_second).min(self.capacity);
        level.at = now;
        f(&mut level.units)
    }

    /// Takes `cost` units if the bucket holds them: `Ok` with the reading after, or `Err` with
    /// how long until it would.
    pub fn try_take(&self, cost: u64, now: Instant) -> Result<Reading, Duration> {
        let cost = cost as f64;
        self.with_level(now, |units| {
            if *units >= cost {
                *units -= cost;
                Ok(self.reading(*units))
            } else {
                Err(self.wait_for(cost, *units))
            }
        })
    }

    /// Adds `amount` back (up to the capacity) or, negative, takes it even into debt: the
    /// correction once a request's real token usage is known.
    pub fn adjust(&self, amount: f64, now: Instant) {
        self.with_level(now, |units| {
            // A debt is bounded by one bucket's worth, so one huge answer cannot block a key
            // for longer than a minute.
            *units = (*units + amount).clamp(-self.capacity, self.capacity);
        })
    }
}

/// Requests in flight, at most `limit`.
#[derive(Debug)]
pub struct Concurrency {
    limit: u32,
    in_flight: Arc<AtomicU32>,
}

/// One request's place in a [`Concurrency`] gauge, given back when dropped.
#[derive(Debug)]
pub struct ConcurrencySlot(Arc<AtomicU32>);

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Concurrency {
    pub fn new(limit: u32) -> Self {
        Concurrency {
            limit,
            in_flight: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn try_acquire(&self) -> Option<ConcurrencySlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ConcurrencySlot(self.in_flight.clone()))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_capacity() {
        let b = TokenBucket::per_minute(60);
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(b.try_take(1, t0).is_ok());
        }
        let wait = b.try_take(1, t0).unwrap_err();
        assert!(wait > Duration::from_millis(990) && wait <= Duration::from_secs(1));
        // One unit per second.
        let r = b.try_take(1, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(r.remaining, 0);
        assert_eq!(r.limit, 60);
        // Never above the capacity, however long it waits.
        let r = b.try_take(0, t0 + Duration::from_secs(3600)).unwrap();
        assert_eq!(r.remaining, 60);
        assert_eq!(r.reset, Duration::ZERO);
    }

    #[test]
    fn a_cost_above_what_is_left_waits_for_the_difference() {
        let b = TokenBucket::per_minute(600);
        let t0 = Instant::now();
        assert_eq!(b.try_take(500, t0).unwrap().remaining, 100);
        // 200 more need 100 refilled: 10 s at 10 per second.
        let wait = b.try_take(200, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 10.0).abs() < 0.01, "{wait:?}");
        // A failed take takes nothing.
        assert_eq!(b.try_take(100, t0).unwrap().remaining, 0);
    }

    #[test]
    fn corrections_refund_up_to_the_capacity_and_charge_into_bounded_debt() {
        let b = TokenBucket::per_minute(100);
        let t0 = Instant::now();
        b.try_take(100, t0).unwrap();
        b.adjust(30.0, t0);
        assert_eq!(b.try_take(30, t0).unwrap().remaining, 0);
        b.adjust(-1e9, t0);
        // In debt by one capacity at most: back to one unit after a minute and a bit.
        assert!(b.try_take(1, t0 + Duration::from_secs(60)).is_err());
        assert!(b.try_take(1, t0 + Duration::from_secs(61)).is_ok());
        b.adjust(1e9, t0 + Duration::from_secs(121));
        assert_eq!(
            b.try_take(0, t0 + Duration::from_secs(121))
                .unwrap()
                .remaining,
            100
        );
    }

    #[test]
    fn concurrency_slots_are_given_back_when_dropped() {
        let c = Concurrency::new(2);
        let a = c.try_acquire().unwrap();
        let b = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_none());
        drop(a);
        let _c2 = c.try_acquire().unwrap();
        assert_eq!(c.in_flight(), 2);
        drop(b);
        assert_eq!(c.in_flight(), 1);
    }
}
