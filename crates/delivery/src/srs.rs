//! The Sender Rewriting Scheme (Shevek's SRS, as libsrs2 and Postfix's postsrsd write it), sans
//! I/O: the clock comes in as a [`Day`], the keys from `[srs]`.
//!
//! A message a local alias forwards off-host leaves with its original envelope sender, so the
//! next hop's SPF check (RFC 7208) of that sender fails against our address. SRS gives the
//! forwarded copy a sender in our own domain that still encodes the original one:
//!
//! - `SRS0=HHHH=TT=orig-domain=orig-local@our-domain` for a plain sender, where TT is the day
//!   (days since 1970 modulo 1024, two base32 characters) and HHHH the first four base64
//!   characters of HMAC-SHA1(secret, TT + orig-domain + orig-local), its input lower-cased;
//! - a sender that is already `SRS0=...@first-forwarder` becomes
//!   `SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@our-domain` (the hash now
//!   over first-forwarder and the SRS0 part after `SRS0`), and an `SRS1` sender keeps its first
//!   forwarder and SRS0 part under our new hash: bounces then skip the middle forwarders.
//!
//! A bounce to such an address is routed back by [`Srs::reverse`]: the hash must match one of the
//! secrets and the timestamp be at most `srs.max_age` days old, so nobody can make us relay to an
//! address of their choosing. Mail servers may change the case of a local part on the way, so
//! the tags, the timestamp and the hash are compared without regard to case (the hash input is
//! lower-cased, which makes the hash itself the only case-sensitive part, and libsrs2 accepts it
//! in any case too; that leaves about 21 of its 24 bits).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};
use base64::Engine;
use tern_config::{Config, SrsConfig};
use tern_proto::{Address, Domain};

/// Characters of the base64 hash kept in an address (libsrs2's default hash length).
const HASH_LEN: usize = 4;
/// The timestamp counts days modulo this: two base32 characters of five bits.
const STAMP_SLOTS: u32 = 1 << 10;
/// RFC 4648 6 (the base32 alphabet), as SRS timestamps use it.
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// What may follow the `SRS0` / `SRS1` tag (libsrs2 accepts all three; tern writes `=`).
const SEPARATORS: [char; 3] = ['=', '+', '-'];

/// A day number: whole days since 1970-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub u64);

impl Day {
    pub fn of(t: SystemTime) -> Day {
        Day(t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400))
    }

    pub fn today() -> Day {
        Day::of(SystemTime::now())
    }

    /// The two-character SRS timestamp of this day.
    fn stamp(self) -> String {
        let slot = (self.0 % u64::from(STAMP_SLOTS)) as usize;
        [BASE32[(slot >> 5) & 31], BASE32[slot & 31]]
            .iter()
            .map(|&b| char::from(b))
            .collect()
    }

    /// How many days ago a timestamp was made, assuming it is not from the future (a stamp
    /// "ahead" of today is taken as made almost 1024 days ago, as libsrs2 does).
    fn age_of(self, stamp: u32) -> u32 {
        let today = (self.0 % u64::from(STAMP_SLOTS)) as u32;
        (today + STAMP_SLOTS - stamp) % STAMP_SLOTS
    }
}

/// The value of a two-character timestamp, in any case; `None` if it is not base32.
fn parse_stamp(text: &str) -> Option<u32> {
    let digit = |c: u8| {
        BASE32
            .iter()
            .position(|&b| b == c.to_ascii_uppercase())
            .map(|p| p as u32)
    };
    match text.as_bytes() {
        [hi, lo] => Some(digit(*hi)? << 5 | digit(*lo)?),
        _ => None,
    }
}

/// Why an address in our SRS domain that looks like SRS is not routed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not the SRS0 / SRS1 grammar (a part missing or empty, a bad timestamp).
    Malformed,
    /// No secret gives this hash: forged, altered, or made with a secret no longer listed.
    BadHash,
    /// The timestamp is older than `srs.max_age`.
    Expired,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::Malformed => "not a well-formed SRS address",
            Invalid::BadHash => "the SRS hash does not match",
            Invalid::Expired => "the SRS address has expired",
        })
    }
}

/// The scheme with tern's keys and domain.
#[derive(Debug, Clone, Copy)]
pub struct Srs<'a> {
    cfg: &'a SrsConfig,
}

