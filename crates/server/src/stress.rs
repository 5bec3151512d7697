//! Stress mode (after Postfix's): while more than `limits.stress_threshold` percent of
//! `limits.max_connections` are busy, waits for the client get the shorter
//! `limits.stress_command_timeout` / `limits.stress_data_timeout`, so that clients holding
//! slots while doing nothing (or trickling) are dropped quickly and new clients get in.
//!
//! The listener reports every change of the number of busy slots; sessions watch the flag and
//! apply the shorter deadline to the wait they are in, not only to their next one.

use tokio::sync::watch;
use tracing::info;

use tern_config::Limits;

pub struct StressMonitor {
    flag: watch::Sender<bool>,
    max_connections: usize,
    threshold_percent: usize,
}

impl StressMonitor {
    pub fn new(limits: &Limits) -> Self {
        Self {
            flag: watch::Sender::new(false),
            max_connections: limits.max_connections,
            threshold_percent: usize::from(limits.stress_threshold),
        }
    }

    /// Whether `busy` slots are past the threshold.
    fn stressed(&self, busy: usize) -> bool {
        busy.saturating_mul(100) > self.max_connections.saturating_mul(self.threshold_percent)
    }

    /// The number of busy slots changed; logs when stress mode starts or ends.
    pub fn update(&self, busy: usize) {
        let now = self.stressed(busy);
        let changed = self.flag.send_if_modified(|on| {
            let changed = *on != now;
            *on = now;
            changed
        });
        if changed {
            if now {
                info!(
                    busy,
                    max_connections = self.max_connections,
                    "stress mode started"
                );
            } else {
                info!(
                    busy,
                    max_connections = self.max_connections,
                    "stress mode ended"
                );
            }
        }
    }

    /// A flag for one session to watch.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.flag.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_threshold_and_back() {
        let mut limits = tern_config::defaults::limits();
        limits.max_connections = 10;
        limits.stress_threshold = 80;
        let m = StressMonitor::new(&limits);
        let rx = m.subscribe();
        m.update(8);
        assert!(!*rx.borrow(), "80 % is not more than 80 %");
        m.update(9);
        assert!(*rx.borrow());
        m.update(8);
        assert!(!*rx.borrow());
    }
}
