//! Per-client state shared by all sessions: message rate (messages per client per minute),
//! failed AUTH attempts per client (a [`ClientKey`]: an address or an IPv6 prefix) and per user
//! name, which earn a growing delay and finally a lockout. In memory only.
//!
//! Both maps have a hard size bound, since their keys are chosen by the clients (addresses,
//! and any user name an attacker types). At the bound, entries nobody needs any more are
//! forgotten first; then the least recently used entries that are not locked out, so that
//! flooding the map with new addresses or names cannot erase a lockout; only a map full of
//! locked-out entries loses its oldest lockouts.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_config::Limits;

use crate::client::ClientKey;

const WINDOW: Duration = Duration::from_secs(60);
/// Failed AUTH attempts are forgotten after this long without a new failure.
const AUTH_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Hard bound on the entries of each map (clients, user names): a few MiB at most.
pub const MAX_ENTRIES: usize = 100_000;

/// Failures and when the last one happened; forgotten after [`AUTH_MEMORY`].
#[derive(Debug, Default, Clone, Copy)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

impl Failures {
    fn current(&mut self, now: Instant) -> u32 {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) >= AUTH_MEMORY)
        {
            self.count = 0;
        }
        self.count
    }

    fn add(&mut self, now: Instant) -> u32 {
        let n = self.current(now) + 1;
        self.count = n;
        self.last = Some(now);
        n
    }

    fn refund(&mut self) {
        self.count = self.count.saturating_sub(1);
    }

    fn remembered(&self, now: Instant) -> bool {
        self.count > 0
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < AUTH_MEMORY)
    }
}

#[derive(Debug, Clone, Copy)]
struct ClientEntry {
    seen: Instant,
    window_start: Option<Instant>,
    messages: usize,
    auth: Failures,
}

#[derive(Debug, Clone, Copy)]
struct UserEntry {
    seen: Instant,
    auth: Failures,
}

trait Tracked {
    fn new(now: Instant) -> Self;
    fn seen(&self) -> Instant;
    fn touch(&mut self, now: Instant);
    /// Holds nothing that still matters: can be dropped at any time.
    fn stale(&self, now: Instant) -> bool;
    fn failures(&self) -> &Failures;
}

impl Tracked for ClientEntry {
    fn new(now: Instant) -> Self {
        Self {
            seen: now,
            window_start: None,
            messages: 0,
            auth: Failures::default(),
        }
    }
    fn seen(&self) -> Instant {
        self.seen
    }
    fn touch(&mut self, now: Instant) {
        self.seen = now;
    }
    fn stale(&self, now: Instant) -> bool {
        self.window_start
            .is_none_or(|t| now.duration_since(t) >= WINDOW)
            && !self.auth.remembered(now)
    }
    fn failures(&self) -> &Failures {
        &self.auth
    }
}

impl Tracked for UserEntry {
    fn new(now: Instant) -> Self {
        Self {
            seen: now,
            auth: Failures::default(),
        }
    }
    fn seen(&self) -> Instant {
        self.seen
    }
    fn touch(&mut self, now: Instant) {
        self.seen = now;
    }
    fn stale(&self, now: Instant) -> bool {
        !self.auth.remembered(now)
    }
    fn failures(&self) -> &Failures {
        &self.auth
    }
}

/// A map with a hard size bound and the eviction order described in the module docs.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    cap: usize,
    /// Failures at which an entry is locked out (kept through eviction).
    lockout: u32,
}

impl<K: Hash + Eq + Clone, V: Tracked> Bounded<K, V> {
    fn new(cap: usize, lockout: u32) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            lockout,
        }
    }

    fn entry(&mut self, key: &K, now: Instant) -> &mut V {
        if !self.map.contains_key(key) && self.map.len() >= self.cap {
            self.make_room(now);
        }
        let e = self.map.entry(key.clone()).or_insert_with(|| V::new(now));
        e.touch(now);
        e
    }

    /// Frees at least one slot, and about an eighth of the map when it has to evict live
    /// entries, so that a flood of new keys costs one scan per many inserts.
    fn make_room(&mut self, now: Instant) {
        self.map.retain(|_, e| !e.stale(now));
        if self.map.len() < self.cap {
            return;
        }
        let lockout = self.lockout;
        let locked = |e: &V| e.failures().count >= lockout && e.failures().remembered(now);
        let mut order: Vec<(bool, Instant, K)> = self
            .map
            .iter()
            .map(|(k, e)| (locked(e), e.seen(), k.clone()))
            .collect();
        let evict = (self.cap / 8).max(1).min(order.len());
        // Unlocked before locked, then least recently seen first.
        order.select_nth_unstable_by(evict - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, _, k) in order.into_iter().take(evict) {
            self.map.remove(&k);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

struct Maps {
    clients: Bounded<ClientKey, ClientEntry>,
    users: Bounded<String, UserEntry>,
}

/// Why an AUTH attempt gets no password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefused {
    /// The client is at `limits.max_auth_failures`.
    ClientLocked,
    /// The user name is at `limits.max_auth_failures_per_user`; the attempt was counted
    /// against the client, which is now at `client_failures`.
    UserLocked { client_failures: u32 },
}

/// An AUTH attempt that may go to the password check. It is already counted as a failure of
/// the client and of the user name; [`ClientTracker::auth_succeeded`] or
/// [`ClientTracker::auth_abandoned`] take that back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    pub client: ClientKey,
    /// The user name as tracked (ASCII lower case).
    pub user: String,
    /// How long to wait before answering a failure: grows with the failures before this one.
    pub delay: Duration,
}