impl<'a> Srs<'a> {
    pub fn new(cfg: &'a SrsConfig) -> Self {
        Self { cfg }
    }

    /// The SRS domain (`srs.domain`).
    pub fn domain(&self) -> &str {
        &self.cfg.domain
    }

    /// The sender for a copy of mail from `sender` that we forward, made on `day`. `None` when
    /// the result would not be a valid address (RFC 5321 4.5.3.1.1: a local part of at most 64
    /// octets, which tern itself enforces when the bounce comes back), or when the sender's
    /// domain is an address literal of a kind that cannot be written back.
    pub fn forward(&self, sender: &Address, day: Day) -> Option<Address> {
        let domain = match sender.domain() {
            Domain::Name(_) | Domain::Ipv4(_) | Domain::Ipv6(_) => sender.domain().normalized(),
            Domain::General { .. } => return None,
        };
        let local = sender.local_part();
        let key = self.cfg.secrets.signing();
        let rewritten = match tagged(local) {
            Some((Tag::Srs0, _)) => {
                // SRS1 over the first forwarder's SRS0 part, from its separator on.
                let srs0 = &local[4..];
                format!("SRS1={}={domain}={srs0}", hash(key, &[&domain, srs0]))
            }
            Some((Tag::Srs1, rest)) => {
                // Keep the first forwarder and its SRS0 part; only the hash becomes ours.
                let (_, first, srs0) = split_srs1(rest)?;
                format!("SRS1={}={first}={srs0}", hash(key, &[first, srs0]))
            }
            None => {
                let stamp = day.stamp();
                format!(
                    "SRS0={}={stamp}={domain}={local}",
                    hash(key, &[&stamp, &domain, local])
                )
            }
        };
        checked(&rewritten, &self.cfg.domain)
    }

    /// Whether `addr` is an SRS address of ours: in the SRS domain with an SRS0 / SRS1 tag.
    /// Such an address is routed only through [`Srs::reverse`], never as a mailbox.
    pub fn is_ours(&self, addr: &Address) -> bool {
        addr.domain().normalized() == self.cfg.domain && tagged(addr.local_part()).is_some()
    }

    /// Where mail to one of our SRS addresses goes: the original sender for SRS0 (after the
    /// hash and age checks), the first forwarder's SRS0 address for SRS1 (after the hash check:
    /// SRS1 carries no timestamp of ours, the first forwarder checks its own).
    pub fn reverse(&self, addr: &Address, today: Day) -> Result<Address, Invalid> {
        if addr.domain().normalized() != self.cfg.domain {
            return Err(Invalid::Malformed);
        }
        match tagged(addr.local_part()).ok_or(Invalid::Malformed)? {
            (Tag::Srs0, rest) => {
                let mut parts = rest.splitn(4, '=');
                let (Some(given), Some(stamp), Some(domain), Some(local)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(Invalid::Malformed);
                };
                if domain.is_empty() || local.is_empty() {
                    return Err(Invalid::Malformed);
                }
                let stamp_value = parse_stamp(stamp).ok_or(Invalid::Malformed)?;
                self.verify(given, &[stamp, domain, local])?;
                if today.age_of(stamp_value) > u32::from(self.cfg.max_age_days) {
                    return Err(Invalid::Expired);
                }
                let domain = Domain::parse(domain).map_err(|_| Invalid::Malformed)?;
                checked_address(Address::new_unchecked(local, domain))
            }
            (Tag::Srs1, rest) => {
                let (given, first, srs0) = split_srs1(rest).ok_or(Invalid::Malformed)?;
                self.verify(given, &[first, srs0])?;
                let domain = Domain::parse(first).map_err(|_| Invalid::Malformed)?;
                checked_address(Address::new_unchecked(format!("SRS0{srs0}"), domain))
            }
        }
    }

    /// Constant-time check of `given` against the hash of `parts` under every secret (each one
    /// is tried, whatever the earlier ones gave, so the time says nothing about which matched).
    fn verify(&self, given: &str, parts: &[&str]) -> Result<(), Invalid> {
        let given = given.to_ascii_lowercase();
        let mut ok = false;
        for key in self.cfg.secrets.all() {
            let expected = hash(key, parts).to_ascii_lowercase();
            ok |= constant_time::verify_slices_are_equal(given.as_bytes(), expected.as_bytes())
                .is_ok();
        }
        if ok {
            Ok(())
        } else {
            Err(Invalid::BadHash)
        }
    }
}

