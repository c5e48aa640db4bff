//! A/B experiments: a model name clients ask for, served by one of several configured models
//! (the arms), each user always by the same one.
//!
//! Assignment is weighted rendezvous hashing. For each arm, the user's identity and the arm's
//! model name are hashed into a uniform draw `u`, and the arm's score is `-ln(u) / weight` (an
//! exponential arrival time at the arm's rate); the earliest arrival wins, which gives each arm
//! `weight / total` of the users. A user's draw for an arm depends on nothing else, so:
//! - the same user lands on the same arm on every request, on every gateway instance, across
//!   restarts;
//! - a reload that raises one arm's weight moves users only to that arm, and lowering it moves
//!   users only away from it, as many as the change in its share; adding or removing an arm moves
//!   only the users it gains or loses. No assignment table is kept.

use crate::config::ExperimentSettings;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One arm: the model that serves its users.
#[derive(Debug)]
pub struct Arm {
    /// The experiment's name.
    pub experiment: String,
    pub model: String,
    weight: f64,
    /// `x-dragoman-variant`: the arm's model name, rendered once.
    pub variant: HeaderValue,
    /// Its requests, when metrics are on.
    pub requests: Option<IntCounter>,
}

#[derive(Debug)]
pub struct Experiment {
    pub name: String,
    /// Arms with weight 0 are kept out: they serve nobody.
    arms: Vec<Arc<Arm>>,
    sticky_header: Option<HeaderName>,
}

/// Who a request is for, as far as sticky assignment goes: the first of the configured header,
/// the request's own user field (OpenAI's `user`, Anthropic's `metadata.user_id`) and the
/// gateway key's name.
pub struct UserIdentity<'a> {
    pub header: Option<&'a [u8]>,
    pub user_field: Option<&'a str>,
    pub key_name: Option<&'a str>,
}

/// Requests with no identity at all are spread by a counter: each lands on an arm by its share,
/// none sticks.
static ANONYMOUS: AtomicU64 = AtomicU64::new(0);

impl Experiment {
    /// `counter`: the request counter of an arm (its variant name), when metrics are on.
    pub fn new(
        settings: &ExperimentSettings,
        counter: impl Fn(&str) -> Option<IntCounter>,
    ) -> Experiment {
        Experiment {
            name: settings.name.clone(),
            arms: settings
                .arms
                .iter()
                .filter(|(_, weight)| *weight > 0)
                .map(|(model, weight)| {
                    Arc::new(Arm {
                        experiment: settings.name.clone(),
                        requests: counter(model),
                        model: model.clone(),
                        weight: f64::from(*weight),
                        // Model names come from a YAML key: one that is no valid header value
                        // (a control character) is reported as `unnamed`.
                        variant: HeaderValue::from_str(model)
                            .unwrap_or_else(|_| HeaderValue::from_static("unnamed")),
                    })
                })
                .collect(),
            sticky_header: settings.sticky_header.clone(),
        }
    }

    /// The header that names the user, if the experiment reads one.
    pub fn user_header<'r>(&self, req: &'r RequestHeader) -> Option<&'r [u8]> {
        let name = self.sticky_header.as_ref()?;
        req.headers
            .get(name)
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
    }

    /// The arm serving this user.
    pub fn assign(&self, who: &UserIdentity) -> &Arc<Arm> {
        let anonymous;
        let user: &[u8] = match (who.header, who.user_field, who.key_name) {
            (Some(h), _, _) => h,
            (None, Some(u), _) => u.as_bytes(),
            (None, None, Some(k)) => k.as_bytes(),
            (None, None, None) => {
                anonymous = ANONYMOUS.fetch_add(1, Ordering::Relaxed).to_le_bytes();
                &anonymous
            }
        };
        self.arm_for(user)
    }

    fn arm_for(&self, user: &[u8]) -> &Arc<Arm> {
        let mut best = 0;
        let mut best_arrival = f64::INFINITY;
        for (i, arm) in self.arms.iter().enumerate() {
            let arrival = -uniform(user, &arm.model).ln() / arm.weight;
            if arrival < best_arrival {
                best = i;
                best_arrival = arrival;
            }
        }
        // Validation keeps at least one arm with a weight above 0.
        &self.arms[best]
    }
}

