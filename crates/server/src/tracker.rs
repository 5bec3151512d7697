//! Per-client-IP state shared by all sessions: message rate (messages per IP per minute) and
//! failed AUTH attempts, which earn a growing delay and finally a disconnect. In memory only,
//! with entries forgotten after a quiet period so the map stays bounded by active clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Failed AUTH attempts are forgotten after this long without a new failure.
const AUTH_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Upper bound on remembered clients: past it, stale entries are swept.
const SWEEP_AT: usize = 10_000;

#[derive(Default)]
struct Entry {
    window_start: Option<Instant>,
    messages: usize,
    auth_failures: u32,
    last_auth_failure: Option<Instant>,
}

#[derive(Default)]
pub struct ClientTracker {
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl ClientTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut map = match self.entries.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= SWEEP_AT {
            let now = Instant::now();
            map.retain(|_, e| {
                e.window_start
                    .is_some_and(|t| now.duration_since(t) < WINDOW)
                    || e.last_auth_failure
                        .is_some_and(|t| now.duration_since(t) < AUTH_MEMORY)
            });
        }
        f(map.entry(ip).or_default())
    }

    /// Counts one message from `ip`; false if it is over `limit` in the current minute
    /// (`limit` 0 = unlimited).
    pub fn allow_message(&self, ip: IpAddr, limit: usize) -> bool {
        if limit == 0 {
            return true;
        }
        self.with(ip, |e| {
            let now = Instant::now();
            if e.window_start
                .is_none_or(|t| now.duration_since(t) >= WINDOW)
            {
                e.window_start = Some(now);
                e.messages = 0;
            }
            if e.messages >= limit {
                false
            } else {
                e.messages += 1;
                true
            }
        })
    }

    pub fn auth_failures(&self, ip: IpAddr) -> u32 {
        self.with(ip, |e| {
            if e.last_auth_failure
                .is_some_and(|t| t.elapsed() >= AUTH_MEMORY)
            {
                e.auth_failures = 0;
            }
            e.auth_failures
        })
    }

    /// Records a failure; returns the failures now counted for this IP.
    pub fn record_auth_failure(&self, ip: IpAddr) -> u32 {
        self.with(ip, |e| {
            e.auth_failures += 1;
            e.last_auth_failure = Some(Instant::now());
            e.auth_failures
        })
    }

    pub fn clear_auth_failures(&self, ip: IpAddr) {
        self.with(ip, |e| e.auth_failures = 0);
    }
}

/// Delay before answering a failed AUTH: 1 s per earlier failure, at most 10 s, so guessing is
/// slow while an honest typo costs little.
pub fn auth_failure_delay(failures: u32) -> Duration {
    Duration::from_secs(u64::from(failures.min(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_rate() {
        let t = ClientTracker::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(t.allow_message(ip, 2));
        assert!(t.allow_message(ip, 2));
        assert!(!t.allow_message(ip, 2));
        assert!(t.allow_message("192.0.2.2".parse().unwrap(), 2));
        assert!(t.allow_message(ip, 0));
    }

    #[test]
    fn auth_failures_count_and_clear() {
        let t = ClientTracker::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.record_auth_failure(ip), 1);
        assert_eq!(t.record_auth_failure(ip), 2);
        assert_eq!(t.auth_failures(ip), 2);
        t.clear_auth_failures(ip);
        assert_eq!(t.auth_failures(ip), 0);
        assert_eq!(auth_failure_delay(50), Duration::from_secs(10));
    }
}
