//! Read-only questions the rest of tern asks of a `Config`.

use std::net::IpAddr;

use crate::types::{Config, Route, User};
use crate::values::normalize_domain;

impl Config {
    /// Is `domain` one of `local.domains`? Case-insensitive; one trailing dot is ignored.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = normalize_domain(domain);
        self.local.domains.contains(&domain)
    }

    /// Is `ip` inside `relay.trusted_networks`? An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as seen
    /// on dual-stack sockets) is checked as the IPv4 address it carries.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.relay
            .trusted_networks
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// The user whose address is `address`, compared case-insensitively.
    pub fn user(&self, address: &str) -> Option<&User> {
        let address = address.trim();
        self.users
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(address))
    }

    /// The static route for `domain` (case-insensitive, one trailing dot ignored), else the "*"
    /// smarthost route, else `None` (deliver via MX).
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        self.routes
            .get(&normalize_domain(domain))
            .or_else(|| self.routes.get("*"))
    }
}
