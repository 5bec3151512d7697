//! From a recipient domain to the ordered (host name, address) pairs to connect to: the one place
//! that applies RFC 5321 5.1 for both the relay and `tern send`.
//!
//! The rules, in order:
//! - an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) names the host itself (RFC 5321
//!   4.1.3), no DNS;
//! - otherwise the MX hosts by preference, an implicit MX when there is none, a null MX refused
//!   (RFC 7505), NXDOMAIN permanent, SERVFAIL and timeouts temporary ([`crate::mx_hosts`]);
//! - when this host is among the MX hosts, it and every less preferred host are dropped
//!   (delivering there would loop); if nothing is left, that is a loop;
//! - at most [`MAX_MX_NAMES`] names are resolved, concurrently, under one deadline;
//! - addresses one of our own listeners answers on are dropped (a loop too, if nothing is left);
//! - addresses the caller's policy refuses ([`mx_targets_checked`]: the relay's loopback,
//!   link-local and `outbound.deny_networks` rules) are set aside with the reason, and when no
//!   usable address is left that is a permanent [`TargetError::Refused`];
//! - at most [`MAX_TARGETS`] addresses are returned, so a domain with dozens of MX records
//!   cannot keep a worker busy for an hour of connect timeouts.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tern_proto::Domain;
use tokio::time::Instant;

use crate::error::DnsError;
use crate::mx::{mx_hosts, resolve_host};
use crate::resolver::Resolver;

/// At most this many addresses are tried for one domain in one attempt.
pub const MAX_TARGETS: usize = 10;

/// At most this many MX names are resolved for one domain.
pub const MAX_MX_NAMES: usize = 10;

/// This host, as far as routing goes: what must never be a next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Myself {
    /// The name this host has in MX records (the relay's `hostname`); `None` when no MX host
    /// is taken to be this one.
    pub hostname: Option<String>,
    /// Addresses our own SMTP listeners answer on; an unspecified address (`0.0.0.0`, `::`)
    /// stands for every loopback address on its port.
    pub listeners: Vec<SocketAddr>,
}

impl Myself {
    fn is_hostname(&self, name: &str) -> bool {
        self.hostname
            .as_deref()
            .is_some_and(|h| name.eq_ignore_ascii_case(h.trim_end_matches('.')))
    }

    fn is_listener(&self, addr: SocketAddr) -> bool {
        self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip()
                    || (l.ip().is_unspecified()
                        && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
        })
    }
}

/// One address to connect to, with the host name TLS (SNI, verification) and logs know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// An address found for a domain that the caller's policy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedTarget {
    pub target: Target,
    /// Says what the address is, e.g. `loopback (127.0.0.0/8)`.
    pub reason: String,
}

impl std::fmt::Display for RefusedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}[{}] is {}",
            self.target.name,
            self.target.addr.ip(),
            self.reason
        )
    }
}

/// The addresses to try for a domain, and the ones the policy set aside (for the log).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MxTargets {
    pub usable: Vec<Target>,
    pub refused: Vec<RefusedTarget>,
}

/// The policy of [`mx_targets_checked`]: the reason an address must not be used, or `None`.
pub type AddressCheck<'a> = &'a (dyn Fn(IpAddr) -> Option<String> + Sync);

/// Why a domain has no address to try. The text is what follows a reply code, e.g. the relay
/// writes `"{code} {enhanced} {error}"` with the codes of [`TargetError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The domain publishes a null MX (RFC 7505 3).
    #[error("{domain} does not accept mail (null MX, RFC 7505)")]
    NullMx { domain: String },
    /// NXDOMAIN for the domain.
    #[error("{0}")]
    NoSuchDomain(DnsError),
    /// No MX and no address, or a name that is not a domain: a definite answer.
    #[error("{0}")]
    Unroutable(DnsError),
    /// Every MX host is known to have no address (RFC 5321 4.5.4.1: only definite answers).
    #[error("no usable address for any MX host of {domain}: {last}")]
    NoUsableMx { domain: String, last: DnsError },
    /// This host is the most preferred MX (RFC 5321 5.1), and the domain is not local here.
    #[error("mail loop: the MX of {domain} points back to this host ({hostname}) but {domain} is not a local domain")]
    SelfMx { domain: String, hostname: String },
    /// Every address left is one of our own listeners.
    #[error("mail loop: every MX host of {domain} is this server")]
    OwnListener { domain: String },
    /// Every address found is refused by the caller's policy (never empty).
    #[error("every address found for {domain} is refused: {}", first_refused(.refused))]
    Refused {
        domain: String,
        refused: Vec<RefusedTarget>,
    },
    /// SERVFAIL, a timeout, the deadline: try again later.
    #[error("{0}")]
    Temporary(DnsError),
}

