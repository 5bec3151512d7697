//! The DNS checks: MX, A/AAAA, PTR (FCrDNS), SPF, DKIM and DMARC records of the domain and the
//! hostname. Every lookup is bounded ([`bounded`]); one that gets no answer makes its check a
//! warning that quotes the error, never a failure (the record may well be right) nor a hang.

use std::future::Future;
use std::net::IpAddr;

use serde_json::json;
use tern_auth::verify::ResolverSettings;
use tern_auth::{check_record, AuthResult, DkimRecord, PrivateKey, RecordCheck, Verifier};
use tern_dns::{reverse_name, DnsError};

use super::{join, Check, Context, Status, LOOKUP_DEADLINE, QUERY_TIMEOUT};

/// Runs one lookup under [`LOOKUP_DEADLINE`]; running out of time is a temporary failure.
pub(super) async fn bounded<T>(
    lookup: impl Future<Output = Result<T, DnsError>>,
    name: &str,
) -> Result<T, DnsError> {
    match tokio::time::timeout(LOOKUP_DEADLINE, lookup).await {
        Ok(result) => result,
        Err(_) => Err(DnsError::Temporary {
            name: name.to_string(),
            reason: format!("no answer within {}s", LOOKUP_DEADLINE.as_secs()),
        }),
    }
}

/// The warning for a lookup that got no answer.
fn unanswered(id: &'static str, what: &str, e: &DnsError) -> Check {
    Check::new(id, Status::Warn, format!("cannot tell: {what}: {e}")).fix(
        "check that the resolver ([dns] nameservers, else /etc/resolv.conf) answers, then run tern doctor again",
    )
}

fn is_nx(e: &DnsError) -> bool {
    matches!(e, DnsError::NxDomain(_))
}

/// `mx`: mail for the domain comes here. RFC 5321 5.1: the MX hosts, or the domain's own
/// address when it has no MX (implicit MX, which works but is fragile); a null MX (RFC 7505)
/// refuses all mail.
pub(super) async fn mx(ctx: &Context) -> Check {
    const ID: &str = "mx";
    let domain = &ctx.domain;
    let publish = format!("publish: {domain}. IN MX 10 {}.", ctx.hostname);
    let records = match bounded(ctx.resolver.mx(domain), domain).await {
        Ok(r) => r,
        Err(e) if is_nx(&e) => {
            return Check::new(
                ID,
                Status::Fail,
                format!("{domain} does not exist in the DNS"),
            )
            .fix(publish)
        }
        Err(e) => return unanswered(ID, &format!("MX of {domain}"), &e),
    };
    let hosts: Vec<String> = records.iter().map(|r| r.exchange.clone()).collect();
    if records.is_empty() {
        let ips = bounded(ctx.resolver.ips(domain), domain)
            .await
            .unwrap_or_default();
        if ips.iter().any(|ip| ctx.ips.contains(ip)) {
            return Check::new(
                ID,
                Status::Warn,
                format!("{domain} has no MX record; mail reaches this host only through its A/AAAA record (implicit MX)"),
            )
            .fix(publish);
        }
        return Check::new(ID, Status::Fail, format!("{domain} has no MX record")).fix(publish);
    }
    if records.len() == 1 && records[0].exchange.is_empty() {
        return Check::new(
            ID,
            Status::Fail,
            format!("{domain} publishes a null MX (RFC 7505): it accepts no mail at all"),
        )
        .fix(format!("replace the \"0 .\" MX with: {publish}"));
    }
    let details = json!({ "mx": records.iter().map(|r| json!({"preference": r.preference, "host": r.exchange})).collect::<Vec<_>>() });
    if let Some(r) = records
        .iter()
        .find(|r| r.exchange.eq_ignore_ascii_case(&ctx.hostname))
    {
        return Check::new(
            ID,
            Status::Ok,
            format!("{domain} MX {} {} is this host", r.preference, r.exchange),
        )
        .details(details);
    }
    // A different name that resolves here is fine too (a CNAME-free alias of this host).
    for r in &records {
        if let Ok(ips) = bounded(ctx.resolver.ips(&r.exchange), &r.exchange).await {
            if let Some(ip) = ips.iter().find(|ip| ctx.ips.contains(ip)) {
                return Check::new(
                    ID,
                    Status::Ok,
                    format!(
                        "{domain} MX {} {} resolves to this host ({ip})",
                        r.preference, r.exchange
                    ),
                )
                .details(details);
            }
        }
    }
    Check::new(
        ID,
        Status::Fail,
        format!(
            "{domain}'s MX hosts ({}) are neither {} nor resolve to this host ({})",
            hosts.join(", "),
            ctx.hostname,
            if ctx.ips.is_empty() {
                "no address known".to_string()
            } else {
                join(&ctx.ips)
            }
        ),
    )
    .fix(publish)
    .details(details)
}

