//! Leases: a node's claim on a queue entry (or a shared host slot), held in the database as a
//! token with an expiry. Every lease this process holds is renewed by one task, in one
//! statement per table, every third of `queue.lease_time`; dropping the lock releases it. A
//! process that dies renews nothing, so its leases run out and other nodes take the entries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tern_queue::{QueueId, QueueLock, StoreEvent};

use crate::{persist, sql, Inner};

/// What a token holds.
#[derive(Debug, Clone)]
pub(crate) enum Held {
    Entry,
    Slot,
}

/// The guard inside a [`QueueLock`] of this store.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    id: QueueId,
    token: i64,
    /// Set when the entry is gone: nothing to release.
    forgotten: AtomicBool,
}

impl Lease {
    /// A lock for a lease just taken (token `token`), registered for renewal.
    pub(crate) fn held(inner: &Arc<Inner>, id: QueueId, token: i64) -> QueueLock {
        inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, Held::Entry);
        QueueLock::new(
            id.clone(),
            Lease {
                inner: inner.clone(),
                id,
                token,
                forgotten: AtomicBool::new(false),
            },
        )
    }

    pub(crate) fn token(&self) -> i64 {
        self.token
    }

    pub(crate) fn forget(&self) {
        self.forgotten.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
        if self.forgotten.load(Ordering::Relaxed) {
            return;
        }
        // Dropped anywhere (an async task, a blocking thread): the release runs on the store's
        // runtime. Should it never run (the process ends first), the lease runs out.
        let (inner, id, token) = (self.inner.clone(), self.id.clone(), self.token);
        self.inner.releasing.fetch_add(1, Ordering::AcqRel);
        self.inner.rt.spawn(async move {
            let payload = inner.payload(&id);
            let result = persist(inner.lease_time, || async {
                let rows = inner
                    .rows(
                        "releasing a lease",
                        sql::RELEASE,
                        &[&id.as_str(), &token, &payload],
                    )
                    .await?;
                Ok::<_, std::io::Error>(!rows.is_empty())
            })
            .await;
            inner.releasing.fetch_sub(1, Ordering::AcqRel);
            match result {
                // Due now: this node's scheduler hears it too (the NOTIFY is for the others).
                Ok(true) => inner.tell(StoreEvent::ChangedElsewhere { id }),
                Ok(false) => {}
                Err(e) => tracing::warn!(id = %id, error = %e,
                    "queue: cannot release a lease; it runs out by itself"),
            }
        });
    }
}

/// The guard inside a [`tern_queue::HostSlot`].
pub(crate) struct Slot {
    pub(crate) inner: Arc<Inner>,
    pub(crate) host: String,
    pub(crate) slot: i32,
    pub(crate) token: i64,
}

impl Slot {
    pub(crate) fn register(&self) {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.token, Held::Slot);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
        let (inner, host, slot, token) = (
            self.inner.clone(),
            std::mem::take(&mut self.host),
            self.slot,
            self.token,
        );
        self.inner.rt.spawn(async move {
            let result = persist(inner.lease_time, || async {
                inner
                    .rows(
                        "freeing a host slot",
                        sql::FREE_SLOT,
                        &[&host, &slot, &token],
                    )
                    .await
            })
            .await;
            if let Err(e) = result {
                tracing::warn!(host = %host, error = %e,
                    "queue: cannot free a shared host slot; it runs out by itself");
            }
        });
    }
}

/// Renews every lease held, every third of the lease time, for as long as the store lives.
pub(crate) fn spawn_renewer(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let every = (inner.lease_time / 3).max(Duration::from_secs(1));
    inner.rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let (entries, slots): (Vec<i64>, Vec<i64>) = {
                let held = inner.leases.lock().unwrap_or_else(|p| p.into_inner());
                let entries = held
                    .iter()
                    .filter(|(_, h)| matches!(h, Held::Entry))
                    .map(|(t, _)| *t)
                    .collect();
                let slots = held
                    .iter()
                    .filter(|(_, h)| matches!(h, Held::Slot))
                    .map(|(t, _)| *t)
                    .collect();
                (entries, slots)
            };
            if entries.is_empty() && slots.is_empty() {
                continue;
            }
            let result = async {
                let secs = inner.lease_secs();
                inner
                    .rows("renewing leases", sql::RENEW_ENTRIES, &[&entries, &secs])
                    .await?;
                inner
                    .rows("renewing host slots", sql::RENEW_SLOTS, &[&slots, &secs])
                    .await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, leases = entries.len(),
                    "queue: cannot renew leases; deliveries in progress may be taken over by another node");
            }
        }
    });
}
