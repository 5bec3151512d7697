//! The router: the one place that decides where a recipient's copy goes (a local mailbox, the
//! members of an alias, or a remote address to relay), used alike by the session at RCPT, by
//! the relay's notifications and by `tern queue bounce`. Relay *rights* (may this client send
//! to a remote address?) are the server's business; the router only takes the answer.
//! The domain of the parsed address alone decides routing; decorations in the local part
//! (`user%other@local`, `"user@other"@local`, `other!user@local`) stay local (RFC 5321 3.6.1
//! leaves source-routing by local part to the receiver, and tern never does it).
//! The one exception is our own SRS addresses (`[srs]`, [`crate::srs`]): they are routed to the
//! address they encode once their hash and age check out.

use std::collections::HashSet;

use tern_config::Config;
use tern_proto::{Address, Domain, ForwardPath};

use crate::srs::{Day, Srs};

/// Where one accepted recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A local mailbox, by its lookup key `local@domain` (lower case).
    Local(String),
    /// A remote address, to be relayed.
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDecision {
    Accept(Vec<Target>),
    NoSuchUser,
    RelayDenied,
}

/// Alias chains longer than this are treated as a configuration loop.
const MAX_ALIAS_DEPTH: usize = 8;

pub fn is_local_domain(cfg: &Config, domain: &Domain) -> bool {
    cfg.is_local_domain(&domain.normalized())
}

/// The address `<postmaster>` without a domain stands for (RFC 5321 4.1.1.3).
pub fn postmaster_address(cfg: &Config) -> Address {
    let domain = if cfg.is_local_domain(&cfg.hostname) {
        cfg.hostname.to_ascii_lowercase()
    } else {
        cfg.local
            .domains
            .first()
            .cloned()
            .unwrap_or_else(|| cfg.hostname.to_ascii_lowercase())
    };
    Address::new_unchecked("postmaster", Domain::Name(domain))
}

pub fn decide_recipient(cfg: &Config, to: &ForwardPath, relay_allowed: bool) -> RcptDecision {
    let addr = match to {
        ForwardPath::Postmaster => postmaster_address(cfg),
        ForwardPath::Mailbox(a) => a.clone(),
    };
    decide(cfg, addr, relay_allowed, 0)
}

/// SRS addresses reversed in a row at most: an SRS1 whose first forwarder is also us reverses
/// to one of our SRS0 addresses, which reverses to a plain one; more means a forged chain.
const MAX_SRS_DEPTH: usize = 2;

fn decide(cfg: &Config, addr: Address, relay_allowed: bool, srs_depth: usize) -> RcptDecision {
    if let Some(srs) = cfg.srs.as_ref().map(Srs::new) {
        if srs.is_ours(&addr) {
            return match srs.reverse(&addr, Day::today()) {
                // A bounce (or a reply) to a sender we rewrote goes where that sender was, even
                // to a remote domain without relay rights: the hash, which only our secret
                // makes, is the authorization, and it expires after srs.max_age.
                Ok(original) if srs_depth < MAX_SRS_DEPTH => {
                    decide(cfg, original, true, srs_depth + 1)
                }
                // RFC 3463 X.1.1 (bad destination mailbox): a forged, altered or expired SRS
                // address names no mailbox, as postsrsd answers it too; X.7.x would suggest
                // that some authorization could make it deliverable, and none can.
                _ => RcptDecision::NoSuchUser,
            };
        }
    }
    if !is_local_domain(cfg, addr.domain()) {
        return if relay_allowed {
            RcptDecision::Accept(vec![Target::Remote(addr.to_string())])
        } else {
            RcptDecision::RelayDenied
        };
    }
    let mut targets = Vec::new();
    if expand_local(cfg, &addr, 0, &mut targets) {
        targets.sort();
        targets.dedup();
        RcptDecision::Accept(targets)
    } else {
        RcptDecision::NoSuchUser
    }
}

/// Whether `addr` is one of our SRS addresses (`[srs]` on, in `srs.domain`, tagged SRS0/SRS1):
/// [`decide_recipient`] routes it to the address it encodes, whatever its domain.
pub fn is_srs_address(cfg: &Config, addr: &Address) -> bool {
    cfg.srs.as_ref().is_some_and(|c| Srs::new(c).is_ours(addr))
}