/// `a`: the hostname resolves, to this host's addresses.
pub(super) async fn a(ctx: &Context) -> Check {
    const ID: &str = "a";
    let host = &ctx.hostname;
    let publish = if ctx.ips.is_empty() {
        format!("publish: {host}. IN A <this host's public IPv4> (and AAAA for IPv6)")
    } else {
        ctx.ips
            .iter()
            .map(|ip| {
                let t = if ip.is_ipv4() { "A" } else { "AAAA" };
                format!("publish: {host}. IN {t} {ip}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ips = match bounded(ctx.resolver.ips(host), host).await {
        Ok(ips) if !ips.is_empty() => ips,
        Ok(_) => {
            return Check::new(ID, Status::Fail, format!("{host} has no A or AAAA record"))
                .fix(publish)
        }
        Err(e) if is_nx(&e) => {
            return Check::new(
                ID,
                Status::Fail,
                format!("{host} does not exist in the DNS"),
            )
            .fix(publish)
        }
        Err(e) => return unanswered(ID, &format!("A/AAAA of {host}"), &e),
    };
    let details = json!({ "addresses": ips.iter().map(ToString::to_string).collect::<Vec<_>>() });
    let missing: Vec<IpAddr> = ctx
        .ips
        .iter()
        .filter(|ip| !ips.contains(ip))
        .copied()
        .collect();
    if ctx.ips.is_empty() {
        return Check::new(ID, Status::Ok, format!("{host} resolves to {}", join(&ips)))
            .details(details);
    }
    if missing.is_empty() {
        Check::new(ID, Status::Ok, format!("{host} resolves to {}", join(&ips))).details(details)
    } else {
        Check::new(
            ID,
            Status::Fail,
            format!(
                "{host} resolves to {}, not to this host's {}",
                join(&ips),
                join(&missing)
            ),
        )
        .fix(publish)
        .details(details)
    }
}

/// What the PTR of one address says.
enum Ptr {
    /// PTR names the EHLO name and that name resolves back to the address.
    Confirmed,
    Problem(Status, String),
}

/// `ptr`: forward-confirmed reverse DNS (FCrDNS) for every host address: its PTR names the EHLO
/// name, and that name resolves back to the address. Receivers (Gmail, Microsoft; M3AAWG's
/// outbound practices) refuse or junk mail from addresses without it.
pub(super) async fn ptr(ctx: &Context) -> Check {
    const ID: &str = "ptr";
    // Receivers compare the PTR with the name we give in EHLO: [outbound] helo_name.
    let name = ctx
        .cfg
        .outbound
        .helo_name
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if ctx.ips.is_empty() {
        return Check::new(
            ID,
            Status::Skip,
            "no address of this host is known (give --ip ADDR)",
        );
    }
    let mut worst = Status::Ok;
    let mut lines = Vec::new();
    let mut details = Vec::new();
    for ip in &ctx.ips {
        let (verdict, names) = ptr_of(ctx, *ip, &name).await;
        details.push(json!({"ip": ip.to_string(), "ptr": names}));
        match verdict {
            Ptr::Confirmed => lines.push(format!("{ip} -> {name} -> {ip}")),
            Ptr::Problem(s, why) => {
                worst = worst.max(s);
                lines.push(why);
            }
        }
    }
    let fix = format!(
        "ask whoever owns the address (hosting provider, ISP) to set its reverse DNS (PTR) to {name}, and keep {name}'s A/AAAA pointing at it"
    );
    let check = Check::new(ID, worst, lines.join("; ")).details(json!(details));
    if worst == Status::Ok {
        check
    } else {
        check.fix(fix)
    }
}

async fn ptr_of(ctx: &Context, ip: IpAddr, name: &str) -> (Ptr, Vec<String>) {
    let rev = reverse_name(ip);
    let names = match bounded(ctx.resolver.ptr(ip), &rev).await {
        Ok(n) => n,
        Err(e) if is_nx(&e) => {
            return (
                Ptr::Problem(Status::Fail, format!("{ip} has no PTR record ({rev})")),
                Vec::new(),
            )
        }
        Err(e) => {
            return (
                Ptr::Problem(Status::Warn, format!("cannot tell the PTR of {ip}: {e}")),
                Vec::new(),
            )
        }
    };
    if names.is_empty() {
        return (
            Ptr::Problem(Status::Fail, format!("{ip} has no PTR record ({rev})")),
            names,
        );
    }
    if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return (
            Ptr::Problem(
                Status::Fail,
                format!("the PTR of {ip} is {}, not {name}", names.join(", ")),
            ),
            names,
        );
    }
    match bounded(ctx.resolver.ips(name), name).await {
        Ok(back) if back.contains(&ip) => (Ptr::Confirmed, names),
        Ok(back) => (
            Ptr::Problem(
                Status::Fail,
                format!(
                    "{ip}'s PTR {name} resolves to {}, not back to {ip} (FCrDNS fails)",
                    if back.is_empty() {
                        "nothing".to_string()
                    } else {
                        join(&back)
                    }
                ),
            ),
            names,
        ),
        Err(e) if is_nx(&e) => (
            Ptr::Problem(
                Status::Fail,
                format!("{ip}'s PTR {name} does not exist in the DNS (FCrDNS fails)"),
            ),
            names,
        ),
        Err(e) => (
            Ptr::Problem(Status::Warn, format!("cannot resolve {name} back: {e}")),
            names,
        ),
    }
}

/// `spf`: the domain's SPF record authorizes every host address (RFC 7208), evaluated by the
/// verifier tern's listener uses, for `postmaster@DOMAIN` sent from each address.
pub(super) async fn spf(ctx: &Context) -> Check {
    const ID: &str = "spf";
    let domain = &ctx.domain;
    if ctx.ips.is_empty() {
        return Check::new(
            ID,
            Status::Skip,
            "no address of this host is known (give --ip ADDR)",
        );
    }
    let mut settings = ResolverSettings::new(ctx.cfg.dns.nameservers.clone());
    settings.query_timeout = QUERY_TIMEOUT;
    settings.deadline = LOOKUP_DEADLINE;
    let verifier = match Verifier::new(&settings, tern_config::defaults::CHECKS, &ctx.hostname) {
        Ok(v) => v,
        Err(e) => return Check::new(ID, Status::Warn, format!("cannot tell: {e}")),
    };
    let from = format!("postmaster@{domain}");
    let helo = ctx.cfg.outbound.helo_name.clone();
    let mut worst = Status::Ok;
    let mut lines = Vec::new();
    let mut details = Vec::new();
    for ip in &ctx.ips {
        let outcome = match tokio::time::timeout(
            LOOKUP_DEADLINE * 2,
            verifier.spf(*ip, &helo, &from),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => {
                worst = worst.max(Status::Warn);
                lines.push(format!("{ip}: no answer in time"));
                continue;
            }
        };
        let status = match outcome.result {
            AuthResult::Pass => Status::Ok,
            AuthResult::SoftFail | AuthResult::Neutral | AuthResult::TempError => Status::Warn,
            AuthResult::Fail | AuthResult::None | AuthResult::PermError => Status::Fail,
        };
        worst = worst.max(status);
        let why = outcome
            .explanation
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        lines.push(format!("{ip}: {}{why}", outcome.result));
        details.push(json!({"ip": ip.to_string(), "result": outcome.result.to_string(), "explanation": outcome.explanation}));
    }
    let message = format!("SPF of {domain} for {}", lines.join("; "));
    let check = Check::new(ID, worst, message).details(json!(details));
    if worst == Status::Ok {
        return check;
    }
    let mechanisms: Vec<String> = ctx
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("ip4:{v4}"),
            IpAddr::V6(v6) => format!("ip6:{v6}"),
        })
        .collect();
    check.fix(format!(
        "publish (or add the mechanisms to your record): {domain}. IN TXT \"v=spf1 mx {} -all\"",
        mechanisms.join(" ")
    ))
}