/// A draw in (0, 1] from the user and the arm: SHA-256 of both, so it is the same on every
/// gateway and for every Rust version, and independent between arms.
fn uniform(user: &[u8], arm: &str) -> f64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so that no two (user, arm) pairs hash the same bytes.
    ctx.update(&(user.len() as u64).to_le_bytes());
    ctx.update(user);
    ctx.update(arm.as_bytes());
    let digest = ctx.finish();
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest.as_ref()[..8]);
    // 53 random bits, shifted off 0 so that the logarithm is finite.
    ((u64::from_le_bytes(top) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(arms: &[(&str, u32)]) -> Experiment {
        let settings = ExperimentSettings {
            name: "exp".into(),
            arms: arms.iter().map(|(m, w)| (m.to_string(), *w)).collect(),
            sticky_header: None,
        };
        Experiment::new(&settings, |_| None)
    }

    fn arm_of<'e>(e: &'e Experiment, user: &str) -> &'e str {
        &e.arm_for(user.as_bytes()).model
    }

    const USERS: usize = 20_000;

    fn shares(e: &Experiment, arms: &[&str]) -> Vec<f64> {
        let mut counts = vec![0usize; arms.len()];
        for u in 0..USERS {
            let arm = arm_of(e, &format!("user-{u}"));
            counts[arms.iter().position(|a| *a == arm).unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 / USERS as f64).collect()
    }

    #[test]
    fn users_are_split_by_weight() {
        // 20,000 users: the standard deviation of a 10% share is 0.2 points; 1 point is 5 of
        // them.
        let e = experiment(&[("a", 90), ("b", 10)]);
        let s = shares(&e, &["a", "b"]);
        assert!((s[1] - 0.10).abs() < 0.01, "{s:?}");
        let e = experiment(&[("a", 1), ("b", 1), ("c", 2)]);
        let s = shares(&e, &["a", "b", "c"]);
        for (share, want) in s.iter().zip([0.25, 0.25, 0.5]) {
            assert!((share - want).abs() < 0.015, "{s:?}");
        }
    }

    #[test]
    fn a_user_always_gets_the_same_arm() {
        let e = experiment(&[("a", 50), ("b", 50)]);
        // Built again (as a reload or another instance would): the same answers.
        let again = experiment(&[("a", 50), ("b", 50)]);
        for u in 0..1000 {
            let user = format!("user-{u}");
            assert_eq!(arm_of(&e, &user), arm_of(&again, &user));
        }
    }

    #[test]
    fn a_weight_change_moves_only_the_users_it_must() {
        let before = experiment(&[("a", 90), ("b", 10)]);
        let after = experiment(&[("a", 80), ("b", 20)]);
        let mut moved = 0;
        for u in 0..USERS {
            let user = format!("user-{u}");
            let (was, now) = (arm_of(&before, &user), arm_of(&after, &user));
            if was != now {
                // Only towards the arm that grew.
                assert_eq!((was, now), ("a", "b"), "{user}");
                moved += 1;
            }
        }
        // The minimum is the share that changed hands: 10%.
        let moved = moved as f64 / USERS as f64;
        assert!((moved - 0.10).abs() < 0.01, "moved {moved}");
    }

    #[test]
    fn a_new_arm_takes_users_only_for_itself() {
        let before = experiment(&[("a", 50), ("b", 50)]);
        let after = experiment(&[("a", 50), ("b", 50), ("c", 100)]);
        for u in 0..5000 {
            let user = format!("user-{u}");
            let now = arm_of(&after, &user);
            if now != "c" {
                assert_eq!(now, arm_of(&before, &user), "{user}");
            }
        }
    }

    #[test]
    fn arms_with_weight_zero_serve_nobody() {
        let e = experiment(&[("a", 0), ("b", 1)]);
        assert!((0..500).all(|u| arm_of(&e, &format!("u{u}")) == "b"));
    }

    #[test]
    fn the_header_comes_before_the_user_field_and_the_key() {
        let e = experiment(&[("a", 50), ("b", 50)]);
        let by = |header: Option<&str>, user: Option<&str>, key: Option<&str>| {
            e.assign(&UserIdentity {
                header: header.map(str::as_bytes),
                user_field: user,
                key_name: key,
            })
            .model
            .clone()
        };
        for u in 0..200 {
            let id = format!("id-{u}");
            let direct = arm_of(&e, &id).to_string();
            assert_eq!(by(Some(&id), Some("other"), Some("k")), direct);
            assert_eq!(by(None, Some(&id), Some("k")), direct);
            assert_eq!(by(None, None, Some(&id)), direct);
        }
    }

    #[test]
    fn anonymous_requests_are_spread_over_the_arms() {
        let e = experiment(&[("a", 50), ("b", 50)]);
        let anonymous = UserIdentity {
            header: None,
            user_field: None,
            key_name: None,
        };
        let b = (0..2000)
            .filter(|_| e.assign(&anonymous).model == "b")
            .count();
        assert!((800..1200).contains(&b), "{b}");
    }
}
