//! The process-wide bound on memory held in request bodies and buffered answers
//! (`edge.max_buffered_bytes`).
//!
//! Every buffer grows its [`Held`] share as bytes arrive, before keeping them; the share is given
//! back when the `Held` drops. One atomic counter shared by all worker threads: no lock and no
//! allocation per request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A byte budget shared by many holders.
pub struct BufferBudget {
    held: AtomicUsize,
    limit: AtomicUsize,
}

/// The gateway's budget, set from the config at start ([`BufferBudget::set_limit`]).
pub static BUFFERS: BufferBudget = BufferBudget::new(usize::MAX);

/// The budget had no room for more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    pub limit: usize,
}

impl BufferBudget {
    pub const fn new(limit: usize) -> BufferBudget {
        BufferBudget {
            held: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now, by all holders.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An empty share of this budget.
    pub const fn share(&'static self) -> Held {
        Held {
            budget: self,
            bytes: 0,
        }
    }
}

/// One holder's share of a [`BufferBudget`], given back on drop.
pub struct Held {
    budget: &'static BufferBudget,
    bytes: usize,
}

impl Held {
    /// Takes `n` more bytes, unless that would put the budget over its limit.
    pub fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        let limit = self.budget.limit.load(Ordering::Relaxed);
        let before = self.budget.held.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > limit {
            self.budget.held.fetch_sub(n, Ordering::Relaxed);
            return Err(Exhausted { limit });
        }
        self.bytes += n;
        Ok(())
    }

    /// Bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Default for Held {
    fn default() -> Self {
        BUFFERS.share()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_grow_within_the_limit_and_give_back_on_drop() {
        static BUDGET: BufferBudget = BufferBudget::new(100);
        let mut a = BUDGET.share();
        let mut b = BUDGET.share();
        assert_eq!(a.grow(60), Ok(()));
        assert_eq!(b.grow(41), Err(Exhausted { limit: 100 }));
        assert_eq!(BUDGET.held(), 60, "a refused grow takes nothing");
        assert_eq!(b.grow(40), Ok(()));
        assert_eq!(BUDGET.held(), 100);
        drop(a);
        assert_eq!(BUDGET.held(), 40);
        assert_eq!(b.grow(60), Ok(()));
        assert_eq!(b.bytes(), 100);
        drop(b);
        assert_eq!(BUDGET.held(), 0);
    }
}
