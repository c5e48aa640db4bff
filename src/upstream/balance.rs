//! Load-aware instance choice, as options beside Pingora's weighted round robin:
//! `least_inflight` (fewest requests in flight per unit of weight) and `ewma` (lowest moving
//! average of time to first byte, scaled by requests in flight, so a slow instance sheds load).
//!
//! Counts are per instance and shared by all worker threads; an [`InflightGuard`] held for the
//! length of an attempt keeps them right whatever way the attempt ends.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a provider picks among its healthy instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalanceMode {
    /// Pingora's weighted round robin.
    #[default]
    RoundRobin,
    LeastInflight,
    Ewma,
}

impl BalanceMode {
    /// The mode as the config names it.
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceMode::RoundRobin => "round_robin",
            BalanceMode::LeastInflight => "least_inflight",
            BalanceMode::Ewma => "ewma",
        }
    }
}

/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Debug, Default, Clone, Copy)]
struct InstanceLoad {
    inflight: u32,
    /// Moving average of time to first byte, in milliseconds; 0 until the first sample.
    ewma_ms: f64,
    /// Attempts started since the instance was first seen (for the admin endpoints' rates).
    attempts: u64,
}

/// One instance's load as the admin endpoints show it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LoadSnapshot {
    pub inflight: u32,
    /// Moving average of time to first byte, in milliseconds; `None` before the first answer.
    pub latency_ms: Option<f64>,
    pub attempts: u64,
}

#[derive(Debug, Default)]
pub struct LoadTracker {
    loads: Mutex<HashMap<SocketAddr, InstanceLoad>>,
}

impl LoadTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, InstanceLoad>> {
        self.loads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an attempt to `addr` in flight until the guard drops.
    pub fn start(self: &Arc<Self>, addr: SocketAddr) -> InflightGuard {
        {
            let mut loads = self.lock();
            let load = loads.entry(addr).or_default();
            load.inflight += 1;
            load.attempts += 1;
        }
        InflightGuard {
            tracker: self.clone(),
            addr,
        }
    }

    /// Records a time to first byte.
    pub fn observe_latency(&self, addr: SocketAddr, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        let mut loads = self.lock();
        let load = loads.entry(addr).or_default();
        load.ewma_ms = if load.ewma_ms == 0.0 {
            ms
        } else {
            EWMA_ALPHA * ms + (1.0 - EWMA_ALPHA) * load.ewma_ms
        };
    }

    /// The best of `candidates` (address, weight) under `mode`; ties go to the earliest.
    pub fn choose(
        &self,
        mode: BalanceMode,
        candidates: &[(SocketAddr, usize)],
    ) -> Option<SocketAddr> {
        let loads = self.lock();
        let cost = |addr: &SocketAddr, weight: usize| {
            let load = loads.get(addr).copied().unwrap_or_default();
            let pending = f64::from(load.inflight) + 1.0;
            match mode {
                // Unmeasured instances go first, so that every instance gets measured.
                BalanceMode::Ewma if load.ewma_ms == 0.0 => 0.0,
                BalanceMode::Ewma => load.ewma_ms.max(0.01) * pending / weight.max(1) as f64,
                _ => pending / weight.max(1) as f64,
            }
        };
        candidates
            .iter()
            .map(|(addr, weight)| (*addr, cost(addr, *weight)))
            .fold(
                None,
                |best: Option<(SocketAddr, f64)>, (addr, c)| match best {
                    Some((_, best_cost)) if best_cost <= c => best,
                    _ => Some((addr, c)),
                },
            )
            .map(|(addr, _)| addr)
    }

    pub fn inflight(&self, addr: SocketAddr) -> u32 {
        self.lock().get(&addr).map_or(0, |l| l.inflight)
    }

    pub fn snapshot(&self, addr: SocketAddr) -> LoadSnapshot {
        let load = self.lock().get(&addr).copied().unwrap_or_default();
        LoadSnapshot {
            inflight: load.inflight,
            latency_ms: (load.ewma_ms > 0.0).then_some(load.ewma_ms),
            attempts: load.attempts,
        }
    }
}

/// An attempt in flight; dropping it ends the count.
#[derive(Debug)]
pub struct InflightGuard {
    tracker: Arc<LoadTracker>,
    addr: SocketAddr,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(load) = self.tracker.lock().get_mut(&self.addr) {
            load.inflight = load.inflight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn least_inflight_prefers_idle_and_heavier_instances() {
        let t = Arc::new(LoadTracker::default());
        let (a, b) = (addr(1), addr(2));
        let _g1 = t.start(a);
        assert_eq!(
            t.choose(BalanceMode::LeastInflight, &[(a, 1), (b, 1)]),
            Some(b)
        );
        let _g2 = t.start(b);
        let _g3 = t.start(b);
        assert_eq!(
            t.choose(BalanceMode::LeastInflight, &[(a, 1), (b, 1)]),
            Some(a)
        );
        // b has weight 4: 3 in flight / 4 beats 2 / 1.
        assert_eq!(
            t.choose(BalanceMode::LeastInflight, &[(a, 1), (b, 4)]),
            Some(b)
        );
    }

    #[test]
    fn guards_release_counts() {
        let t = Arc::new(LoadTracker::default());
        let g = t.start(addr(1));
        let g2 = t.start(addr(1));
        assert_eq!(t.inflight(addr(1)), 2);
        drop(g);
        drop(g2);
        assert_eq!(t.inflight(addr(1)), 0);
    }

    #[test]
    fn ewma_sheds_load_from_slow_instances() {
        let t = Arc::new(LoadTracker::default());
        let (slow, fast) = (addr(1), addr(2));
        for _ in 0..5 {
            t.observe_latency(slow, Duration::from_millis(900));
            t.observe_latency(fast, Duration::from_millis(30));
        }
        assert_eq!(
            t.choose(BalanceMode::Ewma, &[(slow, 1), (fast, 1)]),
            Some(fast)
        );
        // Even a fast instance stops winning once it has enough in flight.
        let guards: Vec<_> = (0..40).map(|_| t.start(fast)).collect();
        assert_eq!(
            t.choose(BalanceMode::Ewma, &[(slow, 1), (fast, 1)]),
            Some(slow)
        );
        drop(guards);
        // Unmeasured instances get tried.
        assert_eq!(
            t.choose(BalanceMode::Ewma, &[(fast, 1), (addr(3), 1)]),
            Some(addr(3))
        );
    }

    #[test]
    fn empty_candidates() {
        let t = LoadTracker::default();
        assert_eq!(t.choose(BalanceMode::Ewma, &[]), None);
    }
}
