//! RFC 5321 5.1 MX selection: sort by preference, shuffle equal preferences, fall back to the
//! domain's own address (implicit MX) when no MX exists, and refuse a null MX (RFC 7505).

use std::net::IpAddr;

use rand::seq::SliceRandom;

use crate::error::DnsError;
use crate::resolver::{MxRecord, Resolver};

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name without the trailing dot.
    pub name: String,
    pub preference: u16,
}

/// The hosts to try for a domain, most preferred first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxResult {
    pub domain: String,
    pub hosts: Vec<MxHost>,
    /// True when there was no MX and the domain itself is the host (RFC 5321 5.1 implicit MX).
    pub implicit: bool,
}

/// The MX hosts of `domain` in the order to try them.
pub async fn mx_hosts(resolver: &dyn Resolver, domain: &str) -> Result<MxResult, DnsError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Err(DnsError::InvalidName(domain));
    }
    let records = resolver.mx(&domain).await?;
    if records.is_empty() {
        // RFC 5321 5.1: no MX -> the domain is treated as an implicit MX with preference 0,
        // provided it has an address; if it has none, that is a permanent failure.
        let ips = resolver.ips(&domain).await?;
        if ips.is_empty() {
            return Err(DnsError::NoAddresses(domain));
        }
        return Ok(MxResult {
            hosts: vec![MxHost {
                name: domain.clone(),
                preference: 0,
            }],
            domain,
            implicit: true,
        });
    }
    // RFC 7505 3: a single MX with an empty exchange ("." -> "") is a null MX; a domain that has
    // one and other MX records is misconfigured, and the null MX entry must not be tried either.
    if records.len() == 1 && records[0].exchange.is_empty() {
        return Err(DnsError::NullMx(domain));
    }
    let hosts = order(records, &mut rand::rng());
    if hosts.is_empty() {
        return Err(DnsError::NullMx(domain));
    }
    Ok(MxResult {
        domain,
        hosts,
        implicit: false,
    })
}

/// Sorts by preference (lowest first) with random order among equal preferences (RFC 5321 5.1:
/// "randomize them to spread the load"), dropping empty exchanges and duplicates.
fn order<R: rand::Rng + ?Sized>(mut records: Vec<MxRecord>, rng: &mut R) -> Vec<MxHost> {
    records.retain(|r| !r.exchange.is_empty());
    records.shuffle(rng);
    // A stable sort keeps the shuffled order within each preference.
    records.sort_by_key(|r| r.preference);
    let mut hosts: Vec<MxHost> = Vec::with_capacity(records.len());
    for r in records {
        let name = r.exchange.trim_end_matches('.').to_ascii_lowercase();
        if !hosts.iter().any(|h| h.name == name) {
            hosts.push(MxHost {
                name,
                preference: r.preference,
            });
        }
    }
    hosts
}

/// The addresses of a host; an empty answer is reported as [`DnsError::NoAddresses`].
pub async fn resolve_host(resolver: &dyn Resolver, host: &str) -> Result<Vec<IpAddr>, DnsError> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![ip]);
    }
    let ips = resolver.ips(host).await?;
    if ips.is_empty() {
        return Err(DnsError::NoAddresses(host.to_string()));
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::static_resolver::StaticResolver;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn names(r: &MxResult) -> Vec<&str> {
        r.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn preference_order() {
        let dns = StaticResolver::new()
            .mx("x.test", 20, "b.x.test")
            .mx("x.test", 10, "a.x.test.")
            .mx("x.test", 30, "c.x.test");
        let r = rt().block_on(mx_hosts(&dns, "X.test.")).unwrap();
        assert_eq!(names(&r), ["a.x.test", "b.x.test", "c.x.test"]);
        assert!(!r.implicit);
        assert_eq!(r.domain, "x.test");
    }

    #[test]
    fn equal_preference_is_shuffled() {
        let mut dns = StaticResolver::new().mx("x.test", 5, "first.x.test");
        for i in 0..6 {
            dns = dns.mx("x.test", 10, &format!("h{i}.x.test"));
        }
        let rt = rt();
        let mut orders = std::collections::HashSet::new();
        for _ in 0..50 {
            let r = rt.block_on(mx_hosts(&dns, "x.test")).unwrap();
            assert_eq!(r.hosts[0].name, "first.x.test");
            assert_eq!(r.hosts.len(), 7);
            orders.insert(names(&r).join(","));
        }
        // 720 permutations: 50 draws landing on one order would mean no shuffling at all.
        assert!(orders.len() > 1);
    }

    #[test]
    fn implicit_mx() {
        let dns = StaticResolver::new().ip("x.test", "192.0.2.1".parse().unwrap());
        let r = rt().block_on(mx_hosts(&dns, "x.test")).unwrap();
        assert!(r.implicit);
        assert_eq!(names(&r), ["x.test"]);
    }

    #[test]
    fn null_mx_nxdomain_and_servfail() {
        let dns = StaticResolver::new()
            .mx("null.test", 0, ".")
            .mx("ok.test", 10, "mx.ok.test")
            .servfail("broken.test");
        let rt = rt();
        let e = rt.block_on(mx_hosts(&dns, "null.test")).unwrap_err();
        assert_eq!(e, DnsError::NullMx("null.test".into()));
        assert!(!e.is_temporary());
        let e = rt.block_on(mx_hosts(&dns, "nope.test")).unwrap_err();
        assert!(matches!(e, DnsError::NxDomain(_)));
        assert!(!e.is_temporary());
        let e = rt.block_on(mx_hosts(&dns, "broken.test")).unwrap_err();
        assert!(e.is_temporary());
    }

    #[test]
    fn no_mx_no_address_is_permanent() {
        let dns = StaticResolver::new()
            .mx("other.test", 1, "x")
            .ip("a.test", "::1".parse().unwrap());
        let rt = rt();
        let e = rt.block_on(resolve_host(&dns, "other.test")).unwrap_err();
        assert_eq!(e, DnsError::NoAddresses("other.test".into()));
        assert_eq!(
            rt.block_on(resolve_host(&dns, "[127.0.0.1]")).unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }
}
