//! Who a client is for the per-client limits: its address, with IPv6 addresses cut to a prefix.
//!
//! One IPv6 host usually owns a whole /64 (RFC 4291 2.5.1, RFC 7421) and can pick a new
//! address from it for every connection, so limits counted per single IPv6 address would cost
//! such an attacker nothing. tern counts them per `limits.ipv6_prefix_length` (default 64)
//! instead; IPv4 addresses, and IPv4-mapped IPv6 ones, count one by one.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A client address as the per-client limits see it. Only [`ClientKey::new`] makes one, so a
/// key always has its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// `prefix` is clamped to 0..=128.
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let bits = u32::from(ipv6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str, prefix: u8) -> ClientKey {
        ClientKey::new(ip.parse().unwrap(), prefix)
    }

    #[test]
    fn ipv6_addresses_in_one_prefix_are_one_client() {
        assert_eq!(key("2001:db8:1:2::1", 64), key("2001:db8:1:2:ffff::9", 64));
        assert_ne!(key("2001:db8:1:2::1", 64), key("2001:db8:1:3::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), key("2001:db8:1:3::1", 48));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("2001:db8::1", 0), key("::", 128));
        assert_eq!(key("2001:db8:1:2::1", 64).to_string(), "2001:db8:1:2::");
    }

    #[test]
    fn ipv4_counts_per_address_also_when_mapped() {
        assert_ne!(key("192.0.2.1", 64), key("192.0.2.2", 64));
        assert_eq!(key("::ffff:192.0.2.1", 64), key("192.0.2.1", 64));
    }
}
