//! DANE for outbound SMTP (RFC 7672): which hosts of a destination get their certificate
//! checked by DNSSEC-validated TLSA records, which must use TLS without authentication, and
//! which cannot be used at all. The connector ([`crate::connector`]) turns the plan into
//! connection options per host; the certificate check itself is `tern_client::dane`.
//!
//! MX delivery (`outbound.dane`, on by default): only when the resolver validates (the probe in
//! `tern_dns::dnssec`) and the domain's MX RRset is secure (RFC 7672 2.2.1); then for each MX
//! host whose addresses are secure (2.2.2), the TLSA records of `_<port>._tcp.<host>` (2.2.3).
//! A route with `dane = true`: the route's host is the TLSA base (RFC 7672 3), no MX step.

use std::collections::HashMap;

use tern_client::{DaneCheck, DaneRecord};
use tern_dns::{tlsa_name, DnsError, Dnssec, Resolver};
use tern_queue::StoredReply;

use crate::status;

/// What DANE means for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// No DANE (unsigned, no TLSA records, or DANE is off): TLS as without DANE.
    Off,
    /// Usable TLSA records: STARTTLS is mandatory and the certificate must match them.
    Verify(DaneCheck),
    /// Secure TLSA records, none of them usable (RFC 7672 3.1.3): TLS is still mandatory, the
    /// certificate is not authenticated.
    TlsOnly,
    /// A DNSSEC lookup for the host was bogus or failed (RFC 7672 2.1.1): the host is not
    /// used, with this status.
    Unusable(StoredReply),
}

impl HostDane {
    /// True when the host's session must be TLS whatever `tls` says.
    pub fn requires_tls(&self) -> bool {
        matches!(self, HostDane::Verify(_) | HostDane::TlsOnly)
    }
}

/// The DANE verdict of each host (lower-case names), from [`plan_mx`] or [`plan_route`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DanePlan {
    hosts: HashMap<String, HostDane>,
}