pub struct ClientTracker {
    maps: Mutex<Maps>,
    /// The other nodes' counts, when the queue is shared (crate::shared_rate).
    shared: Option<std::sync::Arc<crate::shared_rate::SharedRate>>,
}

impl Default for ClientTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientTracker {
    /// A tracker for the default limits.
    pub fn new() -> Self {
        Self::for_limits(&tern_config::defaults::limits())
    }

    pub fn for_limits(limits: &Limits) -> Self {
        Self::with_bound(limits, MAX_ENTRIES)
    }

    fn with_bound(limits: &Limits, cap: usize) -> Self {
        let lock = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            maps: Mutex::new(Maps {
                clients: Bounded::new(cap, lock(limits.max_auth_failures)),
                users: Bounded::new(cap, lock(limits.max_auth_failures_per_user)),
            }),
            shared: None,
        }
    }

    /// Counts messages across the cluster: what other nodes accepted from a client this
    /// minute counts against its limit here too.
    pub fn with_shared(mut self, shared: std::sync::Arc<crate::shared_rate::SharedRate>) -> Self {
        self.shared = Some(shared);
        self
    }

    fn with<R>(&self, f: impl FnOnce(&mut Maps, Instant) -> R) -> R {
        let mut maps = match self.maps.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        f(&mut maps, Instant::now())
    }

    /// Counts one message from `client`; false if it is over `limit` in the current minute
    /// (`limit` 0 = unlimited).
    pub fn allow_message(&self, client: ClientKey, limit: usize) -> bool {
        if limit == 0 {
            return true;
        }
        let elsewhere = self.shared.as_ref().map_or(0, |s| {
            usize::try_from(s.others(&client)).unwrap_or(usize::MAX)
        });
        let allowed = self.with(|m, now| {
            let e = m.clients.entry(&client, now);
            if e.window_start
                .is_none_or(|t| now.duration_since(t) >= WINDOW)
            {
                e.window_start = Some(now);
                e.messages = 0;
            }
            if e.messages.saturating_add(elsewhere) >= limit {
                false
            } else {
                e.messages += 1;
                true
            }
        });
        if allowed {
            if let Some(s) = &self.shared {
                s.count(&client);
            }
        }
        allowed
    }

    pub fn auth_failures(&self, client: ClientKey) -> u32 {
        self.with(|m, now| m.clients.entry(&client, now).auth.current(now))
    }

    pub fn user_failures(&self, user: &str) -> u32 {
        let user = user.to_ascii_lowercase();
        self.with(|m, now| m.users.entry(&user, now).auth.current(now))
    }

    /// Starts an AUTH attempt: checks both lockouts and counts the attempt as a failure in one
    /// step, so parallel guesses cannot all slip under the limit before any is counted.
    pub fn begin_auth(
        &self,
        client: ClientKey,
        user: &str,
        max_client: usize,
        max_user: usize,
    ) -> Result<AuthAttempt, AuthRefused> {
        let user = user.to_ascii_lowercase();
        self.with(|m, now| {
            let before = m.clients.entry(&client, now).auth.current(now);
            if before as usize >= max_client {
                return Err(AuthRefused::ClientLocked);
            }
            let user_before = m.users.entry(&user, now).auth.current(now);
            let client_failures = m.clients.entry(&client, now).auth.add(now);
            if user_before as usize >= max_user {
                return Err(AuthRefused::UserLocked { client_failures });
            }
            m.users.entry(&user, now).auth.add(now);
            Ok(AuthAttempt {
                client,
                delay: auth_failure_delay(before.max(user_before)),
                user,
            })
        })
    }

    /// The password was right: this attempt is not a failure of the client, and the user's
    /// failures are cleared. Other failures of the client stay: one valid login must not
    /// reopen guessing for every other account.
    pub fn auth_succeeded(&self, attempt: &AuthAttempt) {
        self.with(|m, now| {
            m.clients.entry(&attempt.client, now).auth.refund();
            m.users.entry(&attempt.user, now).auth = Failures::default();
        })
    }

    /// The password was never checked (no capacity): the attempt counts for nobody.
    pub fn auth_abandoned(&self, attempt: &AuthAttempt) {
        self.with(|m, now| {
            m.clients.entry(&attempt.client, now).auth.refund();
            m.users.entry(&attempt.user, now).auth.refund();
        })
    }

    /// Entries held (clients, user names).
    pub fn len(&self) -> (usize, usize) {
        self.with(|m, _| (m.clients.len(), m.users.len()))
    }
}