/// Whether some alias sends copies to a remote address (forwarding, where SRS matters).
pub fn forwards_off_host(cfg: &Config) -> bool {
    cfg.aliases
        .values()
        .flatten()
        .any(|target| Address::parse(target).is_ok_and(|a| !is_local_domain(cfg, a.domain())))
}

/// Whether a local address names a mailbox of its own (not through an alias).
///
/// Takes the parsed address, not its lookup key: a quoted local part may itself hold `@`
/// (`"postmaster@a1"@tern.test`), so splitting `local@domain` text would find the wrong `@`.
pub fn local_mailbox_exists(cfg: &Config, addr: &Address) -> bool {
    cfg.local.catch_all
        || cfg.user(&addr.lookup_key()).is_some()
        // RFC 5321 4.5.1: postmaster must be accepted for every local domain; the whole local
        // part must be "postmaster" (RFC 5321 4.1.1.3: case-insensitive).
        || addr.local_part().eq_ignore_ascii_case("postmaster")
}

/// The local mailboxes (router keys) the configuration itself names: every `[[users]]` entry,
/// every local target of an alias, and `postmaster` at each local domain. Their number is
/// bounded by the configuration, so they never count against the new-mailbox caps
/// ([`crate::mailbox_cap`]); only a catch-all recipient can create mailboxes without end.
pub fn configured_mailboxes(cfg: &Config) -> HashSet<String> {
    let mut keys: HashSet<String> = cfg.users.iter().map(|u| u.name.to_lowercase()).collect();
    let mut targets = Vec::new();
    for alias in cfg.aliases.keys() {
        if let Ok(a) = Address::parse(alias) {
            expand_local(cfg, &a, 0, &mut targets);
        }
    }
    keys.extend(targets.into_iter().filter_map(|t| match t {
        Target::Local(key) => Some(key),
        Target::Remote(_) => None,
    }));
    for domain in &cfg.local.domains {
        keys.insert(
            Address::new_unchecked("postmaster", Domain::Name(domain.clone())).lookup_key(),
        );
    }
    keys
}

/// Expands a local address through the alias table; returns false if it names nobody.
fn expand_local(cfg: &Config, addr: &Address, depth: usize, out: &mut Vec<Target>) -> bool {
    let key = addr.lookup_key();
    if let Some(members) = cfg.aliases.get(&key) {
        if depth >= MAX_ALIAS_DEPTH {
            return false;
        }
        let mut any = false;
        for member in members {
            let Ok(m) = Address::parse(member) else {
                continue;
            };
            if is_local_domain(cfg, m.domain()) {
                // A member the admin wrote down is delivered even without a [[users]] entry.
                if cfg.aliases.contains_key(&m.lookup_key()) {
                    any |= expand_local(cfg, &m, depth + 1, out);
                } else {
                    out.push(Target::Local(m.lookup_key()));
                    any = true;
                }
            } else {
                out.push(Target::Remote(m.to_string()));
                any = true;
            }
        }
        return any;
    }
    if local_mailbox_exists(cfg, addr) {
        out.push(Target::Local(key));
        true
    } else {
        false
    }
}

/// VRFY with `local.vrfy = true`: the canonical address if it is a local mailbox or alias.
pub fn verify(cfg: &Config, arg: &str) -> Option<String> {
    let addr = parse_loose(cfg, arg)?;
    if !is_local_domain(cfg, addr.domain()) {
        return None;
    }
    let key = addr.lookup_key();
    (cfg.aliases.contains_key(&key) || cfg.user(&key).is_some()).then_some(key)
}

/// EXPN with `local.expn = true`: the members of an alias.
pub fn expand(cfg: &Config, arg: &str) -> Option<Vec<String>> {
    let addr = parse_loose(cfg, arg)?;
    cfg.aliases.get(&addr.lookup_key()).cloned()
}

