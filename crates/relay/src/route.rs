//! Where mail for a recipient domain goes: a `[routes]` entry (the exact domain, then the `*`
//! smarthost), else the domain's MX hosts in RFC 5321 5.1 order, each expanded to addresses.
//! The MX rules themselves (self-MX, own listeners, caps) are `tern_dns::mx_targets_checked`
//! (`tern send` uses the same rules, without a policy); the relay adds its address policy
//! (issue 10): an MX-resolved address
//! in loopback, link-local, unspecified or `outbound.deny_networks` is never connected to,
//! unless `outbound.allow_networks` exempts it. A route is the operator's own choice and is not
//! checked.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tern_config::{Config, LmtpAddress, RouteAuth, TlsPolicy};
use tern_dns::{host_targets, mx_targets_checked, Myself, RefusedTarget, Resolver, TargetError};
use tern_queue::RcptOutcome;

use crate::status;

/// One deadline for all the DNS work of finding a destination's hops.
const ROUTE_DNS_DEADLINE: Duration = Duration::from_secs(30);

/// A next hop for a group of recipients. Recipients with the same `key` share a transaction and
/// a pooled connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub key: String,
    pub kind: DestinationKind,
    pub tls: TlsPolicy,
    pub auth: Option<RouteAuth>,
    /// Extra CA certificates for verifying the hop under `tls = "required"`.
    pub ca_file: Option<PathBuf>,
    /// The message asked for REQUIRETLS (RFC 8689): `tls` is then `Required`, and a hop
    /// without STARTTLS fails the recipient (550 5.7.30) instead of deferring it.
    pub requiretls: bool,
    /// DANE (RFC 7672, [`crate::dane`]): look up the hops' TLSA records; `outbound.dane` for
    /// MX delivery, the route's `dane` for a route.
    pub dane: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    /// A static route: this host and port, no MX lookup.
    Route { host: String, port: u16 },
    /// The MX hosts of this domain on `outbound.mx_port`.
    Mx { domain: String },
    /// A local domain under `[local] delivery = "lmtp"`: the LMTP server (RFC 2033) of
    /// `local.lmtp`, spoken to by [`crate::lmtp`]; no DNS, no TLS, no AUTH.
    Lmtp { target: LmtpAddress },
}

/// One address to connect to, with the name TLS and logs know it by.
pub type Hop = tern_dns::Target;

/// Why no hop could be found: a recipient outcome like any other (deferred or failed, with
/// tern's own status from [`crate::status`]), so bounces quote it like any other.
pub type RouteFailure = RcptOutcome;

/// The destination of `domain` (lower case): static, no I/O.
pub fn destination(cfg: &Config, domain: &str) -> Destination {
    // Local recipients reach the queue only with `delivery = "lmtp"` (intake writes them to
    // Maildir otherwise); they go to the one LMTP server of every local domain, all of a
    // message's local recipients in one transaction (one key).
    if let Some(target) = cfg
        .local
        .lmtp_for(domain)
        .filter(|_| cfg.is_local_domain(domain))
    {
        return Destination {
            key: format!("lmtp {target}"),
            kind: DestinationKind::Lmtp {
                target: target.clone(),
            },
            tls: TlsPolicy::None,
            auth: None,
            ca_file: None,
            requiretls: false,
            dane: false,
        };
    }
    match cfg.route_for(domain) {
        // Everything that shapes the connection is in the key: recipients share a transaction
        // and a pooled connection only when their routes would open the same kind of session
        // (a "required" route must never ride on a plaintext or differently logged-in one).
        Some(route) => Destination {
            key: format!(
                "route {}:{} tls={} user={} password_file={} ca_file={}",
                route.host,
                route.port,
                route.tls,
                route.auth.as_ref().map_or("", |a| a.user.as_str()),
                route
                    .auth
                    .as_ref()
                    .map_or(String::new(), |a| a.password_file.display().to_string()),
                route
                    .ca_file
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
            ),
            kind: DestinationKind::Route {
                host: route.host.clone(),
                port: route.port,
            },
            tls: route.tls,
            auth: route.auth.clone(),
            ca_file: route.ca_file.clone(),
            requiretls: false,
            dane: route.dane,
        },
        None => Destination {
            key: format!("mx {domain}"),
            kind: DestinationKind::Mx {
                domain: domain.to_string(),
            },
            tls: cfg.outbound.tls,
            auth: None,
            ca_file: None,
            requiretls: false,
            dane: cfg.outbound.dane,
        },
    }
}