impl TargetError {
    /// A later attempt cannot succeed without a DNS change: bounce rather than retry.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, TargetError::Temporary(_))
    }

    /// The SMTP reply code and RFC 3463 enhanced status code this failure is reported with
    /// (5.1.10 from RFC 7505 3, 5.1.2 bad destination system, 5.4.4 unable to route, 5.4.6
    /// routing loop, 4.4.3 directory server failure).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            TargetError::NullMx { .. } => (556, "5.1.10"),
            TargetError::NoSuchDomain(_) => (550, "5.1.2"),
            TargetError::Unroutable(_)
            | TargetError::NoUsableMx { .. }
            | TargetError::Refused { .. } => (550, "5.4.4"),
            TargetError::SelfMx { .. } | TargetError::OwnListener { .. } => (554, "5.4.6"),
            TargetError::Temporary(_) => (451, "4.4.3"),
        }
    }
}

impl From<DnsError> for TargetError {
    fn from(e: DnsError) -> Self {
        match e {
            DnsError::NullMx(domain) => TargetError::NullMx { domain },
            DnsError::NxDomain(_) => TargetError::NoSuchDomain(e),
            DnsError::NoAddresses(_) | DnsError::InvalidName(_) => TargetError::Unroutable(e),
            DnsError::Temporary { .. } => TargetError::Temporary(e),
        }
    }
}

