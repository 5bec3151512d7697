//! When each queued entry is tried. The scheduler keeps an in-memory index of every entry's
//! next due time, built from the queue once at start-up and then kept current by the queue's
//! own events ([`StoreEvent`]): a commit (new mail, a bounce) makes an entry due at once, a
//! round's result or an update sets its next retry, a removal drops it, and a change made by
//! another process (`tern queue` hold, release, flush) makes the entry be looked at again.
//! Nothing reads the whole queue periodically except a slow safety rescan
//! ([`SAFETY_RESCAN`]) that repairs the index should an event ever be lost.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tern_config::Config;
use tern_dns::{setup_resolver_dnssec, Resolver};
use tern_queue::{QueueId, QueueStore, StoreEvent};

use crate::connector::Connector;
use crate::notify::Notifier;
use crate::round::{self, After, Context};

/// How often the whole queue is read to repair the index (it is otherwise never read whole).
pub const SAFETY_RESCAN: Duration = Duration::from_secs(60);

/// How often idle pooled connections are closed (no queue I/O).
const POOL_SWEEP: Duration = Duration::from_secs(2);

/// How long shutdown waits for deliveries in progress before abandoning them. An abandoned
/// delivery is retried after the restart; only one cut off after the remote's final 250 and
/// before the spool update would be delivered twice.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// DNS queries for mail routing give up after this long (and the recipient is deferred).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest single sleep: wall-clock time (what due times are in) can jump.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub struct Workers {
    handle: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    reconfigure: watch::Sender<Arc<Config>>,
}

impl Workers {
    /// A reload: rounds started from now on use `cfg` (routes, outbound TLS policy, retry
    /// schedule, concurrency, DNS); rounds in progress finish with the config they began with.
    pub fn reconfigure(&self, cfg: Arc<Config>) {
        let _ = self.reconfigure.send(cfg);
    }