impl Destination {
    /// The destination for a message sent with REQUIRETLS (RFC 8689 4.2.1): only over TLS
    /// whose certificate verifies, to a hop that offers REQUIRETLS, never on a connection
    /// pooled under a weaker policy (its own key). The mailbox server (LMTP, on this host) is
    /// not a relay hop and stays as it is.
    pub fn requiring_tls(mut self) -> Destination {
        if matches!(self.kind, DestinationKind::Lmtp { .. }) {
            return self;
        }
        self.tls = TlsPolicy::Required;
        self.key.push_str(" requiretls");
        self.requiretls = true;
        self
    }
}

/// The addresses to try for `dest`, most preferred first.
pub async fn hops(
    cfg: &Config,
    resolver: &dyn Resolver,
    dest: &Destination,
) -> Result<Vec<Hop>, RouteFailure> {
    let found = match &dest.kind {
        // No network hops: the connector opens the LMTP socket itself (crate::lmtp).
        DestinationKind::Lmtp { .. } => return Err(RcptOutcome::deferred(status::no_host())),
        DestinationKind::Route { host, port } => host_targets(resolver, host, *port).await,
        DestinationKind::Mx { domain } => {
            let myself = Myself {
                hostname: Some(cfg.hostname.clone()),
                listeners: cfg.smtp.listen.clone(),
            };
            let refuse = |ip: IpAddr| cfg.outbound.refusal(ip).map(|r| r.to_string());
            let found = mx_targets_checked(
                resolver,
                domain,
                cfg.outbound.mx_port,
                &myself,
                &refuse,
                ROUTE_DNS_DEADLINE,
            )
            .await;
            match &found {
                Ok(t) => log_refused(domain, &t.refused),
                Err(TargetError::Refused { refused, .. }) => log_refused(domain, refused),
                Err(_) => {}
            }
            found.map(|t| t.usable)
        }
    };
    found.map_err(|e| status::target_failure(&e))
}