/// The envelope sender for the copies a local alias forwards off-host, when it changes: the
/// SRS address of `sender`. `None` keeps the sender as it is: SRS is off (no `srs.secret_file`),
/// the sender is null (RFC 5321 4.5.5: a bounce has none, and none is made up for it), it is in
/// one of our local domains or the SRS domain (their SPF records already name us), or it cannot
/// be rewritten ([`Srs::forward`]).
pub fn forwarded_sender(cfg: &Config, sender: Option<&str>, day: Day) -> Option<String> {
    let srs = Srs::new(cfg.srs.as_ref()?);
    let sender = Address::parse(sender?).ok()?;
    let domain = sender.domain().normalized();
    if cfg.is_local_domain(&domain) || domain == srs.domain() {
        return None;
    }
    srs.forward(&sender, day).map(|a| a.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Srs0,
    Srs1,
}

/// The tag of an SRS local part (any case) and what follows its separator.
fn tagged(local: &str) -> Option<(Tag, &str)> {
    let head = local.get(..4)?;
    let tag = if head.eq_ignore_ascii_case("SRS0") {
        Tag::Srs0
    } else if head.eq_ignore_ascii_case("SRS1") {
        Tag::Srs1
    } else {
        return None;
    };
    let rest = local[4..].strip_prefix(SEPARATORS)?;
    Some((tag, rest))
}

/// `HHHH=first-forwarder=<sep>rest` (what follows `SRS1=`) into its hash, the first forwarder
/// and the SRS0 part from its separator on.
fn split_srs1(rest: &str) -> Option<(&str, &str, &str)> {
    let mut parts = rest.splitn(3, '=');
    let (given, first, srs0) = (parts.next()?, parts.next()?, parts.next()?);
    if first.is_empty() || !srs0.starts_with(SEPARATORS) || srs0.len() < 2 {
        return None;
    }
    Some((given, first, srs0))
}

/// The first [`HASH_LEN`] base64 characters of HMAC-SHA1(key, parts concatenated, lower-cased).
/// SHA-1 is what every SRS implementation uses; as an HMAC over a short-lived token it has no
/// known weakness (RFC 6151 makes the same argument for HMAC-MD5).
fn hash(key: &[u8], parts: &[&str]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(part.to_ascii_lowercase().as_bytes());
    }
    let mut text = base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref());
    text.truncate(HASH_LEN);
    text
}

/// `local@domain` as an [`Address`], if it is one tern would accept on the wire.
fn checked(local: &str, domain: &str) -> Option<Address> {
    checked_address(Address::new_unchecked(
        local,
        Domain::Name(domain.to_string()),
    ))
    .ok()
}

