//! The scheduler for a queue several nodes share (`[queue] backend = "postgres"`). Another
//! node may take any entry at any moment, so no index of due times is kept here: the store is
//! asked for due entries (`Cluster::claim_due`, leased to this node) whenever a delivery slot
//! is free and something may have become due: a commit here or on another node (a store
//! event), a round's end, the store's own next due time or lease expiry, and at least every
//! [`MAX_SLEEP`] whatever happens, which also catches a dead node's leases running out.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tern_config::Config;
use tern_queue::{Cluster, Envelope, QueueLock, StoreEvent};

use crate::round::{self, After, Context};
use crate::scheduler::{context, SHUTDOWN_GRACE};

/// The longest wait between two looks at the store.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// The most entries one claim takes (the free slots permitting).
const CLAIM_BATCH: usize = 64;
/// How soon to ask again when the store could not be asked (the database is down).
const TROUBLE_WAIT: Duration = Duration::from_secs(1);
/// How often idle pooled connections are closed.
const POOL_SWEEP: Duration = Duration::from_secs(2);

pub(crate) struct Claimer {
    pub(crate) ctx: Arc<Context>,
    pub(crate) cluster: Arc<dyn Cluster>,
    pub(crate) jobs: JoinSet<After>,
    /// The earliest time one of this node's rounds asked to be looked at again: the store
    /// knows it too, but a lease released after the last look would hide it until then.
    pub(crate) soonest: Option<SystemTime>,
}

impl Claimer {
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<StoreEvent>,
        mut configs: watch::Receiver<Arc<Config>>,
        shutdown: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(POOL_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trouble_logged = false;
        loop {
            let wake = match self.claim().await {
                Ok(wake) => {
                    if trouble_logged {
                        tracing::info!("relay: the shared queue answers again");
                        trouble_logged = false;
                    }
                    wake
                }
                Err(e) => {
                    if !trouble_logged {
                        tracing::warn!(error = %e, "relay: cannot claim due entries from the shared queue; retrying");
                        trouble_logged = true;
                    }
                    Some(SystemTime::now() + TROUBLE_WAIT)
                }
            };
            let wait = wake
                .map_or(MAX_SLEEP, |t| {
                    t.duration_since(SystemTime::now()).unwrap_or_default()
                })
                .min(MAX_SLEEP);
            let timer = tokio::time::sleep(wait);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    match done {
                        Ok(After::At(t)) => {
                            self.soonest = Some(self.soonest.map_or(t, |s| s.min(t)));
                        }
                        Ok(After::Nothing) => {}
                        Err(e) => tracing::error!(error = %e, "relay: delivery task failed"),
                    }
                }
                Some(_) = events.recv() => {
                    // One look at the store answers every event queued so far.
                    while events.try_recv().is_ok() {}
                }
                _ = timer => {}
                _ = sweep.tick() => self.ctx.connector.sweep(false),
                Ok(()) = configs.changed() => {
                    let cfg = configs.borrow_and_update().clone();
                    self.ctx.connector.sweep(true);
                    self.ctx = context(cfg, self.ctx.queue.clone());
                    tracing::info!("relay: new config in force for new delivery rounds");
                }
            }
        }
        self.drain().await;
    }

    /// Claims as many due entries as there are free slots and starts their rounds; returns
    /// when to look again (`None`: only when told).
    async fn claim(&mut self) -> std::io::Result<Option<SystemTime>> {
        let now = SystemTime::now();
        if self.soonest.is_some_and(|t| t <= now) {
            self.soonest = None;
        }
        let free = self
            .ctx
            .cfg
            .outbound
            .concurrency
            .max(1)
            .saturating_sub(self.jobs.len());
        if free == 0 {
            // A round's end is the next chance.
            return Ok(None);
        }
        let want = free.min(CLAIM_BATCH);
        let cluster = self.cluster.clone();
        let claimed: Vec<(QueueLock, Envelope)> =
            tokio::task::spawn_blocking(move || cluster.claim_due(want))
                .await
                .map_err(std::io::Error::other)??;
        let got = claimed.len();
        for (lock, env) in claimed {
            let ctx = self.ctx.clone();
            self.jobs.spawn(round::run_claimed(ctx, lock, env));
        }
        if got == want {
            // There may be more: look again at once (the slots bound how many run).
            return Ok(Some(SystemTime::now()));
        }
        let cluster = self.cluster.clone();
        let next = tokio::task::spawn_blocking(move || cluster.next_wake())
            .await
            .map_err(std::io::Error::other)??;
        Ok(match (next, self.soonest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn drain(mut self) {
        let wait = async { while self.jobs.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, wait).await.is_err() {
            tracing::warn!(
                in_progress = self.jobs.len(),
                "relay: abandoning deliveries still in progress at shutdown; their leases run out and any node retries them"
            );
            self.jobs.shutdown().await;
        }
        self.ctx.connector.sweep(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