/// Each refused address, so the operator sees which one and why (the recipient's status names
/// only the first).
fn log_refused(domain: &str, refused: &[RefusedTarget]) {
    for r in refused {
        tracing::warn!(
            domain = %domain,
            host = %r.target.name,
            addr = %r.target.addr.ip(),
            reason = %r.reason,
            "relay: MX address refused"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_dns::StaticResolver;
    use tern_queue::RcptClass;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.self.test\"\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n[outbound]\nmx_port = 2626\n{extra}"
        );
        Config::from_toml_str(&text, std::path::Path::new("test.toml")).expect("test config")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn local_domains_go_to_lmtp_even_past_a_smarthost() {
        let c = cfg("[local]\ndomains = [\"tern.test\", \"other.test\"]\ndelivery = \"lmtp\"\nlmtp = \"unix:/run/dovecot/lmtp\"\n[routes]\n\"*\" = \"relay.test\"\n");
        let d = destination(&c, "tern.test");
        assert_eq!(
            d.kind,
            DestinationKind::Lmtp {
                target: LmtpAddress::Unix("/run/dovecot/lmtp".into())
            }
        );
        // One key for every local domain: one transaction for all local recipients.
        assert_eq!(d.key, "lmtp unix:/run/dovecot/lmtp");
        assert_eq!(destination(&c, "other.test").key, d.key);
        assert!(matches!(
            destination(&c, "remote.test").kind,
            DestinationKind::Route { .. }
        ));
        // With Maildir delivery a local domain is never an LMTP destination.
        let m = cfg("[local]\ndomains = [\"tern.test\"]\n");
        assert!(matches!(
            destination(&m, "tern.test").kind,
            DestinationKind::Mx { .. }
        ));
    }

    #[test]
    fn per_domain_lmtp_sends_only_that_domain_to_its_server() {
        let c = cfg(
            "[local]\ndomains = [\"tern.test\", \"dove.test\", \"other.test\"]\n\
             [local.per_domain.\"dove.test\"]\ndelivery = \"lmtp\"\nlmtp = \"inet:127.0.0.1:24\"\n\
             [local.per_domain.\"other.test\"]\ndelivery = \"lmtp\"\nlmtp = \"unix:/run/other\"\n",
        );
        assert_eq!(
            destination(&c, "dove.test").kind,
            DestinationKind::Lmtp {
                target: LmtpAddress::Inet("127.0.0.1:24".parse().unwrap())
            }
        );
        // Each server its own destination (and transaction).
        assert_ne!(
            destination(&c, "dove.test").key,
            destination(&c, "other.test").key
        );
        // The Maildir domain is never handed to the relay as LMTP.
        assert!(!matches!(
            destination(&c, "tern.test").kind,
            DestinationKind::Lmtp { .. }
        ));
    }

    #[test]
    fn a_route_wins_over_mx_and_star_is_the_smarthost() {
        let c = cfg("[routes]\n\"partner.test\" = \"127.0.0.1:2727\"\n\"*\" = { host = \"relay.test\", port = 587, tls = \"required\" }\n");
        let d = destination(&c, "partner.test");
        assert_eq!(
            d.kind,
            DestinationKind::Route {
                host: "127.0.0.1".into(),
                port: 2727
            }
        );
        let s = destination(&c, "anything.test");
        assert_eq!(s.tls, TlsPolicy::Required);
        assert_eq!(
            s.kind,
            DestinationKind::Route {
                host: "relay.test".into(),
                port: 587
            }
        );
        let no_routes = cfg("");
        assert_eq!(
            destination(&no_routes, "x.test").kind,
            DestinationKind::Mx {
                domain: "x.test".into()
            }
        );
    }

    #[test]
    fn routes_to_one_host_with_different_tls_never_share_a_key() {
        let c = cfg("[routes]\n\"plain.test\" = { host = \"127.0.0.1\", port = 2727, tls = \"none\" }\n\"safe.test\" = { host = \"127.0.0.1\", port = 2727, tls = \"required\" }\n\"also-plain.test\" = { host = \"127.0.0.1\", port = 2727, tls = \"none\" }\n");
        let plain = destination(&c, "plain.test");
        assert_ne!(plain.key, destination(&c, "safe.test").key);
        assert_eq!(plain.key, destination(&c, "also-plain.test").key);
    }

    #[test]
    fn mx_hosts_in_preference_order_on_the_mx_port() {
        let c = cfg("");
        let r = StaticResolver::new()
            .mx("x.test", 20, "b.x.test")
            .mx("x.test", 10, "a.x.test")
            .ip("a.x.test", "192.0.2.1".parse().unwrap())
            .ip("b.x.test", "192.0.2.2".parse().unwrap());
        let hops = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap();
        let addrs: Vec<String> = hops.iter().map(|h| h.addr.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.1:2626", "192.0.2.2:2626"]);
        assert_eq!(hops[0].name, "a.x.test");
    }

    #[test]
    fn an_mx_without_address_is_skipped() {
        let c = cfg("");
        let r = StaticResolver::new()
            .mx("x.test", 10, "gone.x.test")
            .mx("x.test", 20, "b.x.test")
            .ip("b.x.test", "192.0.2.2".parse().unwrap());
        let hops = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].name, "b.x.test");
    }

    #[test]
    fn null_mx_is_a_permanent_5_1_10() {
        let c = cfg("");
        let r = StaticResolver::new().mx("x.test", 0, "");
        let e = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap_err();
        assert_eq!(e.class, RcptClass::Failed);
        assert!(
            e.reply.to_string().starts_with("556 5.1.10 "),
            "{}",
            e.reply
        );
    }

    #[test]
    fn our_own_name_as_mx_is_a_loop() {
        let c = cfg("");
        let r = StaticResolver::new()
            .mx("x.test", 10, "MX.self.test")
            .ip("mx.self.test", "192.0.2.1".parse().unwrap());
        let e = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap_err();
        assert_eq!(e.class, RcptClass::Failed);
        assert!(e.reply.to_string().starts_with("554 5.4.6 "), "{}", e.reply);
    }

    #[test]
    fn hosts_less_preferred_than_us_are_dropped() {
        let c = cfg("");
        let r = StaticResolver::new()
            .mx("x.test", 5, "better.x.test")
            .mx("x.test", 10, "mx.self.test")
            .mx("x.test", 20, "backup.x.test")
            .ip("better.x.test", "192.0.2.3".parse().unwrap())
            .ip("backup.x.test", "192.0.2.4".parse().unwrap());
        let hops = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].name, "better.x.test");
    }

    #[test]
    fn our_own_listener_address_is_never_a_hop() {
        let text = "hostname = \"mx.self.test\"\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n[outbound]\nmx_port = 2525\n";
        let c = Config::from_toml_str(text, std::path::Path::new("test.toml")).unwrap();
        let r = StaticResolver::new()
            .mx("x.test", 10, "other.x.test")
            .ip("other.x.test", "127.0.0.1".parse().unwrap());
        let e = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap_err();
        assert!(e.reply.to_string().starts_with("554 5.4.6"), "{}", e.reply);
    }

    #[test]
    fn dns_trouble_is_temporary() {
        let c = cfg("");
        let r = StaticResolver::new().servfail("x.test");
        let e = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap_err();
        assert_eq!(e.class, RcptClass::Deferred);
        assert!(e.reply.to_string().starts_with("451 4.4.3 "), "{}", e.reply);
    }

    #[test]
    fn mx_addresses_in_loopback_are_refused_by_default() {
        let c = cfg("");
        let r = StaticResolver::new()
            .mx("x.test", 10, "lo.x.test")
            .mx("x.test", 20, "v6.x.test")
            .ip("lo.x.test", "127.0.0.1".parse().unwrap())
            .ip("v6.x.test", "::ffff:127.0.0.2".parse().unwrap());
        let e = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap_err();
        assert_eq!(e.class, RcptClass::Failed);
        assert_eq!(
            e.reply.to_string(),
            "550 5.4.4 every address found for x.test is refused: host lo.x.test[127.0.0.1] is loopback (127.0.0.0/8), never used for MX delivery unless in outbound.allow_networks (and 1 more)"
        );
    }

    #[test]
    fn allow_networks_exempts_and_deny_networks_still_wins() {
        let c = cfg("allow_networks = [\"127.0.0.0/8\"]\ndeny_networks = [\"127.0.0.2\", \"192.0.2.0/24\"]\n");
        let r = StaticResolver::new()
            .mx("x.test", 10, "denied.x.test")
            .mx("x.test", 20, "lab.x.test")
            .ip("denied.x.test", "127.0.0.2".parse().unwrap())
            .ip("denied.x.test", "192.0.2.9".parse().unwrap())
            .ip("lab.x.test", "127.0.0.3".parse().unwrap());
        let found = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap();
        let addrs: Vec<String> = found.iter().map(|h| h.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.3:2626"]);

        let r = StaticResolver::new()
            .mx("x.test", 10, "denied.x.test")
            .ip("denied.x.test", "192.0.2.9".parse().unwrap());
        let e = block_on(hops(&c, &r, &destination(&c, "x.test"))).unwrap_err();
        assert_eq!(
            e.reply.to_string(),
            "550 5.4.4 every address found for x.test is refused: host denied.x.test[192.0.2.9] is in outbound.deny_networks (192.0.2.0/24)"
        );
    }

    #[test]
    fn a_route_to_loopback_is_not_checked() {
        let c = cfg("deny_networks = [\"127.0.0.0/8\"]\n[routes]\n\"partner.test\" = \"lo.partner.test:2727\"\n\"lit.test\" = \"127.0.0.1:2727\"\n");
        let r = StaticResolver::new().ip("lo.partner.test", "127.0.0.1".parse().unwrap());
        for domain in ["partner.test", "lit.test"] {
            let found = block_on(hops(&c, &r, &destination(&c, domain))).unwrap();
            assert_eq!(found[0].addr.to_string(), "127.0.0.1:2727", "{domain}");
        }
    }

    #[test]
    fn a_link_local_address_literal_is_refused() {
        let c = cfg("");
        let r = StaticResolver::new();
        let e = block_on(hops(&c, &r, &destination(&c, "[169.254.169.254]"))).unwrap_err();
        assert_eq!(e.class, RcptClass::Failed);
        assert!(
            e.reply.to_string().starts_with("550 5.4.4 every address found for [169.254.169.254] is refused: host 169.254.169.254[169.254.169.254] is link-local (169.254.0.0/16)"),
            "{}",
            e.reply
        );
    }
}
