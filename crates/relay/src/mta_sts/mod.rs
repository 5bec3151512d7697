//! RFC 8461 MTA-STS for MX delivery: the `_mta-sts.<domain>` TXT record says a policy exists
//! (and its `id`), the policy itself comes over HTTPS from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` with a verified certificate, and is kept
//! in memory for its `max_age` (refetched when the TXT `id` changes; a cached, unexpired policy
//! is used when the record or the fetch fails). The cache is in memory and on disk under
//! `<data_dir>/mta-sts/` ([`disk`]), so a restart keeps every policy until its `max_age`.
//!
//! [`crate::connector`] applies the policy: under `enforce` only MX hosts matching an `mx`
//! pattern are used, over TLS with a certificate verified for the MX name; `testing` delivers
//! as before and logs what would have failed; `none` is no policy.
//!
//! `policy` parses records and policies (no I/O), `fetch` gets a policy over HTTPS, and this
//! module keeps the cache and answers [`policy_for`].

mod disk;
mod fetch;
mod policy;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tern_config::Config;
use tern_dns::{DnsError, Resolver};

pub use fetch::fetch;

/// The HTTPS client configuration of policy fetches (webpki roots and
/// `outbound.mta_sts_ca_file`), for TLS-RPT's `https:` reports too.
pub(crate) fn https_client_config(
    cfg: &Config,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    fetch::tls_config(cfg)
}

/// A policy as lines (TLS-RPT's `policy-string`), rebuilt from the parsed policy: the same
/// fields, normalized (mx patterns lower case, max_age capped).
pub fn policy_lines(p: &Policy) -> Vec<String> {
    let mut lines = vec!["version: STSv1".to_string(), format!("mode: {}", p.mode)];
    lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
    lines.push(format!("max_age: {}", p.max_age.as_secs()));
    lines
}
pub use policy::{mx_matches, parse_policy, parse_txt, Applied, Mode, Policy, Txt, MAX_AGE_CAP};

/// The `_mta-sts` TXT lookup.
const TXT_TIMEOUT: Duration = Duration::from_secs(10);
/// Domains whose policy is kept at most; past this, expired entries are dropped first, then all.
const MAX_CACHED: usize = 10_000;

struct Cached {
    id: String,
    policy: Policy,
    expires: Instant,
}

/// Per process (see the module comment), keyed by the lower-case domain.
static CACHE: LazyLock<Mutex<HashMap<String, Cached>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn cache() -> std::sync::MutexGuard<'static, HashMap<String, Cached>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

fn cached(domain: &str) -> Option<(String, Policy)> {
    let map = cache();
    let c = map.get(domain)?;
    (c.expires > Instant::now()).then(|| (c.id.clone(), c.policy.clone()))
}

/// Keeps `policy` in memory for `left` (its `max_age` when just fetched).
fn store(domain: &str, id: &str, policy: &Policy, left: Duration) {
    let mut map = cache();
    if map.len() >= MAX_CACHED {
        let now = Instant::now();
        map.retain(|_, c| c.expires > now);
        if map.len() >= MAX_CACHED {
            map.clear();
        }
    }
    map.insert(
        domain.to_string(),
        Cached {
            id: id.to_string(),
            policy: policy.clone(),
            expires: Instant::now() + left,
        },
    );
}

/// A policy cached on disk by an earlier run (or another process), put into memory for the
/// time it has left.
fn from_disk(cfg: &Config, domain: &str) -> Option<(String, Policy)> {
    let (id, policy, expires) = disk::load(&cfg.data_dir, domain)?;
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    store(domain, &id, &policy, left);
    tracing::debug!(domain = %domain, id = %id, "relay: MTA-STS policy from the disk cache");
    Some((id, policy))
}

