//! Read-only questions the rest of tern asks of a `Config`.

use std::net::IpAddr;

use crate::defaults;
use crate::types::{Config, OutboundConfig, Refusal, Route, User};
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

impl OutboundConfig {
    /// Why an address found through the recipient domain's DNS (an MX host's address, an
    /// implicit MX, an address literal) must not be connected to, or `None` when it may be.
    /// `deny_networks` is checked first and always wins; the always-refused ranges then apply
    /// unless `allow_networks` covers the address. An IPv4-mapped IPv6 address is checked as
    /// the IPv4 address it carries, so `::ffff:127.0.0.1` is loopback too.
    pub fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if let Some(net) = self.deny_networks.iter().find(|n| n.contains(&ip)) {
            return Some(Refusal::Denied(*net));
        }
        let (kind, network) = defaults::always_refused_networks()
            .into_iter()
            .find(|(_, n)| n.contains(&ip))?;
        if self.allow_networks.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        Some(Refusal::Reserved { kind, network })
    }
}
