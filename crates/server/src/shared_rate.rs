//! `limits.max_messages_per_ip_per_minute` across the nodes of a cluster (a shared queue on
//! PostgreSQL). The session's check stays in memory and synchronous; what changes is that it
//! also counts what the other nodes accepted from the same client this minute. Counts are
//! exchanged through the store once per [`EXCHANGE`]: each node adds its new counts and reads
//! the others', so the limit holds across nodes to within what a client can send in one
//! exchange period (docs/cluster.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_queue::Cluster;
use tokio_util::sync::CancellationToken;

use crate::client::ClientKey;

/// How often counts are exchanged.
pub const EXCHANGE: Duration = Duration::from_secs(1);

/// Clients counted here and not yet told to the others; bounded like every client-keyed map.
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub struct SharedRate {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The wall-clock minute (Unix seconds) the counts are for.
    minute: u64,
    /// This node's counts not yet sent.
    pending: HashMap<String, u32>,
    /// What the other nodes counted this minute, as of the last exchange.
    others: HashMap<String, u32>,
}

fn minute_now() -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs - secs % 60
}

impl SharedRate {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = minute_now();
        if s.minute != now {
            // A new minute: the others' counts were for the last one; what is pending was
            // counted then too and is of no use now.
            s.minute = now;
            s.others.clear();
            s.pending.clear();
        }
        f(&mut s)
    }

    /// What the other nodes accepted from `client` this minute.
    pub fn others(&self, client: &ClientKey) -> u32 {
        let key = client.to_string();
        self.with(|s| s.others.get(&key).copied().unwrap_or(0))
    }

    /// One more message from `client` accepted here.
    pub fn count(&self, client: &ClientKey) {
        let key = client.to_string();
        self.with(|s| {
            if s.pending.len() < MAX_PENDING || s.pending.contains_key(&key) {
                *s.pending.entry(key).or_insert(0) += 1;
            }
        });
    }

    /// Exchanges counts with the other nodes every [`EXCHANGE`] until `shutdown`.
    pub async fn run(self: Arc<Self>, cluster: Arc<dyn Cluster>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(EXCHANGE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (minute, ours) = self.with(|s| (s.minute, std::mem::take(&mut s.pending)));
            let c = cluster.clone();
            let sent = ours.clone();
            let result =
                tokio::task::spawn_blocking(move || c.exchange_rate_counts(minute, &sent)).await;
            match result {
                Ok(Ok(others)) => {
                    failing = false;
                    self.with(|s| {
                        if s.minute == minute {
                            s.others = others;
                        }
                    });
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "limits: cannot share message rates with the cluster; counting this node only until it works again");
                        failing = true;
                    }
                    // Sent again with the next exchange.
                    self.with(|s| {
                        if s.minute == minute {
                            for (k, n) in ours {
                                *s.pending.entry(k).or_insert(0) += n;
                            }
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "limits: rate exchange task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::ClientTracker;

    fn key(ip: &str) -> ClientKey {
        ClientKey::new(ip.parse().unwrap(), 64)
    }

    #[test]
    fn what_other_nodes_counted_counts_here_too() {
        let shared = Arc::new(SharedRate::default());
        let tracker = ClientTracker::new().with_shared(shared.clone());
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        shared.with(|s| {
            s.others.insert(a.to_string(), 4);
        });
        // Limit 5: the other nodes had 4 from a, so one more here, then refused.
        assert!(tracker.allow_message(a, 5));
        assert!(!tracker.allow_message(a, 5));
        // b is unknown elsewhere: the local count alone.
        for _ in 0..5 {
            assert!(tracker.allow_message(b, 5));
        }
        assert!(!tracker.allow_message(b, 5));
        // What was accepted here waits to be told to the others; refusals are not counted.
        let pending = shared.with(|s| s.pending.clone());
        assert_eq!(pending.get(&a.to_string()), Some(&1));
        assert_eq!(pending.get(&b.to_string()), Some(&5));
        assert_eq!(shared.others(&a), 4);
    }
}