fn first_refused(refused: &[RefusedTarget]) -> String {
    match refused {
        [] => String::new(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

/// The addresses to try for mail to `domain` on `port`, most preferred first (rules above),
/// with no address policy: [`mx_targets_checked`] with every address allowed.
pub async fn mx_targets(
    resolver: &dyn Resolver,
    domain: &str,
    port: u16,
    myself: &Myself,
    deadline: Duration,
) -> Result<Vec<Target>, TargetError> {
    mx_targets_checked(resolver, domain, port, myself, &|_| None, deadline)
        .await
        .map(|t| t.usable)
}

/// The addresses to try for mail to `domain` on `port`, most preferred first (rules above).
/// `refuse` is asked about every address that is not one of our listeners: the refused ones are
/// returned apart and never count toward [`MAX_TARGETS`]. `deadline` bounds the whole lookup:
/// MX hosts not resolved by then count as temporary failures, and the ones resolved in time
/// are used.
pub async fn mx_targets_checked(
    resolver: &dyn Resolver,
    domain: &str,
    port: u16,
    myself: &Myself,
    refuse: AddressCheck<'_>,
    deadline: Duration,
) -> Result<MxTargets, TargetError> {
    let until = Instant::now() + deadline;
    if domain.starts_with('[') {
        return literal_target(domain, port, myself, refuse);
    }
    let mx = match tokio::time::timeout_at(until, mx_hosts(resolver, domain)).await {
        Ok(found) => found?,
        Err(_) => return Err(TargetError::Temporary(timed_out(domain, deadline))),
    };
    let domain = mx.domain;
    let names = without_self(myself, mx.hosts.into_iter().map(|h| (h.name, h.preference)));
    if names.is_empty() {
        return Err(TargetError::SelfMx {
            hostname: myself.hostname.clone().unwrap_or_default(),
            domain,
        });
    }
    let answers = resolve_all(resolver, &names, until, deadline).await;
    let mut found = MxTargets::default();
    let mut temporary: Option<DnsError> = None;
    let mut permanent: Option<DnsError> = None;
    for (name, answer) in names.into_iter().zip(answers) {
        match answer {
            Ok(ips) => {
                for ip in ips {
                    let addr = SocketAddr::new(ip, port);
                    // Our own listener first: that is a loop, whatever the policy says.
                    if myself.is_listener(addr) {
                        continue;
                    }
                    let target = Target {
                        name: name.clone(),
                        addr,
                    };
                    match refuse(ip) {
                        Some(reason) => found.refused.push(RefusedTarget { target, reason }),
                        None => found.usable.push(target),
                    }
                }
            }
            Err(e) if e.is_temporary() => temporary = Some(e),
            Err(e) => permanent = Some(e),
        }
    }
    if !found.usable.is_empty() {
        found.usable.truncate(MAX_TARGETS);
        return Ok(found);
    }
    // Only a definite answer for every MX host makes this permanent (RFC 5321 4.5.4.1): a host
    // that could not be resolved now may have a usable address on the next try.
    Err(match (temporary, permanent) {
        (Some(e), _) => TargetError::Temporary(e),
        (None, _) if !found.refused.is_empty() => TargetError::Refused {
            domain,
            refused: found.refused,
        },
        (None, Some(last)) => TargetError::NoUsableMx { domain, last },
        (None, None) => TargetError::OwnListener { domain },
    })
}

/// The addresses of one named host on `port` (a static route or smarthost: no MX, no loop
/// rules), at most [`MAX_TARGETS`].
pub async fn host_targets(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
) -> Result<Vec<Target>, TargetError> {
    let ips = resolve_host(resolver, host).await?;
    Ok(ips
        .into_iter()
        .take(MAX_TARGETS)
        .map(|ip| Target {
            name: host.to_string(),
            addr: SocketAddr::new(ip, port),
        })
        .collect())
}

/// `[192.0.2.1]` or `[IPv6:...]`: that address, unless it is one of ours or refused (the
/// sender chose it, not the operator). A general literal (`[tag:content]`) names no address
/// tern can reach.
fn literal_target(
    domain: &str,
    port: u16,
    myself: &Myself,
    refuse: AddressCheck<'_>,
) -> Result<MxTargets, TargetError> {
    let ip = match Domain::parse(domain) {
        Ok(Domain::Ipv4(ip)) => IpAddr::V4(ip),
        Ok(Domain::Ipv6(ip)) => IpAddr::V6(ip),
        _ => {
            return Err(TargetError::Unroutable(DnsError::InvalidName(
                domain.to_string(),
            )))
        }
    };
    let addr = SocketAddr::new(ip, port);
    if myself.is_listener(addr) {
        return Err(TargetError::OwnListener {
            domain: domain.to_string(),
        });
    }
    let target = Target {
        name: ip.to_string(),
        addr,
    };
    match refuse(ip) {
        Some(reason) => Err(TargetError::Refused {
            domain: domain.to_string(),
            refused: vec![RefusedTarget { target, reason }],
        }),
        None => Ok(MxTargets {
            usable: vec![target],
            refused: Vec::new(),
        }),
    }
}

/// RFC 5321 5.1: when this host is among the MX hosts, it and every less preferred host are
/// dropped; at most [`MAX_MX_NAMES`] of the rest are kept.
fn without_self(myself: &Myself, hosts: impl Iterator<Item = (String, u16)>) -> Vec<String> {
    let hosts: Vec<(String, u16)> = hosts.collect();
    let own = hosts
        .iter()
        .filter(|(name, _)| myself.is_hostname(name))
        .map(|(_, pref)| *pref)
        .min();
    hosts
        .into_iter()
        .filter(|(_, pref)| own.is_none_or(|own| *pref < own))
        .map(|(name, _)| name)
        .take(MAX_MX_NAMES)
        .collect()
}

type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, DnsError>> + Send + 'a>>;

/// The addresses of every name, looked up at the same time; a name without an answer by
/// `until` gets a temporary error. One task, no spawning: the lookups borrow the resolver.
async fn resolve_all(
    resolver: &dyn Resolver,
    names: &[String],
    until: Instant,
    deadline: Duration,
) -> Vec<Result<Vec<IpAddr>, DnsError>> {
    let mut pending: Vec<Option<Lookup<'_>>> = names
        .iter()
        .map(|name| Some(Box::pin(resolve_host(resolver, name)) as Lookup<'_>))
        .collect();
    let mut answers: Vec<Option<Result<Vec<IpAddr>, DnsError>>> =
        names.iter().map(|_| None).collect();
    let sleep = tokio::time::sleep_until(until);
    tokio::pin!(sleep);
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (slot, answer) in pending.iter_mut().zip(answers.iter_mut()) {
            if let Some(lookup) = slot {
                match lookup.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        *answer = Some(result);
                        *slot = None;
                    }
                    Poll::Pending => waiting = true,
                }
            }
        }
        if !waiting || sleep.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    answers
        .into_iter()
        .zip(names)
        .map(|(answer, name)| answer.unwrap_or_else(|| Err(timed_out(name, deadline))))
        .collect()
}

fn timed_out(name: &str, deadline: Duration) -> DnsError {
    DnsError::Temporary {
        name: name.to_string(),
        reason: format!("no answer within {}s", deadline.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests;