/// `dkim`: each `[[dkim]]` key's record is published and matches the private key (what `tern
/// dkim check` does, for every key).
pub(super) async fn dkim(ctx: &Context) -> Check {
    const ID: &str = "dkim";
    if ctx.cfg.dkim.is_empty() {
        return Check::new(
            ID,
            Status::Skip,
            "no [[dkim]] keys: outgoing mail is not signed (Gmail and Yahoo require DKIM or SPF alignment from bulk senders)",
        )
        .fix("tern dkim keygen --domain DOMAIN --selector SELECTOR --out KEY, publish the record it prints, add the [[dkim]] entry");
    }
    let mut worst = Status::Ok;
    let mut lines = Vec::new();
    let mut fixes = Vec::new();
    let mut details = Vec::new();
    for entry in &ctx.cfg.dkim {
        let key = match PrivateKey::load(&entry.key_file) {
            Ok(k) => k,
            Err(e) => {
                worst = Status::Fail;
                lines.push(format!("{}/{}: {e}", entry.domain, entry.selector));
                fixes.push(format!(
                    "make {} readable by tern, or generate a new key with tern dkim keygen",
                    entry.key_file.display()
                ));
                continue;
            }
        };
        let expected = DkimRecord::new(&entry.domain, &entry.selector, &key);
        let records = match bounded(ctx.resolver.txt(&expected.name), &expected.name).await {
            Ok(r) => r,
            Err(e) if is_nx(&e) => Vec::new(),
            Err(e) => {
                worst = worst.max(Status::Warn);
                lines.push(format!("cannot tell for {}: {e}", expected.name));
                continue;
            }
        };
        let (status, line) = match check_record(&key, &records) {
            RecordCheck::Matches => (
                Status::Ok,
                format!("{} publishes the key ({})", expected.name, key.key_type()),
            ),
            RecordCheck::Missing => (Status::Fail, format!("no DKIM record at {}", expected.name)),
            RecordCheck::Mismatch(why) => (
                Status::Fail,
                format!(
                    "the record at {} is not the key of {} ({})",
                    expected.name,
                    entry.key_file.display(),
                    why.join("; ")
                ),
            ),
        };
        if status == Status::Fail {
            fixes.push(format!("publish: {}", expected.zone_line()));
        }
        details.push(json!({"name": expected.name, "ok": status == Status::Ok}));
        worst = worst.max(status);
        lines.push(line);
    }
    let check = Check::new(ID, worst, lines.join("; ")).details(json!(details));
    if fixes.is_empty() {
        check
    } else {
        check.fix(fixes.join("\n"))
    }
}