/// The address if its written form parses back to itself (length limits, quoting).
fn checked_address(addr: Address) -> Result<Address, Invalid> {
    match Address::parse(&addr.to_string()) {
        Ok(parsed) if parsed == addr => Ok(addr),
        _ => Err(Invalid::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tern_config::SrsSecrets;

    const DAY: Day = Day(20_000);

    fn config(secrets: &[&str]) -> SrsConfig {
        SrsConfig {
            secret_file: PathBuf::from("srs.secret"),
            secrets: SrsSecrets::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect())
                .unwrap(),
            domain: "fwd.tern.test".into(),
            max_age_days: 21,
        }
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn srs(cfg: &SrsConfig) -> Srs<'_> {
        Srs::new(cfg)
    }

    #[test]
    fn srs0_shape_and_round_trip() {
        let cfg = config(&["a-secret-of-enough-length"]);
        let s = srs(&cfg);
        let fwd = s.forward(&addr("Alice@Example.COM"), DAY).unwrap();
        let text = fwd.to_string();
        // 20000 % 1024 = 544 = 17 * 32 + 0: "R" then "A".
        let parts: Vec<&str> = text.split('=').collect();
        assert_eq!(parts[0], "SRS0", "{text}");
        assert_eq!(parts[1].len(), 4, "{text}");
        assert_eq!(parts[2], "RA", "{text}");
        assert_eq!(parts[3], "example.com", "{text}");
        assert_eq!(parts[4], "Alice@fwd.tern.test", "{text}");
        assert!(s.is_ours(&fwd));
        assert_eq!(s.reverse(&fwd, DAY).unwrap(), addr("Alice@example.com"));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA1("secret-key-for-srs", "ra" + "example.com" + "alice"), base64, first 4,
        // computed independently (Python hmac + base64).
        let cfg = config(&["secret-key-for-srs"]);
        let fwd = srs(&cfg).forward(&addr("alice@example.com"), DAY).unwrap();
        assert_eq!(
            fwd.to_string(),
            "SRS0=Lkum=RA=example.com=alice@fwd.tern.test"
        );
    }

    #[test]
    fn the_hash_and_tags_ignore_case() {
        let cfg = config(&["a-secret-of-enough-length"]);
        let s = srs(&cfg);
        let fwd = s.forward(&addr("alice@example.com"), DAY).unwrap();
        let lower = addr(&fwd.to_string().to_lowercase());
        let upper = addr(&fwd.to_string().to_uppercase());
        assert_eq!(s.reverse(&lower, DAY).unwrap(), addr("alice@example.com"));
        assert_eq!(s.reverse(&upper, DAY).unwrap(), addr("ALICE@EXAMPLE.COM"));
        assert!(s.is_ours(&lower) && s.is_ours(&upper));
    }

    #[test]
    fn tampering_is_refused() {
        let cfg = config(&["a-secret-of-enough-length"]);
        let s = srs(&cfg);
        let text = s
            .forward(&addr("alice@example.com"), DAY)
            .unwrap()
            .to_string();
        let other_user = text.replace("=alice@", "=mallory@");
        let other_domain = text.replace("=example.com=", "=evil.test=");
        let other_stamp = text.replace("=RA=", "=RB=");
        let mut bad_hash = text.clone().into_bytes();
        bad_hash[5] = if bad_hash[5].eq_ignore_ascii_case(&b'x') {
            b'y'
        } else {
            b'x'
        };
        let bad_hash = String::from_utf8(bad_hash).unwrap();
        for forged in [other_user, other_domain, other_stamp, bad_hash] {
            assert_eq!(
                s.reverse(&addr(&forged), DAY),
                Err(Invalid::BadHash),
                "{forged}"
            );
        }
        let other_key = config(&["another-secret-of-length"]);
        assert_eq!(
            srs(&other_key).reverse(&addr(&text), DAY),
            Err(Invalid::BadHash)
        );
        for malformed in [
            "SRS0=abcd@fwd.tern.test",
            "SRS0=abcd=RA=example.com@fwd.tern.test",
            "SRS0=abcd=R!=example.com=alice@fwd.tern.test",
            "SRS0=abcd=RA==alice@fwd.tern.test",
            "SRS1=abcd=example.com@fwd.tern.test",
            "SRS1=abcd=example.com=x@fwd.tern.test",
        ] {
            assert_eq!(
                s.reverse(&addr(malformed), DAY),
                Err(Invalid::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn expiry() {
        let cfg = config(&["a-secret-of-enough-length"]);
        let s = srs(&cfg);
        let fwd = s.forward(&addr("alice@example.com"), DAY).unwrap();
        assert!(
            s.reverse(&fwd, Day(DAY.0 + 21)).is_ok(),
            "21 days is max_age"
        );
        assert_eq!(s.reverse(&fwd, Day(DAY.0 + 22)), Err(Invalid::Expired));
        // A stamp from "tomorrow" is one from 1023 days ago.
        assert_eq!(s.reverse(&fwd, Day(DAY.0 - 1)), Err(Invalid::Expired));
        // Across the 1024-day wrap of the timestamp.
        let late = Day(1023 + 1024 * 19);
        let fwd = s.forward(&addr("alice@example.com"), late).unwrap();
        assert!(s.reverse(&fwd, Day(late.0 + 5)).is_ok());
    }

    #[test]
    fn rotation_signs_with_the_first_and_verifies_with_all() {
        let old = config(&["old-secret-of-enough-length"]);
        let made_with_old = srs(&old).forward(&addr("alice@example.com"), DAY).unwrap();
        let rotated = config(&["new-secret-of-enough-length", "old-secret-of-enough-length"]);
        let s = srs(&rotated);
        assert_eq!(
            s.reverse(&made_with_old, DAY).unwrap(),
            addr("alice@example.com")
        );
        let made_with_new = s.forward(&addr("alice@example.com"), DAY).unwrap();
        assert_ne!(made_with_new, made_with_old);
        assert_eq!(
            srs(&old).reverse(&made_with_new, DAY),
            Err(Invalid::BadHash)
        );
    }

    #[test]
    fn srs1_chains() {
        // A forwards alice's mail to B, B forwards it to C (us, then someone else).
        let a_cfg = SrsConfig {
            domain: "a.test".into(),
            ..config(&["secret-of-forwarder-a-1"])
        };
        let b_cfg = SrsConfig {
            domain: "b.test".into(),
            ..config(&["secret-of-forwarder-b-1"])
        };
        let c_cfg = config(&["secret-of-forwarder-c-1"]);
        let (a, b, c) = (srs(&a_cfg), srs(&b_cfg), srs(&c_cfg));
        let at_a = a.forward(&addr("alice@example.com"), DAY).unwrap();
        let at_b = b.forward(&at_a, DAY).unwrap();
        let text = at_b.to_string();
        let srs0_part = &at_a.local_part()[4..];
        assert!(
            text.starts_with("SRS1=") && text.ends_with(&format!("=a.test={srs0_part}@b.test")),
            "{text} from {at_a}"
        );
        assert!(text.contains("=a.test==")); // the SRS0 part keeps its separator
                                             // C forwards again: still the first forwarder's part, under C's hash.
        let at_c = c.forward(&at_b, DAY).unwrap();
        assert!(
            at_c.to_string()
                .ends_with(&format!("=a.test={srs0_part}@fwd.tern.test")),
            "{at_c}"
        );
        // A bounce to C goes to A's SRS0 address; A routes it to alice.
        assert_eq!(c.reverse(&at_c, DAY).unwrap(), at_a);
        assert_eq!(b.reverse(&at_b, DAY).unwrap(), at_a);
        assert_eq!(a.reverse(&at_a, DAY).unwrap(), addr("alice@example.com"));
        // SRS1 is checked too.
        let forged = at_c.to_string().replace("=a.test=", "=evil.test=");
        assert_eq!(c.reverse(&addr(&forged), DAY), Err(Invalid::BadHash));
        // Lower-cased on the way, still ours.
        let lower = addr(&at_c.to_string().to_lowercase());
        assert_eq!(
            c.reverse(&lower, DAY).unwrap().to_string().to_lowercase(),
            at_a.to_string().to_lowercase()
        );
    }

    #[test]
    fn quoted_local_parts_and_limits() {
        let cfg = config(&["a-secret-of-enough-length"]);
        let s = srs(&cfg);
        let quoted = addr("\"john doe\"@example.com");
        let fwd = s.forward(&quoted, DAY).unwrap();
        assert!(fwd.to_string().starts_with("\"SRS0="), "{fwd}");
        assert_eq!(s.reverse(&addr(&fwd.to_string()), DAY).unwrap(), quoted);
        // 14 octets of SRS0 framing + domain + local part over 64: not rewritten.
        let long = addr(&format!("{}@example.com", "x".repeat(40)));
        assert_eq!(s.forward(&long, DAY), None);
        let fits = addr(&format!("{}@example.com", "x".repeat(39)));
        assert!(s.forward(&fits, DAY).is_some());
    }

    #[test]
    fn only_our_domain_and_tags_are_ours() {
        let cfg = config(&["a-secret-of-enough-length"]);
        let s = srs(&cfg);
        assert!(!s.is_ours(&addr("alice@fwd.tern.test")));
        assert!(!s.is_ours(&addr("SRS0=abcd=RA=example.com=alice@elsewhere.test")));
        assert!(!s.is_ours(&addr("SRS2=abcd=RA=example.com=alice@fwd.tern.test")));
        assert!(s.is_ours(&addr("srs0+abcd=RA=example.com=alice@FWD.tern.test.")));
    }
}
