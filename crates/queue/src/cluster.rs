//! What a queue store shared by several tern nodes offers beyond [`QueueStore`]: the
//! scheduler claims due entries from it instead of keeping its own index (another node may
//! take any entry at any time), and the limits that must hold across nodes are counted in it.
//! The filesystem spool is not shared and has none of this (`QueueStore::cluster` is `None`).
//!
//! All methods block on I/O, like the rest of the store.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use crate::envelope::Envelope;
use crate::store::{QueueLock, QueueStore};

pub trait Cluster: Send + Sync {
    /// This node's name in leases.
    fn node_id(&self) -> &str;

    /// Leases up to `max` entries that are due now and not leased by anyone (or whose lease
    /// expired: their node died), earliest due first, and returns each with its envelope as
    /// committed. Each lease is renewed while its [`QueueLock`] lives.
    fn claim_due(&self, max: usize) -> io::Result<Vec<(QueueLock, Envelope)>>;

    /// When [`Cluster::claim_due`] next has something to return, as far as the store knows now:
    /// the earliest due time of an unleased entry, or the earliest lease expiry. `None`: nothing
    /// queued. New entries and changes from other nodes arrive as store events.
    fn next_wake(&self) -> io::Result<Option<SystemTime>>;

    /// One of `limit` connection slots to `host` counted across all nodes, held until the
    /// returned guard is dropped (or, if this node dies, until its lease runs out). `None` when
    /// all of them are taken.
    fn try_host_slot(&self, host: &str, limit: usize) -> io::Result<Option<HostSlot>>;

    /// Adds this node's message counts per client for the minute starting at `minute` (Unix
    /// seconds, a multiple of 60) and returns what the *other* nodes counted in that minute, for
    /// the clients they saw most of.
    fn exchange_rate_counts(
        &self,
        minute: u64,
        ours: &HashMap<String, u32>,
    ) -> io::Result<HashMap<String, u32>>;
}

/// A shared connection slot; dropping it gives the slot back.
pub struct HostSlot {
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl HostSlot {
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

/// The store's shared side, if it has one.
pub fn of(store: &Arc<dyn QueueStore>) -> Option<Arc<dyn Cluster>> {
    store.cluster()
}