/// Delay before answering a failed AUTH: 1 s per earlier failure (of the client or of the user
/// name, whichever has more), at most 10 s, so guessing is slow while an honest typo costs little.
pub fn auth_failure_delay(failures: u32) -> Duration {
    Duration::from_secs(u64::from(failures.min(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> ClientKey {
        ClientKey::new(ip.parse().unwrap(), 64)
    }

    #[test]
    fn message_rate() {
        let t = ClientTracker::new();
        let ip = key("192.0.2.1");
        assert!(t.allow_message(ip, 2));
        assert!(t.allow_message(ip, 2));
        assert!(!t.allow_message(ip, 2));
        assert!(t.allow_message(key("192.0.2.2"), 2));
        assert!(t.allow_message(ip, 0));
    }

    #[test]
    fn attempts_count_when_they_start() {
        let t = ClientTracker::new();
        let ip = key("192.0.2.1");
        let a = t.begin_auth(ip, "Alice@x", 3, 10).unwrap();
        assert_eq!(a.delay, Duration::ZERO);
        let b = t.begin_auth(ip, "bob@x", 3, 10).unwrap();
        assert_eq!(b.delay, Duration::from_secs(1));
        t.begin_auth(ip, "bob@x", 3, 10).unwrap();
        // Three attempts in flight: the fourth is refused before any was answered.
        assert_eq!(
            t.begin_auth(ip, "carol@x", 3, 10),
            Err(AuthRefused::ClientLocked)
        );
        assert_eq!(t.auth_failures(ip), 3);
        assert_eq!(t.user_failures("alice@x"), 1);
        assert_eq!(auth_failure_delay(50), Duration::from_secs(10));
    }

    #[test]
    fn success_clears_only_its_own_user() {
        let t = ClientTracker::new();
        let ip = key("192.0.2.1");
        for _ in 0..3 {
            t.begin_auth(ip, "victim@x", 10, 10).unwrap();
        }
        let ok = t.begin_auth(ip, "mine@x", 10, 10).unwrap();
        t.auth_succeeded(&ok);
        assert_eq!(
            t.auth_failures(ip),
            3,
            "the victim's failures stay on the client"
        );
        assert_eq!(t.user_failures("victim@x"), 3);
        assert_eq!(t.user_failures("mine@x"), 0);
        let gone = t.begin_auth(ip, "victim@x", 10, 10).unwrap();
        t.auth_abandoned(&gone);
        assert_eq!((t.auth_failures(ip), t.user_failures("victim@x")), (3, 3));
    }

    #[test]
    fn a_user_name_locks_across_clients() {
        let t = ClientTracker::new();
        for i in 1..=2 {
            t.begin_auth(key(&format!("192.0.2.{i}")), "alice@x", 5, 2)
                .unwrap();
        }
        let r = t.begin_auth(key("192.0.2.3"), "ALICE@x", 5, 2);
        assert_eq!(r, Err(AuthRefused::UserLocked { client_failures: 1 }));
        let delay = t.begin_auth(key("192.0.2.4"), "bob@x", 5, 2).unwrap().delay;
        assert_eq!(delay, Duration::ZERO, "other names are not slowed");
    }

    #[test]
    fn the_bound_holds_and_lockouts_survive_a_flood() {
        let mut limits = tern_config::defaults::limits();
        limits.max_auth_failures = 2;
        limits.max_messages_per_ip_per_minute = 1;
        let t = ClientTracker::with_bound(&limits, 64);
        let locked = key("198.51.100.1");
        for _ in 0..2 {
            t.begin_auth(locked, "root@x", 2, 1000).unwrap();
        }
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            t.allow_message(ClientKey::new(ip.into(), 64), 1);
            t.user_failures(&format!("name{i}@x"));
            let (clients, users) = t.len();
            assert!(clients <= 64 && users <= 64, "{clients} {users}");
        }
        assert_eq!(
            t.begin_auth(locked, "root@x", 2, 1000),
            Err(AuthRefused::ClientLocked)
        );
    }
}
