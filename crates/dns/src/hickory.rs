//! The production resolver: hickory-resolver 0.26 over the system configuration, or over one
//! explicit nameserver `ip:port` (tests run a fake DNS server on 127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::error::DnsError;

/// A resolver config that asks exactly these nameservers (UDP and TCP each, on their own
/// ports): `[dns] nameservers`, shared by the relay's resolver and the mail-auth verifier.
pub fn nameservers_config(addrs: &[SocketAddr]) -> ResolverConfig {
    let servers = addrs
        .iter()
        .map(|addr| {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            ns
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}
use crate::resolver::{DnsFuture, MxRecord, Resolver};

pub struct HickoryResolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver").finish_non_exhaustive()
    }
}

impl HickoryResolver {
    /// Uses /etc/resolv.conf.
    pub fn from_system_conf() -> Result<Self, DnsError> {
        let builder = TokioResolver::builder_tokio().map_err(|e| DnsError::Temporary {
            name: "/etc/resolv.conf".into(),
            reason: e.to_string(),
        })?;
        let inner = builder.build().map_err(|e| DnsError::Temporary {
            name: "resolver".into(),
            reason: e.to_string(),
        })?;
        Ok(Self { inner })
    }

    /// Queries exactly one nameserver (UDP and TCP on `addr`), with a per-query timeout.
    pub fn with_nameserver(addr: SocketAddr, timeout: Duration) -> Result<Self, DnsError> {
        Self::with_nameservers(&[addr], timeout)
    }

    /// Queries these nameservers only (UDP and TCP each), with a per-query timeout; `[dns]
    /// nameservers` in the config.
    pub fn with_nameservers(addrs: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        let config = nameservers_config(addrs);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        builder.options_mut().timeout = timeout;
        builder.options_mut().attempts = 1;
        let inner = builder.build().map_err(|e| DnsError::Temporary {
            name: format!("{addrs:?}"),
            reason: e.to_string(),
        })?;
        Ok(Self { inner })
    }
}

/// Absolute form so the resolver's search list never rewrites a mail domain.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// NXDOMAIN is definite; "no records" with NOERROR is an empty answer; anything else
/// (SERVFAIL, REFUSED, timeout, I/O) is temporary (RFC 5321 4.5.4.1: try later).
fn classify<T>(name: &str, err: NetError) -> Result<Vec<T>, DnsError> {
    if err.is_nx_domain() {
        Err(DnsError::NxDomain(name.to_string()))
    } else if err.is_no_records_found() {
        Ok(Vec::new())
    } else {
        Err(DnsError::Temporary {
            name: name.to_string(),
            reason: err.to_string(),
        })
    }
}

impl Resolver for HickoryResolver {
    fn mx(&self, domain: &str) -> DnsFuture<'_, Vec<MxRecord>> {
        let name = domain.trim_end_matches('.').to_string();
        Box::pin(async move {
            match self.inner.mx_lookup(fqdn(&name).as_str()).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(MxRecord {
                            preference: mx.preference,
                            exchange: mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                        }),
                        _ => None,
                    })
                    .collect()),
                Err(e) => classify(&name, e),
            }
        })
    }

    fn ips(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>> {
        let name = host.trim_end_matches('.').to_string();
        Box::pin(async move {
            match self.inner.lookup_ip(fqdn(&name).as_str()).await {
                Ok(lookup) => Ok(lookup.iter().collect()),
                Err(e) => classify(&name, e),
            }
        })
    }

    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<Vec<u8>>> {
        let name = name.trim_end_matches('.').to_string();
        Box::pin(async move {
            match self.inner.txt_lookup(fqdn(&name).as_str()).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(txt.txt_data.concat()),
                        _ => None,
                    })
                    .collect()),
                Err(e) => classify(&name, e),
            }
        })
    }
}
