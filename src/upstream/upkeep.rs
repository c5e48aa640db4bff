//! The background work of the running registry's providers: each pool's DNS refresh and health
//! checks, and each provider's key files and commands. One service follows the registry in
//! force: after a reload it starts the work of new pools and credentials and stops that of those
//! no longer in use; work carried over by the reload goes on untouched. Off the request path.

use crate::registry::Registry;
use arc_swap::ArcSwap;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Keeps the registry's background work running; woken by each registry swap.
pub struct Upkeep {
    registry: Arc<ArcSwap<Registry>>,
    swapped: watch::Receiver<u64>,
}

impl Upkeep {
    /// `swapped` changes whenever a new registry is stored.
    pub fn new(registry: Arc<ArcSwap<Registry>>, swapped: watch::Receiver<u64>) -> Self {
        Upkeep { registry, swapped }
    }
}

/// One piece of work, and the shared object it serves (held so that its address, the key it is
/// known by, is not reused while the task runs).
struct Task {
    _owner: Arc<dyn std::any::Any + Send + Sync>,
    handle: JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        // Dropping the work's future ends it: a discovery, health check or key command in
        // progress is cancelled (a command's child process is killed with it).
        self.handle.abort();
    }
}

/// The address of what an `Arc` points at: the identity of a pool or credentials.
fn key<T: ?Sized>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as *const () as usize
}

/// Starts the work of what `registry` holds and `running` does not, and ends the rest.
fn follow(registry: &Registry, running: &mut HashMap<usize, Task>, stop: &watch::Receiver<bool>) {
    let mut wanted: HashMap<usize, Task> = HashMap::new();
    for p in &registry.providers {
        let lb = key(&p.upstreams);
        if let Some(task) = running.remove(&lb).or_else(|| wanted.remove(&lb)) {
            wanted.insert(lb, task);
        } else {
            let pool = p.upstreams.clone();
            let stop = stop.clone();
            wanted.insert(
                lb,
                Task {
                    _owner: p.upstreams.clone(),
                    handle: tokio::spawn(async move { pool.run(stop, None).await }),
                },
            );
        }
        if !p.credentials.changes() {
            continue;
        }
        let creds = key(&p.credentials);
        if let Some(task) = running.remove(&creds).or_else(|| wanted.remove(&creds)) {
            wanted.insert(creds, task);
        } else {
            let credentials = p.credentials.clone();
            let stop = stop.clone();
            wanted.insert(
                creds,
                Task {
                    _owner: p.credentials.clone(),
                    handle: tokio::spawn(async move { credentials.refresh(stop).await }),
                },
            );
        }
    }
    // What is left ran for providers the registry no longer holds: dropping it stops it.
    *running = wanted;
}

#[async_trait::async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut swapped = self.swapped.clone();
        let mut running = HashMap::new();
        // The tasks' own stop signal; they are also aborted when dropped.
        let (_stop_tx, stop) = watch::channel(false);
        let mut swaps_open = true;
        loop {
            follow(&self.registry.load(), &mut running, &stop);
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                changed = swapped.changed(), if swaps_open => {
                    // No one can swap the registry any more: keep the work as it is.
                    swaps_open = changed.is_ok();
                }
            }
        }
        running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn registry(yaml: &str) -> Registry {
        let settings = Settings::from_yaml(yaml, &|_| None).expect("valid");
        Registry::build(&settings)
    }

    const ONE: &str =
        "providers:\n  a: { kind: openai, endpoints: [\"http://127.0.0.1:1\"], auth: none }\n";
    const TWO: &str = "providers:\n  a: { kind: openai, endpoints: [\"http://127.0.0.1:1\"], auth: none }\n  b: { kind: openai, endpoints: [\"http://127.0.0.1:2\"], auth: none }\n";

    #[tokio::test]
    async fn work_follows_the_pools_of_the_registry_in_force() {
        let (_tx, stop) = watch::channel(false);
        let mut running = HashMap::new();
        let first = registry(ONE);
        follow(&first, &mut running, &stop);
        assert_eq!(running.len(), 1);
        let a = key(&first.providers[0].upstreams);

        // `a` unchanged is carried over: its task goes on; `b` gets one.
        let second = Registry::rebuild(Some(&first), &Settings::from_yaml(TWO, &|_| None).unwrap());
        assert_eq!(key(&second.providers[0].upstreams), a);
        follow(&second, &mut running, &stop);
        assert_eq!(running.len(), 2);
        assert!(running.contains_key(&a));
        assert!(!running[&a].handle.is_finished());

        // Back to `a` alone: `b`'s task ends.
        let b = key(&second.providers[1].upstreams);
        let b_handle = running.get(&b).map(|t| t.handle.abort_handle()).unwrap();
        let third = Registry::rebuild(Some(&second), &Settings::from_yaml(ONE, &|_| None).unwrap());
        follow(&third, &mut running, &stop);
        assert_eq!(running.len(), 1);
        assert!(running.contains_key(&a));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !b_handle.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the removed pool's work runs on"
            );
            tokio::task::yield_now().await;
        }
    }
}
