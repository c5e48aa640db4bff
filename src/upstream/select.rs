//! Choosing the instance for an attempt: healthy (active checks), circuit not open (passive
//! health), the model not set aside there after a 429, not failed for this request, and not
//! already serving it in a hedged leg while another is free.

use crate::registry::Provider;
use crate::upstream::balance::BalanceMode;
use crate::upstream::breaker::{Admission, CircuitState, ProbeGuard};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_load_balancing::Backend;
use std::time::Instant;

/// Picks an instance of `provider` for an attempt at `upstream_model`, avoiding `failed` always
/// and `in_use` while others remain.
pub fn pick(
    provider: &Provider,
    upstream_model: &str,
    failed: &[SocketAddr],
    in_use: &[SocketAddr],
    now: Instant,
) -> Option<Pick> {
    match provider.balance {
        BalanceMode::RoundRobin => round_robin_pick(provider, upstream_model, failed, in_use, now),
        mode => load_aware_pick(provider, upstream_model, failed, in_use, mode, now),
    }
}

/// An instance chosen for an attempt, with its probe slot when its circuit is half-open.
pub type Pick = (Backend, Option<ProbeGuard>);

/// Whether `b` may take this attempt, circuit aside.
fn eligible(
    b: &Backend,
    healthy: bool,
    failed: &[SocketAddr],
    in_use: Option<&[SocketAddr]>,
) -> bool {
    healthy && !failed.contains(&b.addr) && !in_use.is_some_and(|busy| busy.contains(&b.addr))
}

/// When no instance could be picked: how long until the first instance has `upstream_model`
/// back, if every instance that could otherwise take the attempt (healthy, circuit not open, not
/// failed for this request) has it set aside after a 429. `None` when something else is wrong.
pub fn rate_limited_for(
    provider: &Provider,
    upstream_model: &str,
    failed: &[SocketAddr],
    now: Instant,
) -> Option<std::time::Duration> {
    let backends = provider.upstreams.backends();
    let mut shortest: Option<std::time::Duration> = None;
    for b in backends.get_backend().iter() {
        if !eligible(b, backends.ready(b), failed, None) {
            continue;
        }
        let Some(addr) = inet(&b.addr) else { continue };
        if provider.breakers.state(addr, now) == CircuitState::Open {
            continue;
        }
        let wait = provider.breakers.set_aside(addr, upstream_model, now)?;
        shortest = Some(shortest.map_or(wait, |s| s.min(wait)));
    }
    shortest
}

/// Pingora's weighted round robin over eligible instances whose circuit lets the attempt in.
/// Instances already serving this request (hedges) are avoided while others remain.
fn round_robin_pick(
    provider: &Provider,
    model: &str,
    failed: &[SocketAddr],
    in_use: &[SocketAddr],
    now: Instant,
) -> Option<Pick> {
    // Only the accepted instance's admission can be a probe: selection stops there.
    let probe = std::cell::Cell::new(None);
    let pick = |avoid: Option<&[SocketAddr]>| {
        provider.upstreams.select_with(b"", 256, |b, healthy| {
            eligible(b, healthy, failed, avoid)
                && inet(&b.addr).is_some_and(|a| {
                    match provider.breakers.try_acquire(a, model, now) {
                        Admission::Refused => false,
                        Admission::Admitted => true,
                        Admission::Probe(guard) => {
                            probe.set(Some(guard));
                            true
                        }
                    }
                })
        })
    };
    let backend = pick(Some(in_use)).or_else(|| pick(None))?;
    Some((backend, probe.into_inner()))
}

/// The least loaded eligible instance (`least_inflight`, `ewma`).
fn load_aware_pick(
    provider: &Provider,
    model: &str,
    failed: &[SocketAddr],
    in_use: &[SocketAddr],
    mode: BalanceMode,
    now: Instant,
) -> Option<Pick> {
    let backends = provider.upstreams.backends();
    let all = backends.get_backend();
    for avoid in [Some(in_use), None] {
        let mut candidates: Vec<(std::net::SocketAddr, usize)> = all
            .iter()
            .filter(|b| eligible(b, backends.ready(b), failed, avoid))
            .filter_map(|b| inet(&b.addr).map(|a| (a, b.weight)))
            .filter(|(a, _)| provider.breakers.state(*a, now) != CircuitState::Open)
            .collect();
        while let Some(best) = provider.load.choose(mode, &candidates) {
            let probe = match provider.breakers.try_acquire(best, model, now) {
                Admission::Refused => {
                    candidates.retain(|(a, _)| *a != best);
                    continue;
                }
                Admission::Admitted => None,
                Admission::Probe(guard) => Some(guard),
            };
            let backend = all.iter().find(|b| inet(&b.addr) == Some(best)).cloned()?;
            return Some((backend, probe));
        }
    }
    None
}

/// The IP address of an instance (unix sockets are not upstreams).
pub fn inet(addr: &SocketAddr) -> Option<std::net::SocketAddr> {
    match addr {
        SocketAddr::Inet(a) => Some(*a),
        _ => None,
    }
}
