//! The `Resolver` trait: the raw lookups mail routing and authentication need. Object-safe (boxed futures) so
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

    /// The TXT records of `name`, each as the concatenation of its character-strings (RFC 6376
    /// 3.6.2.2 and RFC 7208 3.3 read a multi-string record that way). Bytes are kept as they
    /// are: a record that is not UTF-8 is the caller's to reject. NXDOMAIN and NODATA as for
    /// [`Resolver::mx`].
    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<Vec<u8>>>;
}