/// The policy that applies to MX delivery to `domain` now (mode enforce or testing), or None:
/// MTA-STS is off, the domain has no policy (or a `none` one), or none could be had and none is
/// cached.
pub async fn policy_for(cfg: &Config, resolver: &dyn Resolver, domain: &str) -> Option<Applied> {
    if !cfg.outbound.mta_sts || domain.starts_with('[') || domain.is_empty() {
        return None;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let policy = lookup(cfg, resolver, &domain).await?;
    (policy.mode != Mode::None).then_some(Applied { domain, policy })
}

async fn lookup(cfg: &Config, resolver: &dyn Resolver, domain: &str) -> Option<Policy> {
    let name = format!("_mta-sts.{domain}");
    let txt = match tokio::time::timeout(TXT_TIMEOUT, resolver.txt(&name)).await {
        Ok(Ok(records)) => parse_txt(&records),
        Ok(Err(DnsError::NxDomain(_))) => Txt::Absent("no record".into()),
        Ok(Err(e)) => Txt::Unknown(e.to_string()),
        Err(_) => Txt::Unknown("timed out".into()),
    };
    let have = cached(domain).or_else(|| from_disk(cfg, domain));
    let id = match txt {
        Txt::Id(id) => id,
        // RFC 8461 5.1: without a (readable) record, a cached policy still applies until it
        // expires; a domain that drops MTA-STS publishes mode none first (RFC 8461 8.3).
        Txt::Absent(why) | Txt::Unknown(why) => {
            if have.is_some() {
                tracing::debug!(domain = %domain, reason = %why,
                    "relay: no MTA-STS record; using the cached policy");
            }
            return have.map(|(_, p)| p);
        }
    };
    if let Some((cached_id, p)) = &have {
        if *cached_id == id {
            return Some(p.clone());
        }
    }
    match fetch(cfg, resolver, domain).await {
        Ok(policy) => {
            tracing::info!(domain = %domain, id = %id, mode = %policy.mode,
                mx = %policy.patterns(), max_age = policy.max_age.as_secs(),
                "relay: MTA-STS policy fetched");
            store(domain, &id, &policy, policy.max_age);
            let expires = std::time::SystemTime::now() + policy.max_age;
            disk::save(&cfg.data_dir, domain, &id, &policy, expires);
            Some(policy)
        }
        Err(e) => {
            tracing::warn!(domain = %domain, error = %e, cached = have.is_some(),
                "relay: cannot fetch the MTA-STS policy");
            if have.is_none() {
                crate::tls_rpt::sts_unavailable(domain, &e);
            }
            have.map(|(_, p)| p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_parses() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, Duration::from_secs(604800));
        let t =
            parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 86400\nfoo: bar\n")
                .unwrap();
        assert_eq!(t.mode, Mode::Testing);
        let n = parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").unwrap();
        assert_eq!((n.mode, n.mx.len()), (Mode::None, 0));
    }

    #[test]
    fn max_age_is_capped_and_repeats_keep_the_first() {
        let p = parse_policy(
            "version: STSv1\nmode: testing\nmode: enforce\nmx: a.test\nmax_age: 9999999999\n",
        )
        .unwrap();
        assert_eq!(p.max_age, Duration::from_secs(MAX_AGE_CAP));
        assert_eq!(p.mode, Mode::Testing);
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, why) in [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "no version"),
            (
                "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
                "unsupported version",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", "no max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
                "invalid max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n",
                "invalid max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
                "invalid mx",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1\n",
                "invalid mx",
            ),
            ("version: STSv1\nmode\n", "without \":\""),
            ("<html>hello</html>\n", "without \":\""),
        ] {
            let e = parse_policy(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn mx_patterns_match_one_label_wildcards() {
        assert!(mx_matches("mail.example.com", "mail.example.com"));
        assert!(mx_matches("mail.example.com", "MAIL.Example.com."));
        assert!(!mx_matches("mail.example.com", "mx.example.com"));
        assert!(mx_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_matches("*.example.com", ".example.com"));
        assert!(!mx_matches("*.example.com", "mx1.example.com.evil.test"));
        assert!(!mx_matches("", "example.com"));
        let p = parse_policy("version: STSv1\nmode: enforce\nmx: *.remote.test\nmax_age: 60\n")
            .unwrap();
        assert!(p.allows("mx.remote.test"));
        assert!(!p.allows("mx.other.test"));
    }

    #[test]
    fn txt_records_need_exactly_one_sts_record_with_an_id() {
        let rec = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            parse_txt(&[rec("v=STSv1; id=20260101T000000;")]),
            Txt::Id("20260101T000000".into())
        );
        assert_eq!(
            parse_txt(&[rec("v=spf1 -all"), rec("v=STSv1;id=abc")]),
            Txt::Id("abc".into())
        );
        assert!(matches!(parse_txt(&[]), Txt::Absent(_)));
        assert!(matches!(
            parse_txt(&[rec("v=STSv1; id=a;"), rec("v=STSv1; id=b;")]),
            Txt::Absent(_)
        ));
        assert!(matches!(
            parse_txt(&[rec("v=STSv1; foo=bar")]),
            Txt::Absent(_)
        ));
        assert!(matches!(
            parse_txt(&[rec("v=STSv1; id=a-b")]),
            Txt::Absent(_)
        ));
        assert!(matches!(
            parse_txt(&[rec("v=STSv1; id=123456789012345678901234567890123")]),
            Txt::Absent(_)
        ));
        assert!(matches!(
            parse_txt(&[rec("v=STSv10; id=a")]),
            Txt::Absent(_)
        ));
    }

    #[test]
    fn off_or_no_record_is_no_policy() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let on = Config::from_toml_str("", std::path::Path::new("t.toml")).unwrap();
        let r = tern_dns::StaticResolver::new().ip("x.test", "192.0.2.1".parse().unwrap());
        assert!(rt.block_on(policy_for(&on, &r, "x.test")).is_none());
        assert!(rt.block_on(policy_for(&on, &r, "[192.0.2.1]")).is_none());
        let off = Config::from_toml_str(
            "[outbound]\nmta_sts = false\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let r = tern_dns::StaticResolver::new().txt("_mta-sts.y.test", "v=STSv1; id=1;");
        assert!(rt.block_on(policy_for(&off, &r, "y.test")).is_none());
        // A record but a policy that cannot be fetched (no address) and nothing cached: none.
        assert!(rt.block_on(policy_for(&on, &r, "y.test")).is_none());
    }

    #[test]
    fn the_cache_serves_the_same_id_and_outlives_a_missing_record() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = Config::from_toml_str("", std::path::Path::new("t.toml")).unwrap();
        let p = parse_policy("version: STSv1\nmode: enforce\nmx: mx.cached.test\nmax_age: 600\n")
            .unwrap();
        store("cached.test", "v1", &p, p.max_age);
        // Same id: no fetch (which would fail here: mta-sts.cached.test has no address).
        let r = tern_dns::StaticResolver::new().txt("_mta-sts.cached.test", "v=STSv1; id=v1;");
        let got = rt.block_on(policy_for(&cfg, &r, "cached.test")).unwrap();
        assert_eq!(got.policy, p);
        // The record gone or the DNS failing: the cached policy still applies.
        let none = tern_dns::StaticResolver::new();
        assert!(rt
            .block_on(policy_for(&cfg, &none, "cached.test"))
            .is_some());
        let failing = tern_dns::StaticResolver::new().servfail("_mta-sts.cached.test");
        assert!(rt
            .block_on(policy_for(&cfg, &failing, "cached.test"))
            .is_some());
        // A new id whose fetch fails: the cached one, until it expires.
        let r2 = tern_dns::StaticResolver::new().txt("_mta-sts.cached.test", "v=STSv1; id=v2;");
        assert!(rt.block_on(policy_for(&cfg, &r2, "cached.test")).is_some());
    }
}
