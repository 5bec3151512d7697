//! Outbound delivery of queued remote recipients: the scheduler decides when an entry is tried
//! (new mail at once, deferred recipients by their backoff, `tern queue` changes on the next
//! scan); `job` runs one round for one message; `deliver` talks SMTP through pooled connections
//! under the concurrency limits; `route` finds the next hop. Storage stays behind `QueueStore`.

mod backoff;
mod deliver;
mod job;
mod route;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use tern_config::Config;
use tern_dns::{HickoryResolver, Resolver};
use tern_queue::{FsStore, QueueId, QueueStore};

use crate::inbound::InboundStore;
use deliver::Connector;
use job::Context;

/// How often the spool is rescanned for due retries and for changes made by `tern queue`.
const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// How long shutdown waits for deliveries in progress before abandoning them. An abandoned
/// delivery is retried after the restart; only one cut off after the remote's final 250 and
/// before the spool update would be delivered twice.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// DNS queries for mail routing give up after this long (and the recipient is deferred).
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Workers {
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// Waits until the scheduler has stopped (after `shutdown` was cancelled).
    pub async fn stop(self) {
        if let Some(h) = self.handle {
            let _ = h.await;
        }
    }
}

pub fn spawn(cfg: Arc<Config>, store: Arc<InboundStore>, shutdown: CancellationToken) -> Workers {
    let resolver = resolver(&cfg);
    let queued = store.take_queued();
    let ctx = Arc::new(Context {
        queue: store.queue(),
        connector: Connector::new(cfg.clone(), resolver),
        cfg,
    });
    let scheduler = Scheduler {
        ctx,
        in_flight: HashSet::new(),
        jobs: JoinSet::new(),
        job_ids: HashMap::new(),
    };
    Workers {
        handle: Some(tokio::spawn(scheduler.run(queued, shutdown))),
    }
}

fn resolver(cfg: &Config) -> Arc<dyn Resolver> {
    let built = if cfg.dns.nameservers.is_empty() {
        HickoryResolver::from_system_conf()
    } else {
        HickoryResolver::with_nameservers(&cfg.dns.nameservers, DNS_TIMEOUT)
    };
    match built {
        Ok(r) => Arc::new(r),
        Err(e) => {
            // Without /etc/resolv.conf MX delivery cannot work, but static routes still do, and
            // the errors from a resolver pointed at localhost say what is wrong.
            tracing::error!(error = %e, "relay: cannot set up the system resolver; set [dns] nameservers");
            let fallback = SocketAddr::from(([127, 0, 0, 1], 53));
            match HickoryResolver::with_nameserver(fallback, DNS_TIMEOUT) {
                Ok(r) => Arc::new(r),
                Err(_) => Arc::new(tern_dns::StaticResolver::new()),
            }
        }
    }
}

struct Scheduler {
    ctx: Arc<Context>,
    /// Entries with a round in progress in this process (the queue lock covers other processes).
    in_flight: HashSet<QueueId>,
    jobs: JoinSet<()>,
    job_ids: HashMap<tokio::task::Id, QueueId>,
}

impl Scheduler {
    async fn run(
        mut self,
        mut queued: Option<mpsc::UnboundedReceiver<QueueId>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A retry due before the next regular scan (short retry steps) gets a scan of its own.
        let mut early: Option<tokio::time::Instant> = None;
        loop {
            let early_scan = async {
                match early {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    let task = match &done {
                        Ok((task, ())) => *task,
                        Err(e) => {
                            tracing::error!(error = %e, "relay: delivery task failed");
                            e.id()
                        }
                    };
                    if let Some(id) = self.job_ids.remove(&task) {
                        self.in_flight.remove(&id);
                    }
                    // The round may have deferred a recipient for less than a scan interval.
                    if let Some(step) = self.ctx.cfg.queue.retry_schedule.iter().min() {
                        if *step < SCAN_INTERVAL {
                            let at = tokio::time::Instant::now() + *step;
                            early = Some(early.map_or(at, |e| e.min(at)));
                        }
                    }
                }
                id = recv(&mut queued) => match id {
                    Some(id) => self.dispatch(id),
                    None => queued = None,
                },
                _ = early_scan => {
                    early = self.scan().await;
                }
                _ = tick.tick() => {
                    early = self.scan().await;
                    self.ctx.connector.sweep(false);
                }
            }
        }
        self.drain().await;
    }

    fn dispatch(&mut self, id: QueueId) {
        if !self.in_flight.insert(id.clone()) {
            return;
        }
        let handle = self.jobs.spawn(job::run(self.ctx.clone(), id.clone()));
        self.job_ids.insert(handle.id(), id);
    }

    /// Finds entries with a due recipient. Reads every envelope: simple and cheap for queues of
    /// thousands; a very large backlog would want an in-memory index keyed by next attempt.
    /// Returns when the next retry falls due, if that is sooner than the next regular scan.
    async fn scan(&mut self) -> Option<tokio::time::Instant> {
        let queue = self.ctx.queue.clone();
        let skip = self.in_flight.clone();
        let found = tokio::task::spawn_blocking(move || due_entries(&queue, &skip)).await;
        match found {
            Ok(Ok((ids, next))) => {
                for id in ids {
                    self.dispatch(id);
                }
                let wait = next?.duration_since(SystemTime::now()).unwrap_or_default();
                (wait < SCAN_INTERVAL).then(|| tokio::time::Instant::now() + wait)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "relay: cannot scan the spool");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "relay: scan task failed");
                None
            }
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

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<QueueId>>) -> Option<QueueId> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The entries due now, and the earliest time one of the others falls due.
fn due_entries(
    queue: &FsStore,
    skip: &HashSet<QueueId>,
) -> std::io::Result<(Vec<QueueId>, Option<SystemTime>)> {
    let now = SystemTime::now();
    let mut due = Vec::new();
    let mut next: Option<SystemTime> = None;
    for id in queue.list()? {
        if skip.contains(&id) {
            continue;
        }
        // An entry removed or rewritten between list and load is simply looked at next time.
        if let Ok(env) = queue.load(&id) {
            match job::next_due(&env) {
                Some(t) if t <= now => due.push(id),
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => {}
            }
        }
    }
    Ok((due, next))
}
