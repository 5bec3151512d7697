//! The `Resolver` trait: the raw lookups mail routing and authentication need. Object-safe (boxed futures) so
//! callers can hold an `Arc<dyn Resolver>` and tests can substitute a static table.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use crate::dnssec::{Dnssec, Tlsa};
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

    /// The PTR names of `ip` (its `in-addr.arpa` / `ip6.arpa` name, RFC 1035 3.5 and RFC 3596
    /// 2.5), without trailing dots. NXDOMAIN and NODATA as for [`Resolver::mx`]. The default
    /// fails temporarily, so resolvers that predate it (test fakes) compile unchanged and a
    /// caller reports "cannot tell" rather than "no PTR".
    fn ptr(&self, ip: IpAddr) -> DnsFuture<'_, Vec<String>> {
        let e = DnsError::Temporary {
            name: reverse_name(ip),
            reason: "this resolver does not look up PTR records".into(),
        };
        Box::pin(async move { Err(e) })
    }

    /// Whether this resolver validates DNSSEC (the probe of [`crate::dnssec`]): when false,
    /// the `*_dnssec` lookups and [`Resolver::tlsa`] say nothing useful and DANE is off. The
    /// default (test fakes, resolvers without DNSSEC) is false.
    fn dnssec_validates(&self) -> DnsFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }

    /// The MX records of `domain`, DNSSEC-validated (RFC 7672 2.2.1). The default: the plain
    /// lookup, insecure.
    fn mx_dnssec(&self, domain: &str) -> DnsFuture<'_, Dnssec<Vec<MxRecord>>> {
        let domain = domain.to_string();
        Box::pin(async move { self.mx(&domain).await.map(Dnssec::Insecure) })
    }

    /// The addresses of `host`, DNSSEC-validated (RFC 7672 2.2.2). The default: the plain
    /// lookup, insecure.
    fn ips_dnssec(&self, host: &str) -> DnsFuture<'_, Dnssec<Vec<IpAddr>>> {
        let host = host.to_string();
        Box::pin(async move { self.ips(&host).await.map(Dnssec::Insecure) })
    }

    /// The TLSA records of `_<port>._tcp.<host>` (RFC 7672 2.2.3), DNSSEC-validated; a secure
    /// NXDOMAIN or NODATA is `Secure(vec![])`. The default: none, insecure.
    fn tlsa(&self, host: &str, port: u16) -> DnsFuture<'_, Dnssec<Vec<Tlsa>>> {
        let _ = (host, port);
        Box::pin(async { Ok(Dnssec::Insecure(Vec::new())) })
    }
}

/// The reverse-lookup name of `ip`, without the trailing dot: `4.3.2.1.in-addr.arpa` for
/// 1.2.3.4 (RFC 1035 3.5), the 32 nibbles in reverse under `ip6.arpa` for IPv6 (RFC 3596 2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = Vec::with_capacity(33);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reverse_name;

    #[test]
    fn reverse_names_follow_rfc_1035_and_3596() {
        assert_eq!(
            reverse_name("192.0.2.10".parse().unwrap()),
            "10.2.0.192.in-addr.arpa"
        );
        let v6 = reverse_name("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"), "{v6}");
        assert_eq!(v6.split('.').count(), 34);
    }

    #[test]
    fn ptr_records_of_the_static_resolver() {
        use crate::{DnsError, Resolver, StaticResolver};
        let ip = "192.0.2.10".parse().unwrap();
        let r = StaticResolver::new().ptr(ip, "mx.example.test.");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            rt.block_on(Resolver::ptr(&r, ip)).unwrap(),
            ["mx.example.test"]
        );
        let other = "192.0.2.11".parse().unwrap();
        assert!(matches!(
            rt.block_on(Resolver::ptr(&r, other)),
            Err(DnsError::NxDomain(_))
        ));
    }
}
