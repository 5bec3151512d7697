//! The `Resolver` trait: the two raw lookups mail routing needs. Object-safe (boxed futures) so
//! callers can hold an `Arc<dyn Resolver>` and tests can substitute a static table.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::error::DnsError;

/// A boxed future returned by [`Resolver`] methods.
pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// One MX record: preference and exchange host name (without the trailing dot; "" for the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

pub trait Resolver: Send + Sync {
    /// The MX records of `domain`. `Ok(vec![])` means the name exists but has no MX (NODATA);
    /// NXDOMAIN must be reported as [`DnsError::NxDomain`].
    fn mx(&self, domain: &str) -> DnsFuture<'_, Vec<MxRecord>>;

    /// The A and AAAA addresses of `host`. `Ok(vec![])` means the name exists without addresses.
    fn ips(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>>;
}
