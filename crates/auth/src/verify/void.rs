//! The SPF void-lookup limit (RFC 7208 4.6.4: more than two DNS queries for mechanisms that
//! answer NXDOMAIN or no records give `permerror`). mail-auth 0.13 enforces the ten-lookup
//! limit (4.6.4 too) but does not count void lookups, so we count them from the outside: the
//! evaluation asks its caches before each A/AAAA/MX query and stores only a positive answer, so
//! per cache "misses minus stores" is the number of queries that came back empty (or failed,
//! but a failure ends the evaluation with `temperror`, which is left alone).
//!
//! One wrinkle: mail-auth's `exists:` asks both the A and the AAAA cache and stores nothing
//! whatever the answer. The `a`/`mx` mechanisms query only the client's address family, so
//! the misses in the *other* family's cache are exactly the `exists:` evaluations; they are
//! taken out of the count (an `exists:` that finds nothing is therefore not counted as void).

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mail_auth::ResolverCache;

/// RFC 7208 4.6.4: "SPF implementations SHOULD limit 'void lookups' to two."
pub const MAX_VOID_LOOKUPS: usize = 2;

/// A cache seen through a counter of misses and stores.
pub(crate) struct Counted<'c, C> {
    cache: &'c C,
    misses: AtomicUsize,
    stores: AtomicUsize,
}

impl<'c, C> Counted<'c, C> {
    pub(crate) fn new(cache: &'c C) -> Self {
        Counted {
            cache,
            misses: AtomicUsize::new(0),
            stores: AtomicUsize::new(0),
        }
    }

    fn misses(&self) -> usize {
        self.misses.load(Ordering::Relaxed)
    }

    fn stores(&self) -> usize {
        self.stores.load(Ordering::Relaxed)
    }
}

impl<K, V, C: ResolverCache<K, V>> ResolverCache<K, V> for Counted<'_, C> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hit = self.cache.get(name);
        if hit.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.remove(name)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.stores.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(key, value, valid_until);
    }
}

/// The void lookups of one SPF evaluation for a client at `ip`, from its A, AAAA and MX
/// counters.
pub(crate) fn void_lookups<A, B, M>(
    ip: IpAddr,
    ipv4: &Counted<'_, A>,
    ipv6: &Counted<'_, B>,
    mx: &Counted<'_, M>,
) -> usize {
    let (own_misses, own_stores, other_misses) = match ip {
        IpAddr::V4(_) => (ipv4.misses(), ipv4.stores(), ipv6.misses()),
        IpAddr::V6(_) => (ipv6.misses(), ipv6.stores(), ipv4.misses()),
    };
    let exists = other_misses;
    let address = own_misses.saturating_sub(exists).saturating_sub(own_stores);
    let mx = mx.misses().saturating_sub(mx.stores());
    address + mx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cache::TtlCache;
    use std::time::Duration;

    #[test]
    fn misses_without_stores_are_void_and_exists_is_left_out() {
        let v4: TtlCache<Box<str>, u8> = TtlCache::new(8);
        let v6: TtlCache<Box<str>, u8> = TtlCache::new(8);
        let mx: TtlCache<Box<str>, u8> = TtlCache::new(8);
        let (c4, c6, cm) = (Counted::new(&v4), Counted::new(&v6), Counted::new(&mx));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        // a:found.test (stored), a:gone.test (void), exists:x.test (both families, no store).
        assert!(c4.get("found.test.").is_none());
        c4.insert("found.test.".into(), 1, later);
        assert!(c4.get("gone.test.").is_none());
        assert!(c4.get("x.test.").is_none());
        assert!(c6.get("x.test.").is_none());
        // mx:nomx.test (void)
        assert!(cm.get("nomx.test.").is_none());
        assert_eq!(void_lookups(ip, &c4, &c6, &cm), 2);
        // A hit is no lookup at all.
        assert_eq!(c4.get("found.test."), Some(1));
        assert_eq!(void_lookups(ip, &c4, &c6, &cm), 2);
    }
}