    /// Waits until the scheduler has stopped (after `shutdown` was cancelled).
    pub async fn stop(&self) {
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

/// Starts the scheduler on `queue`; it subscribes to the queue's events before reading it.
pub fn spawn(cfg: Arc<Config>, queue: Arc<dyn QueueStore>, shutdown: CancellationToken) -> Workers {
    let (tx, events) = mpsc::unbounded_channel();
    queue.subscribe(Arc::new(move |event| {
        // A closed channel means the scheduler stopped: nothing to tell.
        let _ = tx.send(event);
    }));
    let (reconfigure, configs) = watch::channel(cfg.clone());
    let cluster = queue.cluster();
    let ctx = context(cfg, queue);
    if let Some(cluster) = cluster {
        // A shared queue: due entries are claimed from the store (crate::claimer).
        let claimer = crate::claimer::Claimer {
            ctx,
            cluster,
            jobs: JoinSet::new(),
            soonest: None,
        };
        return Workers {
            handle: std::sync::Mutex::new(Some(tokio::spawn(
                claimer.run(events, configs, shutdown),
            ))),
            reconfigure,
        };
    }
    // A round holds its message in memory: the slot is taken before the message is loaded,
    // so a flush of a large backlog loads at most `outbound.concurrency` messages at a time.
    let slots = Arc::new(Semaphore::new(ctx.cfg.outbound.concurrency.max(1)));
    let scheduler = Scheduler {
        ctx,
        slots,
        index: DueIndex::default(),
        in_flight: HashSet::new(),
        jobs: JoinSet::new(),
        job_ids: HashMap::new(),
    };
    Workers {
        handle: std::sync::Mutex::new(Some(tokio::spawn(scheduler.run(events, configs, shutdown)))),
        reconfigure,
    }
}

/// Everything a round needs, built from one config.
pub(crate) fn context(cfg: Arc<Config>, queue: Arc<dyn QueueStore>) -> Arc<Context> {
    let resolver = resolver(&cfg);
    Arc::new(Context {
        queue: queue.clone(),
        connector: Connector::new(cfg.clone(), resolver).with_cluster(queue.cluster()),
        notifier: Notifier::new(cfg.clone(), queue),
        domains: domain_classes(&cfg),
        cfg,
    })
}

/// `[admin] metrics_domains`, else the built-in list of large providers.
pub fn domain_classes(cfg: &Config) -> tern_metrics::DomainClasses {
    match cfg.admin.as_ref().and_then(|a| a.metrics_domains.as_ref()) {
        Some(list) => tern_metrics::DomainClasses::new(list),
        None => tern_metrics::DomainClasses::default(),
    }
}

fn resolver(cfg: &Config) -> Arc<dyn Resolver> {
    // DANE (crate::dane): a DNSSEC-validating resolver beside the plain one, when MX delivery
    // or a route uses DANE.
    let dane = cfg.outbound.dane || cfg.routes.values().any(|r| r.dane);
    let anchor = cfg.dns.dnssec_trust_anchor.as_deref();
    let setup = setup_resolver_dnssec(&cfg.dns.nameservers, DNS_TIMEOUT, dane.then_some(anchor));
    if let Some(e) = &setup.dnssec_error {
        tracing::error!(error = %e, "relay: cannot set up the DNSSEC resolver; DANE lookups never validate");
    }
    if let Some(e) = &setup.fallback {
        // Without /etc/resolv.conf MX delivery cannot work, but static routes still do, and
        // the errors from a resolver pointed at localhost say what is wrong.
        tracing::error!(error = %e, "relay: cannot set up the system resolver; set [dns] nameservers");
    }
    setup.resolver
}

/// Entries by next due time. An entry with a round in progress is not in the index: the
/// round's result puts it back.
#[derive(Debug, Default)]
pub struct DueIndex {
    by_time: BTreeSet<(SystemTime, QueueId)>,
    due_of: HashMap<QueueId, SystemTime>,
}

impl DueIndex {
    /// Sets (or with `None` clears) when `id` is due.
    pub fn set(&mut self, id: QueueId, due: Option<SystemTime>) {
        if let Some(old) = self.due_of.remove(&id) {
            self.by_time.remove(&(old, id.clone()));
        }
        if let Some(t) = due {
            self.by_time.insert((t, id.clone()));
            self.due_of.insert(id, t);
        }
    }

    /// Removes and returns every entry due at `now`, earliest first.
    pub fn take_due(&mut self, now: SystemTime) -> Vec<QueueId> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.by_time.first() {
            if *t > now {
                break;
            }
            if let Some((_, id)) = self.by_time.pop_first() {
                self.due_of.remove(&id);
                out.push(id);
            }
        }
        out
    }

    /// The earliest due time.
    pub fn next(&self) -> Option<SystemTime> {
        self.by_time.first().map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.due_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due_of.is_empty()
    }

    pub fn contains(&self, id: &QueueId) -> bool {
        self.due_of.contains_key(id)
    }
}

struct Scheduler {
    ctx: Arc<Context>,
    /// Rounds running at once (each holds one message in memory).
    slots: Arc<Semaphore>,
    index: DueIndex,
    /// Entries with a round in progress in this process (the queue lock covers other processes).
    in_flight: HashSet<QueueId>,
    jobs: JoinSet<After>,
    job_ids: HashMap<tokio::task::Id, QueueId>,
}

impl Scheduler {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<StoreEvent>,
        mut configs: watch::Receiver<Arc<Config>>,
        shutdown: CancellationToken,
    ) {
        self.rescan().await;
        let mut rescan =
            tokio::time::interval_at(tokio::time::Instant::now() + SAFETY_RESCAN, SAFETY_RESCAN);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(POOL_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.dispatch_due();
            let wake = self.index.next().map(|t| {
                let wait = t
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(MAX_SLEEP);
                tokio::time::Instant::now() + wait
            });
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    let (task, after) = match done {
                        Ok((task, after)) => (task, after),
                        Err(e) => {
                            tracing::error!(error = %e, "relay: delivery task failed");
                            // Looked at again by the next safety rescan.
                            (e.id(), After::Nothing)
                        }
                    };
                    if let Some(id) = self.job_ids.remove(&task) {
                        self.in_flight.remove(&id);
                        if let After::At(t) = after {
                            self.index.set(id, Some(t));
                        }
                    }
                }
                Some(event) = events.recv() => self.on_event(event),
                _ = timer => {}
                _ = rescan.tick() => self.rescan().await,
                _ = sweep.tick() => self.ctx.connector.sweep(false),
                Ok(()) = configs.changed() => {
                    let cfg = configs.borrow_and_update().clone();
                    // The old context's pooled connections are closed; rounds in progress
                    // keep theirs until they finish.
                    self.ctx.connector.sweep(true);
                    self.slots = Arc::new(Semaphore::new(cfg.outbound.concurrency.max(1)));
                    self.ctx = context(cfg, self.ctx.queue.clone());
                    tracing::info!("relay: new config in force for new delivery rounds");
                }
            }
        }
        self.drain().await;
    }

    fn on_event(&mut self, event: StoreEvent) {
        let (id, due) = match event {
            StoreEvent::Committed { id, due } | StoreEvent::Updated { id, due } => (id, due),
            StoreEvent::Removed { id } => (id, None),
            // Its new state is unknown: a round looks (it is cheap when nothing is due).
            StoreEvent::ChangedElsewhere { id } => (id, Some(SystemTime::UNIX_EPOCH)),
            // Only a shared store sends this, and a shared store is scheduled by the claimer.
            StoreEvent::Resync => return,
        };
        // A round in progress decides for itself (its own update is one of these events).
        if !self.in_flight.contains(&id) {
            self.index.set(id, due);
        }
    }

    fn dispatch_due(&mut self) {
        for id in self.index.take_due(SystemTime::now()) {
            if !self.in_flight.insert(id.clone()) {
                continue;
            }
            let (ctx, slots, round_id) = (self.ctx.clone(), self.slots.clone(), id.clone());
            let handle = self.jobs.spawn(async move {
                // Never closed, so acquiring cannot fail; without a permit the round still runs.
                let _slot = slots.acquire_owned().await.ok();
                round::run(ctx, round_id).await
            });
            self.job_ids.insert(handle.id(), id);
        }
    }

    /// Reads every entry's due time from the queue and rebuilds the index (entries in flight
    /// excepted). At start-up this is how mail queued before a restart is found.
    async fn rescan(&mut self) {
        let queue = self.ctx.queue.clone();
        let found = tokio::task::spawn_blocking(move || due_times(queue.as_ref())).await;
        match found {
            Ok(Ok(entries)) => {
                let mut index = DueIndex::default();
                for (id, due) in entries {
                    if !self.in_flight.contains(&id) {
                        index.set(id, due);
                    }
                }
                if index.len() != self.index.len() {
                    tracing::debug!(
                        before = self.index.len(),
                        after = index.len(),
                        "relay: index rebuilt"
                    );
                }
                self.index = index;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "relay: cannot read the queue"),
            Err(e) => tracing::error!(error = %e, "relay: rescan task failed"),
        }
    }

    async fn drain(mut self) {
        let wait = async { while self.jobs.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, wait).await.is_err() {
            tracing::warn!(
                in_progress = self.jobs.len(),
                "relay: abandoning deliveries still in progress at shutdown; they are retried after restart"
            );
            self.jobs.shutdown().await;
        }
        self.ctx.connector.sweep(true);
        // Give the QUITs a moment; they are a courtesy, not a requirement.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every entry with its next due time.
fn due_times(queue: &dyn QueueStore) -> std::io::Result<Vec<(QueueId, Option<SystemTime>)>> {
    let mut out = Vec::new();
    for id in queue.list()? {
        // An entry removed or rewritten between list and load is looked at by its event.
        if let Ok(env) = queue.load(&id) {
            let due = env.next_due();
            out.push((id, due));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> QueueId {
        format!("{:032x}", n).parse().unwrap()
    }

    #[test]
    fn the_index_hands_out_due_entries_in_time_order_once() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut ix = DueIndex::default();
        ix.set(id(1), Some(t0 + Duration::from_secs(30)));
        ix.set(id(2), Some(t0));
        ix.set(id(3), Some(t0 + Duration::from_secs(90)));
        // Re-setting moves an entry; None drops it.
        ix.set(id(3), Some(t0 + Duration::from_secs(10)));
        ix.set(id(4), Some(t0));
        ix.set(id(4), None);
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.next(), Some(t0));
        assert_eq!(
            ix.take_due(t0 + Duration::from_secs(15)),
            vec![id(2), id(3)]
        );
        assert!(ix.take_due(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(ix.next(), Some(t0 + Duration::from_secs(30)));
        assert!(ix.contains(&id(1)) && !ix.contains(&id(2)));
    }
}
