//! The DNS caches the verifier hands to mail-auth. mail-auth 0.13 caches nothing by itself: it
//! asks the caller's `ResolverCache` before every lookup and stores what it parsed with the
//! answer's expiry (hickory's `valid_until`, i.e. the record TTL). These caches keep that
//! promise with two bounds: a size limit (the entry expiring soonest is evicted first) and a
//! maximum lifetime, so a huge TTL cannot pin a record for days. Failed lookups (NXDOMAIN,
//! SERVFAIL, timeouts) are never stored here; hickory's own cache holds negative answers for
//! their SOA minimum (RFC 2308), bounded by `NEGATIVE_MAX_TTL` in the resolver options.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mail_auth::{RecordSet, ResolverCache, Txt, MX};

/// No entry lives longer than this, whatever its TTL says.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// How many entries each cache holds. The defaults fit a busy MX (a few thousand sender
/// domains) in a few megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    pub txt: usize,
    pub mx: usize,
    pub ipv4: usize,
    pub ipv6: usize,
    pub ptr: usize,
}

impl Default for CacheSizes {
    fn default() -> Self {
        CacheSizes {
            txt: 4096,
            mx: 1024,
            ipv4: 2048,
            ipv6: 2048,
            ptr: 1024,
        }
    }
}

/// A bounded map whose entries expire at their DNS expiry (at most [`MAX_TTL`] from insertion).
pub struct TtlCache<K, V> {
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    map: HashMap<K, Entry<V>>,
    /// (expiry, insertion number) -> key: the next entry to evict is the first one.
    by_expiry: BTreeMap<(Instant, u64), K>,
    next_seq: u64,
}

struct Entry<V> {
    value: V,
    expires: Instant,
    seq: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                by_expiry: BTreeMap::new(),
                next_seq: 0,
            }),
        }
    }

    /// Entries stored now (expired ones included until they are looked at or evicted).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A panic elsewhere while holding the lock leaves a map that is still consistent enough
    /// for a cache: use it rather than failing every later lookup.
    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Clone,
{
    fn remove_entry<Q>(&mut self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.map.remove(key)?;
        self.by_expiry.remove(&(entry.expires, entry.seq));
        Some(entry)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        let expires = inner.map.get(name)?.expires;
        if expires <= Instant::now() {
            inner.remove_entry(name);
            return None;
        }
        inner.map.get(name).map(|e| e.value.clone())
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove_entry(name).map(|e| e.value)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let expires = valid_until.min(now + MAX_TTL);
        if expires <= now {
            return;
        }
        let mut inner = self.lock();
        inner.remove_entry(&key);
        while inner.map.len() >= self.capacity {
            let Some((_, oldest)) = inner.by_expiry.pop_first() else {
                break;
            };
            inner.map.remove(&oldest);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.by_expiry.insert((expires, seq), key.clone());
        inner.map.insert(
            key,
            Entry {
                value,
                expires,
                seq,
            },
        );
    }
}

/// One cache per record type mail-auth looks up.
pub struct DnsCaches {
    pub txt: TtlCache<Box<str>, Txt>,
    pub mx: TtlCache<Box<str>, RecordSet<MX>>,
    pub ipv4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub ipv6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    pub ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
}

impl DnsCaches {
    pub fn new(sizes: CacheSizes) -> Self {
        DnsCaches {
            txt: TtlCache::new(sizes.txt),
            mx: TtlCache::new(sizes.mx),
            ipv4: TtlCache::new(sizes.ipv4),
            ipv6: TtlCache::new(sizes.ipv6),
            ptr: TtlCache::new(sizes.ptr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[test]
    fn an_entry_is_served_until_its_expiry_only() {
        let c: TtlCache<Box<str>, u32> = TtlCache::new(4);
        c.insert("a.test.".into(), 1, later(60));
        assert_eq!(c.get("a.test."), Some(1));
        // Already expired: never stored.
        c.insert("b.test.".into(), 2, Instant::now());
        assert_eq!(c.get("b.test."), None);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_size_is_bounded_and_the_soonest_to_expire_goes_first() {
        let c: TtlCache<Box<str>, u32> = TtlCache::new(2);
        c.insert("long.".into(), 1, later(600));
        c.insert("short.".into(), 2, later(10));
        c.insert("new.".into(), 3, later(300));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("short."), None);
        assert_eq!(c.get("long."), Some(1));
        assert_eq!(c.get("new."), Some(3));
    }

    #[test]
    fn replacing_a_key_keeps_one_entry_and_zero_capacity_stores_nothing() {
        let c: TtlCache<Box<str>, u32> = TtlCache::new(2);
        c.insert("a.".into(), 1, later(60));
        c.insert("a.".into(), 2, later(30));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a."), Some(2));
        assert_eq!(c.remove("a."), Some(2));
        assert!(c.is_empty());
        let none: TtlCache<Box<str>, u32> = TtlCache::new(0);
        none.insert("a.".into(), 1, later(60));
        assert!(none.is_empty());
    }

    #[test]
    fn a_huge_ttl_is_capped() {
        let c: TtlCache<Box<str>, u32> = TtlCache::new(1);
        c.insert("a.".into(), 1, later(86400 * 30));
        let inner = c.lock();
        let expires = inner.map.get("a.").map(|e| e.expires);
        assert!(expires.is_some_and(|e| e <= Instant::now() + MAX_TTL));
    }
}