impl DanePlan {
    /// The verdict for `host` ([`HostDane::Off`] when it was not looked at).
    pub fn host(&self, host: &str) -> &HostDane {
        self.hosts
            .get(&host.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or(&HostDane::Off)
    }

    /// The usable TLSA records of every host, in presentation form (`3 1 1 ab12...`), for
    /// TLS-RPT's `tlsa` policy (RFC 8460 4.3).
    pub fn records(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in self.hosts.values() {
            if let HostDane::Verify(check) = h {
                for r in &check.records {
                    let text = r.to_string();
                    if !out.contains(&text) {
                        out.push(text);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Whether any host's session differs from a session without DANE (the pool key must then
    /// keep them apart).
    pub fn is_active(&self) -> bool {
        self.hosts.values().any(|h| h.requires_tls())
    }
}

/// The plan for the MX hosts `hosts` of `domain` on `port`. `Ok(None)`: DANE does not apply
/// (the resolver does not validate, the MX RRset is not signed). `Err`: the MX lookup itself
/// was bogus or failed, so no host may be used (RFC 7672 2.1.1).
pub async fn plan_mx(
    resolver: &dyn Resolver,
    domain: &str,
    hosts: &[&str],
    port: u16,
) -> Result<Option<DanePlan>, StoredReply> {
    if !resolver.dnssec_validates().await.unwrap_or(false) {
        return Ok(None);
    }
    match resolver.mx_dnssec(domain).await {
        // An implicit MX (RFC 5321 5.1) is as secure as the denial of the MX RRset.
        Ok(Dnssec::Secure(_)) => {}
        Ok(Dnssec::Insecure(_)) | Err(DnsError::NxDomain(_)) => return Ok(None),
        Ok(Dnssec::Bogus(why)) => return Err(status::dane_lookup_failed(domain, &why)),
        Err(e) => return Err(status::dane_lookup_failed(domain, &e.to_string())),
    }
    Ok(Some(
        plan_hosts(resolver, hosts, port, &[domain.to_string()]).await,
    ))
}

/// The plan for a route's host (`dane = true`): `Ok(None)` when the resolver does not validate
/// or the host is an IP address.
pub async fn plan_route(resolver: &dyn Resolver, host: &str, port: u16) -> Option<DanePlan> {
    if host.parse::<std::net::IpAddr>().is_ok()
        || !resolver.dnssec_validates().await.unwrap_or(false)
    {
        return None;
    }
    Some(plan_hosts(resolver, &[host], port, &[]).await)
}

/// Each host's verdict; `extra_names` (the next-hop domain) are accepted as DANE-TA reference
/// names after the host's own (RFC 7672 3.2.2).
async fn plan_hosts(
    resolver: &dyn Resolver,
    hosts: &[&str],
    port: u16,
    extra_names: &[String],
) -> DanePlan {
    let mut plan = DanePlan::default();
    for host in hosts {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        if plan.hosts.contains_key(&key) {
            continue;
        }
        let verdict = host_verdict(resolver, &key, port, extra_names).await;
        match &verdict {
            HostDane::Off => {}
            HostDane::Verify(check) => tracing::debug!(host = %key,
                records = %check.records.iter().map(DaneRecord::params).collect::<Vec<_>>().join(", "),
                "dane: usable TLSA records"),
            HostDane::TlsOnly => tracing::info!(host = %key,
                "dane: TLSA records but none usable; TLS required without authentication"),
            HostDane::Unusable(reply) => {
                tracing::warn!(host = %key, status = %reply, "dane: host not used")
            }
        }
        plan.hosts.insert(key, verdict);
    }
    plan
}

async fn host_verdict(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
    extra_names: &[String],
) -> HostDane {
    match resolver.ips_dnssec(host).await {
        Ok(Dnssec::Secure(_)) => {}
        Ok(Dnssec::Insecure(_)) | Err(DnsError::NxDomain(_)) => return HostDane::Off,
        Ok(Dnssec::Bogus(why)) => {
            return HostDane::Unusable(status::dane_lookup_failed(host, &why));
        }
        Err(e) => return HostDane::Unusable(status::dane_lookup_failed(host, &e.to_string())),
    }
    let name = tlsa_name(host, port);
    let records = match resolver.tlsa(host, port).await {
        Ok(Dnssec::Secure(records)) => records,
        Ok(Dnssec::Insecure(_)) => return HostDane::Off,
        Ok(Dnssec::Bogus(why)) => {
            return HostDane::Unusable(status::dane_lookup_failed(&name, &why));
        }
        Err(e) => return HostDane::Unusable(status::dane_lookup_failed(&name, &e.to_string())),
    };
    if records.is_empty() {
        return HostDane::Off;
    }
    let all: Vec<DaneRecord> = records
        .into_iter()
        .map(|t| DaneRecord {
            usage: t.usage,
            selector: t.selector,
            matching: t.matching,
            data: t.data,
        })
        .collect();
    let usable = tern_client::dane::usable(&all);
    if usable.is_empty() {
        return HostDane::TlsOnly;
    }
    let mut names = vec![host.to_string()];
    names.extend(
        extra_names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| n != host),
    );
    HostDane::Verify(DaneCheck {
        records: usable,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_dns::{StaticResolver, Tlsa};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn tlsa(usage: u8) -> Tlsa {
        Tlsa {
            usage,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }
    }

    fn ip() -> std::net::IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn a_resolver_that_does_not_validate_means_no_dane() {
        let r = StaticResolver::new()
            .mx("remote.test", 10, "mx.remote.test")
            .ip("mx.remote.test", ip());
        assert_eq!(
            block_on(plan_mx(&r, "remote.test", &["mx.remote.test"], 25)),
            Ok(None)
        );
    }

    #[test]
    fn secure_mx_and_tlsa_give_usable_records() {
        let r = StaticResolver::new()
            .mx("remote.test", 10, "mx.remote.test")
            .mx("remote.test", 20, "mx2.remote.test")
            .mx("remote.test", 30, "mx3.remote.test")
            .mx("remote.test", 40, "mx4.remote.test")
            .ip("mx.remote.test", ip())
            .ip("mx2.remote.test", ip())
            .ip("mx3.remote.test", ip())
            .ip("mx4.remote.test", ip())
            .secure("remote.test")
            .secure("mx.remote.test")
            .secure("mx2.remote.test")
            .secure("mx3.remote.test")
            .tlsa("mx.remote.test", 25, Dnssec::Secure(vec![tlsa(3), tlsa(1)]))
            .tlsa("mx2.remote.test", 25, Dnssec::Secure(vec![tlsa(0)]))
            .tlsa("mx3.remote.test", 25, Dnssec::Bogus("bad signature".into()))
            .tlsa("mx4.remote.test", 25, Dnssec::Secure(vec![tlsa(3)]));
        let hosts = [
            "mx.remote.test",
            "mx2.remote.test",
            "mx3.remote.test",
            "mx4.remote.test",
        ];
        let plan = block_on(plan_mx(&r, "remote.test", &hosts, 25))
            .unwrap()
            .unwrap();
        match plan.host("MX.remote.test.") {
            HostDane::Verify(check) => {
                assert_eq!(check.records.len(), 1, "usage 1 is unusable");
                assert_eq!(check.names, ["mx.remote.test", "remote.test"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(plan.host("mx2.remote.test"), &HostDane::TlsOnly);
        match plan.host("mx3.remote.test") {
            HostDane::Unusable(reply) => assert_eq!(
                reply.to_string(),
                "451 4.7.5 DANE: DNSSEC lookup of _25._tcp.mx3.remote.test failed: bad signature"
            ),
            other => panic!("{other:?}"),
        }
        // Insecure addresses: no TLSA lookup at all.
        assert_eq!(plan.host("mx4.remote.test"), &HostDane::Off);
        assert!(plan.is_active());
    }

    #[test]
    fn an_insecure_mx_rrset_means_no_dane_and_servfail_defers() {
        let r = StaticResolver::new()
            .mx("remote.test", 10, "mx.remote.test")
            .ip("mx.remote.test", ip())
            .secure("mx.remote.test")
            .tlsa("mx.remote.test", 25, Dnssec::Secure(vec![tlsa(3)]));
        assert_eq!(
            block_on(plan_mx(&r, "remote.test", &["mx.remote.test"], 25)),
            Ok(None)
        );
        let r = StaticResolver::new()
            .servfail("remote.test")
            .ip("mx.remote.test", ip())
            .secure("mx.remote.test");
        let e = block_on(plan_mx(&r, "remote.test", &["mx.remote.test"], 25)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("451 4.7.5 DANE: DNSSEC lookup of remote.test failed: "),
            "{e}"
        );
    }

    #[test]
    fn a_secure_host_without_tlsa_is_off_and_a_route_host_is_the_base() {
        let r = StaticResolver::new()
            .ip("smart.test", ip())
            .secure("smart.test")
            .tlsa("smart.test", 587, Dnssec::Secure(vec![tlsa(2)]));
        let plan = block_on(plan_route(&r, "smart.test", 587)).unwrap();
        match plan.host("smart.test") {
            HostDane::Verify(check) => assert_eq!(check.names, ["smart.test"]),
            other => panic!("{other:?}"),
        }
        let plan = block_on(plan_route(&r, "smart.test", 25)).unwrap();
        assert_eq!(plan.host("smart.test"), &HostDane::Off);
        assert!(!plan.is_active());
        assert!(block_on(plan_route(&r, "192.0.2.1", 25)).is_none());
    }
}
