//! Building the resolver tern uses, the one way the relay and `tern send` both use: explicit
//! nameservers when given, the system configuration otherwise, and a fallback that still yields
//! a working resolver when the system configuration is missing (a container without
//! /etc/resolv.conf), so that static routes keep working and MX lookups fail temporarily with a
//! telling error instead of the process refusing to start.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::dnssec::DnssecResolver;
use crate::error::DnsError;
use crate::hickory::HickoryResolver;
use crate::resolver::{DnsFuture, MxRecord, Resolver};

/// Where the fallback resolver sends its queries: a local caching resolver, if there is one.
pub const FALLBACK_NAMESERVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 53);

/// What [`setup_resolver`] built.
#[must_use = "a fallback resolver is worth an error message"]
pub struct ResolverSetup {
    pub resolver: Arc<dyn Resolver>,
    /// Why the configured resolver could not be built, when `resolver` is the fallback. The
    /// library does not log it: the relay logs it as an error, `tern send` fails with it.
    pub fallback: Option<DnsError>,
    /// Why the DNSSEC resolver for DANE ([`setup_resolver_dnssec`]) could not be built (a bad
    /// trust anchor file): DANE lookups then never validate. For the relay to log.
    pub dnssec_error: Option<DnsError>,
}

impl std::fmt::Debug for ResolverSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverSetup")
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// The resolver for `nameservers` (each queried over UDP and TCP, `timeout` per query, one
/// attempt), or for the system configuration (/etc/resolv.conf, its own timeouts) when the list
/// is empty. If that cannot be built, the resolver asks [`FALLBACK_NAMESERVER`] and `fallback`
/// says why; should even that fail, every lookup fails temporarily (RFC 5321 4.5.4.1: retry
/// later, never bounce for a local fault).
pub fn setup_resolver(nameservers: &[SocketAddr], timeout: Duration) -> ResolverSetup {
    setup_resolver_dnssec(nameservers, timeout, None)
}

/// As [`setup_resolver`], plus (when `dnssec` is given) a DNSSEC-validating resolver for the
/// DANE lookups ([`crate::dnssec`]), asking the same nameservers, trusting the DNSKEY records
/// of the file in `dnssec` or, when that is `None`, hickory's built-in root anchors.
pub fn setup_resolver_dnssec(
    nameservers: &[SocketAddr],
    timeout: Duration,
    dnssec: Option<Option<&Path>>,
) -> ResolverSetup {
    let built = if nameservers.is_empty() {
        HickoryResolver::from_system_conf()
    } else {
        HickoryResolver::with_nameservers(nameservers, timeout)
    };
    let mut dnssec_error = None;
    let built = built.map(|r| match dnssec {
        None => r,
        Some(anchor) => match DnssecResolver::new(nameservers, timeout, anchor) {
            Ok(d) => r.with_dnssec(d),
            Err(e) => {
                dnssec_error = Some(e);
                r
            }
        },
    });
    match built {
        Ok(r) => ResolverSetup {
            resolver: Arc::new(r),
            fallback: None,
            dnssec_error,
        },
        Err(e) => {
            let resolver: Arc<dyn Resolver> =
                match HickoryResolver::with_nameserver(FALLBACK_NAMESERVER, timeout) {
                    Ok(r) => Arc::new(r),
                    Err(again) => Arc::new(Unavailable(again.to_string())),
                };
            ResolverSetup {
                resolver,
                fallback: Some(e),
                dnssec_error,
            }
        }
    }
}

/// A resolver that answers every lookup with a temporary failure.
#[derive(Debug)]
struct Unavailable(String);

impl Unavailable {
    fn fail<T: Send + 'static>(&self, name: &str) -> DnsFuture<'_, T> {
        let e = DnsError::Temporary {
            name: name.to_string(),
            reason: format!("no resolver: {}", self.0),
        };
        Box::pin(async move { Err(e) })
    }
}

impl Resolver for Unavailable {
    fn mx(&self, domain: &str) -> DnsFuture<'_, Vec<MxRecord>> {
        self.fail(domain)
    }

    fn ips(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>> {
        self.fail(host)
    }

    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<Vec<u8>>> {
        self.fail(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_nameservers_need_no_fallback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // hickory's builder wants a runtime around it.
        let setup = rt.block_on(async {
            setup_resolver(&["127.0.0.1:5353".parse().unwrap()], Duration::from_secs(1))
        });
        assert!(setup.fallback.is_none(), "{setup:?}");
    }

    #[test]
    fn the_last_resort_fails_temporarily() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = Unavailable("x".into());
        let e = rt.block_on(r.mx("example.test")).unwrap_err();
        assert!(e.is_temporary());
        assert!(rt
            .block_on(r.ips("example.test"))
            .unwrap_err()
            .is_temporary());
    }
}
