//! The production resolver: hickory-resolver 0.26 over the system configuration, or over one
//! explicit nameserver `ip:port` (tests run a fake DNS server on 127.0.0.1).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::dnssec::{Dnssec, DnssecResolver, Tlsa};
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
use crate::resolver::{reverse_name, DnsFuture, MxRecord, Resolver};

pub struct HickoryResolver {
    inner: TokioResolver,
    /// Set by [`HickoryResolver::dns_only`] with explicit nameservers: PTR queries go straight to
    /// them (see [`direct_ptr`]), with this per-query timeout.
    direct: Option<(Vec<SocketAddr>, Duration)>,
    /// The validating resolver for DANE lookups ([`HickoryResolver::with_dnssec`]); None: the
    /// DNSSEC lookups fall back to the trait's defaults (never validated).
    dnssec: Option<Arc<DnssecResolver>>,
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
        Ok(Self {
            inner,
            direct: None,
            dnssec: None,
        })
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
        Ok(Self {
            inner,
            direct: None,
            dnssec: None,
        })
    }
}

impl HickoryResolver {
    /// Adds the DNSSEC-validating resolver used for DANE lookups only ([`crate::dnssec`]).
    pub fn with_dnssec(mut self, dnssec: DnssecResolver) -> Self {
        self.dnssec = Some(Arc::new(dnssec));
        self
    }
}

impl HickoryResolver {
    /// Like [`HickoryResolver::with_nameservers`] (the system configuration when `addrs` is
    /// empty), but never answering from /etc/hosts: for `tern doctor`, which must see what the
    /// rest of the Internet sees (a hosts entry mapping the hostname to this host would make
    /// the A and PTR checks pass whatever the DNS says).
    pub fn dns_only(addrs: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        let mut builder = if addrs.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::Temporary {
                name: "/etc/resolv.conf".into(),
                reason: e.to_string(),
            })?
        } else {
            let mut b = TokioResolver::builder_with_config(
                nameservers_config(addrs),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().timeout = timeout;
            b.options_mut().attempts = 1;
            b
        };
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let inner = builder.build().map_err(|e| DnsError::Temporary {
            name: format!("{addrs:?}"),
            reason: e.to_string(),
        })?;
        let direct = (!addrs.is_empty()).then(|| (addrs.to_vec(), timeout));
        Ok(Self {
            inner,
            direct,
            dnssec: None,
        })
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

    fn dnssec_validates(&self) -> DnsFuture<'_, bool> {
        Box::pin(async move {
            Ok(match &self.dnssec {
                Some(d) => d.validates().await,
                None => false,
            })
        })
    }

    fn mx_dnssec(&self, domain: &str) -> DnsFuture<'_, Dnssec<Vec<MxRecord>>> {
        let domain = domain.to_string();
        Box::pin(async move {
            match &self.dnssec {
                Some(d) => d.mx(&domain).await,
                None => self.mx(&domain).await.map(Dnssec::Insecure),
            }
        })
    }

    fn ips_dnssec(&self, host: &str) -> DnsFuture<'_, Dnssec<Vec<IpAddr>>> {
        let host = host.to_string();
        Box::pin(async move {
            match &self.dnssec {
                Some(d) => d.ips(&host).await,
                None => self.ips(&host).await.map(Dnssec::Insecure),
            }
        })
    }

    fn tlsa(&self, host: &str, port: u16) -> DnsFuture<'_, Dnssec<Vec<Tlsa>>> {
        let host = host.to_string();
        Box::pin(async move {
            match &self.dnssec {
                Some(d) => d.tlsa(&host, port).await,
                None => Ok(Dnssec::Insecure(Vec::new())),
            }
        })
    }

    fn ptr(&self, ip: IpAddr) -> DnsFuture<'_, Vec<String>> {
        let name = reverse_name(ip);
        Box::pin(async move {
            if let Some((servers, timeout)) = &self.direct {
                return direct_ptr(&name, servers, *timeout).await;
            }
            match self.inner.reverse_lookup(fqdn(&name).as_str()).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::PTR(ptr) => Some(ptr.0.to_ascii().trim_end_matches('.').to_string()),
                        _ => None,
                    })
                    .collect()),
                Err(e) => classify(&name, e),
            }
        })
    }
}

/// A PTR query sent to `servers` in turn over UDP, bypassing hickory's lookup path: that one
/// answers every name under 127.in-addr.arpa and 1.0...ip6.arpa itself with "localhost"
/// (RFC 6761 6.3), which is right for an application but hides what the configured nameserver
/// publishes, and that is what `tern doctor` (and its tests on loopback) must see. PTR answers
/// are small; a truncated one is reported, not retried over TCP.
async fn direct_ptr(
    name: &str,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<String>, DnsError> {
    use hickory_resolver::proto::op::{Message, Query, ResponseCode};
    use hickory_resolver::proto::rr::{Name, RecordType};

    let temporary = |reason: String| DnsError::Temporary {
        name: name.to_string(),
        reason,
    };
    let qname = Name::from_ascii(fqdn(name)).map_err(|e| temporary(e.to_string()))?;
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(qname, RecordType::PTR));
    let id = request.metadata.id;
    let wire = request.to_vec().map_err(|e| temporary(e.to_string()))?;
    let mut last = temporary("no nameserver".into());
    for server in servers {
        let exchange = async {
            let bind: SocketAddr = if server.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = tokio::net::UdpSocket::bind(bind).await?;
            socket.connect(server).await?;
            socket.send(&wire).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = socket.recv(&mut buf).await?;
                // Not our answer (a late reply to another query): keep waiting.
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    if m.metadata.id == id {
                        return Ok::<Message, std::io::Error>(m);
                    }
                }
            }
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                last = temporary(format!("{server}: {e}"));
                continue;
            }
            Err(_) => {
                last = temporary(format!(
                    "{server}: no answer within {}s",
                    timeout.as_secs_f64()
                ));
                continue;
            }
        };
        match reply.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => return Err(DnsError::NxDomain(name.to_string())),
            code => {
                last = temporary(format!("{server} answered {code}"));
                continue;
            }
        }
        if reply.metadata.truncation {
            last = temporary(format!("{server}: truncated answer"));
            continue;
        }
        return Ok(reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(ptr) => Some(ptr.0.to_ascii().trim_end_matches('.').to_string()),
                _ => None,
            })
            .collect());
    }
    Err(last)
}
