//! The DATA memory budget (`limits.max_data_memory`): what all sessions together may hold of
//! messages that are arriving. A message streams to a spool file past a small threshold, so a
//! session's share is its read buffer and that threshold; the budget caps the sum, so that
//! a thousand sessions each sending a huge message cannot add up to more memory than the
//! operator allowed. A session that finds the budget spent still receives, with a small buffer
//! and every piece written out at once: slower for it, bounded for the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct DataMemory {
    limit: u64,
    used: AtomicU64,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<DataMemory>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl DataMemory {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// `bytes` of the budget, or `None` when that would exceed it.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .ok()
            .map(|_| Reservation {
                budget: self.clone(),
                bytes,
            })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_come_back_when_dropped() {
        let budget = DataMemory::new(300);
        let a = budget.try_reserve(200).unwrap();
        assert!(budget.try_reserve(200).is_none());
        let b = budget.try_reserve(100).unwrap();
        assert_eq!(budget.used(), 300);
        drop(a);
        assert_eq!(budget.used(), 100);
        assert!(budget.try_reserve(200).is_some());
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