/// `dmarc`: `_dmarc.DOMAIN` publishes one `v=DMARC1` record (RFC 7489 6.1, 6.6.3: more than
/// one is as good as none); `p=none` only monitors, so it is a warning.
pub(super) async fn dmarc(ctx: &Context) -> Check {
    const ID: &str = "dmarc";
    let name = format!("_dmarc.{}", ctx.domain);
    let publish = format!(
        "publish: {name}. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{}\"",
        ctx.domain
    );
    let records = match bounded(ctx.resolver.txt(&name), &name).await {
        Ok(r) => r,
        Err(e) if is_nx(&e) => Vec::new(),
        Err(e) => return unanswered(ID, &format!("TXT of {name}"), &e),
    };
    let dmarc: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r).trim().to_string())
        .filter(|r| is_dmarc(r))
        .collect();
    match dmarc.as_slice() {
        [] => Check::new(
            ID,
            Status::Fail,
            format!("no DMARC record at {name} (Gmail and Yahoo require one from bulk senders)"),
        )
        .fix(publish),
        [one] => {
            let details = json!({ "record": one });
            match policy(one).as_deref() {
                Some("reject") | Some("quarantine") => Check::new(
                    ID,
                    Status::Ok,
                    format!("{name}: {one}"),
                )
                .details(details),
                Some("none") => Check::new(
                    ID,
                    Status::Warn,
                    format!("{name} has p=none: receivers only report, never act on spoofed mail"),
                )
                .fix("once the reports show your own mail passing, raise the policy to p=quarantine, then p=reject")
                .details(details),
                Some(other) => Check::new(
                    ID,
                    Status::Fail,
                    format!("{name} has an unknown policy p={other} (RFC 7489 6.3: none, quarantine or reject)"),
                )
                .fix(publish)
                .details(details),
                None => Check::new(
                    ID,
                    Status::Fail,
                    format!("{name} has no p= tag (RFC 7489 6.3: it is required)"),
                )
                .fix(publish)
                .details(details),
            }
        }
        many => Check::new(
            ID,
            Status::Fail,
            format!(
                "{name} has {} DMARC records; receivers then apply none (RFC 7489 6.6.3)",
                many.len()
            ),
        )
        .fix(format!("keep exactly one; {publish}")),
    }
}

/// RFC 7489 6.4: `v=DMARC1` must be the first tag.
fn is_dmarc(record: &str) -> bool {
    let first = record.split(';').next().unwrap_or("");
    let mut kv = first.splitn(2, '=');
    matches!(
        (kv.next().map(str::trim), kv.next().map(str::trim)),
        (Some(k), Some(v)) if k.eq_ignore_ascii_case("v") && v == "DMARC1"
    )
}

fn policy(record: &str) -> Option<String> {
    record.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("p")
            .then(|| v.trim().to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmarc_records_are_recognized_by_their_first_tag() {
        assert!(is_dmarc("v=DMARC1; p=reject"));
        assert!(is_dmarc("v = DMARC1"));
        assert!(!is_dmarc("p=reject; v=DMARC1"));
        assert!(!is_dmarc("v=spf1 -all"));
        assert_eq!(
            policy("v=DMARC1; p=Reject; rua=mailto:x@y").as_deref(),
            Some("reject")
        );
        assert_eq!(policy("v=DMARC1; sp=none"), None);
    }
}