/// VRFY/EXPN arguments come as `user@domain`, `<user@domain>` or a bare local part, which
/// means the primary local domain.
fn parse_loose(cfg: &Config, arg: &str) -> Option<Address> {
    let a = arg.trim().trim_start_matches('<').trim_end_matches('>');
    if a.contains('@') {
        Address::parse(a).ok()
    } else {
        Address::parse(&format!("{a}@{}", postmaster_address(cfg).domain())).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        tern_config::Config::from_toml_str(toml, std::path::Path::new("test.toml")).unwrap()
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn postmaster_is_the_whole_local_part() {
        let c = cfg(
            "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\ncatch_all = false\n",
        );
        assert!(local_mailbox_exists(&c, &addr("postmaster@tern.test")));
        assert!(local_mailbox_exists(&c, &addr("PostMaster@tern.test")));
        assert!(!local_mailbox_exists(
            &c,
            &addr("\"postmaster@a1\"@tern.test")
        ));
        assert!(!local_mailbox_exists(&c, &addr("postmasterx@tern.test")));
        assert!(!local_mailbox_exists(
            &c,
            &addr("\"postmaster@\"@tern.test")
        ));
        let to = ForwardPath::Mailbox(addr("\"postmaster@a1\"@tern.test"));
        assert_eq!(decide_recipient(&c, &to, true), RcptDecision::NoSuchUser);
    }

    #[test]
    fn configured_mailboxes_are_users_alias_targets_and_postmasters() {
        let c = cfg(concat!(
            "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\", \"b.test\"]\ncatch_all = true\n",
            "[[users]]\nname = \"Alice@tern.test\"\n",
            "[aliases]\n\"team@tern.test\" = [\"bob@tern.test\", \"list@tern.test\", \"far@remote.test\"]\n",
            "\"list@tern.test\" = \"carol@b.test\"\n",
        ));
        let mut got: Vec<String> = configured_mailboxes(&c).into_iter().collect();
        got.sort();
        assert_eq!(
            got,
            [
                "alice@tern.test",
                "bob@tern.test",
                "carol@b.test",
                "postmaster@b.test",
                "postmaster@tern.test"
            ]
        );
    }

    fn srs_cfg(dir: &std::path::Path) -> Config {
        let secret = dir.join("srs.secret");
        std::fs::write(&secret, "a-secret-of-enough-length\n").unwrap();
        cfg(&format!(
            concat!(
                "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\ncatch_all = false\n",
                "[[users]]\nname = \"alice@tern.test\"\n",
                "[aliases]\n\"fwd@tern.test\" = \"someone@remote.test\"\n",
                "[srs]\nsecret_file = {:?}\n"
            ),
            secret.display().to_string()
        ))
    }

    fn srs_of(c: &Config, sender: &str) -> Address {
        let s = crate::srs::Srs::new(c.srs.as_ref().unwrap());
        s.forward(&addr(sender), Day::today()).unwrap()
    }

    #[test]
    fn srs_addresses_route_to_what_they_encode() {
        let dir = tempfile::tempdir().unwrap();
        let c = srs_cfg(dir.path());
        assert!(forwards_off_host(&c));
        // A remote original sender: relayed, even for a client without relay rights.
        let remote = ForwardPath::Mailbox(srs_of(&c, "carol@far.test"));
        assert_eq!(
            decide_recipient(&c, &remote, false),
            RcptDecision::Accept(vec![Target::Remote("carol@far.test".into())])
        );
        // A local one (a sender in a local domain is never rewritten by tern, but another
        // forwarder's bounce may be for it): delivered locally, and only if it exists.
        let local = ForwardPath::Mailbox(srs_of(&c, "alice@tern.test"));
        assert_eq!(
            decide_recipient(&c, &local, false),
            RcptDecision::Accept(vec![Target::Local("alice@tern.test".into())])
        );
        let nobody = ForwardPath::Mailbox(srs_of(&c, "nobody@tern.test"));
        assert_eq!(
            decide_recipient(&c, &nobody, false),
            RcptDecision::NoSuchUser
        );
        // Tampered: no such user (550 5.1.1), never relay-denied or relayed.
        let forged = srs_of(&c, "carol@far.test")
            .to_string()
            .replace("=carol@", "=mallory@");
        let forged = ForwardPath::Mailbox(addr(&forged));
        assert_eq!(
            decide_recipient(&c, &forged, true),
            RcptDecision::NoSuchUser
        );
        assert!(is_srs_address(
            &c,
            &addr("SRS0=xxxx=AA=far.test=carol@mx.tern.test")
        ));
        // Without [srs] the same address is just a remote one.
        let off = cfg("hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n");
        assert_eq!(
            decide_recipient(&off, &remote, false),
            RcptDecision::RelayDenied
        );
        assert!(!is_srs_address(
            &off,
            &addr("SRS0=xxxx=AA=far.test=carol@mx.tern.test")
        ));
    }
}
