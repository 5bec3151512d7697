//! Validation: turns the raw TOML structs into a `Config`, collecting every problem with key path and fix.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::caps;
use crate::defaults;
use crate::error::{quote_key, Issue, Issues};
use crate::fields::{at, domain_name, duration, file_fix};
use crate::milters::MilterAddress;
use crate::password;
use crate::raw::{OneOrMany, RawConfig, RawDkim, RawRoute, RawTls, Size};
use crate::types::{
    BareLineEndings, ChecksConfig, Config, DkimConfig, DnsConfig, Limits, ListenerConfig,
    LmtpAddress, LocalConfig, LocalDelivery, LogConfig, LogFormat, MinDataRate, MinFreeSpace,
    OutboundConfig, QueueConfig, RelayConfig, Route, RouteAuth, TlsConfig, TlsPolicy, User,
    LOG_LEVELS,
};
use crate::values::{
    is_domain, normalize_domain, parse_host_port, parse_network, parse_size,
    parse_socket_addr_default_port, split_address,
};

type Text = Option<Spanned<String>>;
type TextList = Option<Spanned<Vec<Spanned<String>>>>;

/// Validates `raw` (parsed from `text`, which came from `origin`) into a `Config`.
pub(crate) fn build(raw: RawConfig, text: &str, origin: &Path) -> Result<Config, Vec<Issue>> {
    let mut v = Issues::new(text, origin);

    let hostname = match &raw.hostname {
        Some(h) => domain_name(&mut v, h, "hostname").unwrap_or_else(defaults::hostname),
        None => defaults::hostname(),
    };
    let data_dir = match &raw.data_dir {
        Some(d) if d.get_ref().trim().is_empty() => {
            v.add(
                at(d),
                "data_dir",
                "the path is empty",
                format!("name a directory, e.g. \"{}\"", defaults::DATA_DIR),
            );
            PathBuf::from(defaults::DATA_DIR)
        }
        Some(d) => PathBuf::from(d.get_ref()),
        None => PathBuf::from(defaults::DATA_DIR),
    };

    // Listeners. The AUTH policy lives in [submission] and applies wherever AUTH is offered.
    let require_tls_for_auth = flag(
        &raw.submission.require_tls_for_auth,
        defaults::REQUIRE_TLS_FOR_AUTH,
    );
    let enforce_sender = flag(&raw.submission.enforce_sender, defaults::ENFORCE_SENDER);
    // Likewise the DATA line-ending policy lives in [smtp] and applies to every listener.
    let bare_line_endings = bare_line_endings(&mut v, &raw.smtp.bare_line_endings);
    let listener = |listen| ListenerConfig {
        listen,
        require_tls_for_auth,
        enforce_sender,
        bare_line_endings,
    };
    let mut seen_addrs = HashMap::new();
    let smtp = listener(listen(
        &mut v,
        &raw.smtp.listen,
        "smtp.listen",
        vec![defaults::SMTP_LISTEN],
        &mut seen_addrs,
    ));
    let submission = listener(listen(
        &mut v,
        &raw.submission.listen,
        "submission.listen",
        Vec::new(),
        &mut seen_addrs,
    ));
    let submissions = listener(listen(
        &mut v,
        &raw.submissions.listen,
        "submissions.listen",
        Vec::new(),
        &mut seen_addrs,
    ));

    let tls = raw.tls.as_ref().map(|t| tls(&mut v, t));
    check_listeners(
        &mut v,
        &raw,
        &smtp,
        &submission,
        &submissions,
        tls.is_some(),
        require_tls_for_auth,
    );

    let limits = limits(&mut v, &raw);
    let users = users(&mut v, &raw);

    let domains = match &raw.local.domains {
        Some(list) => {
            let mut domains: Vec<String> = Vec::new();
            for (i, d) in list.get_ref().iter().enumerate() {
                if let Some(d) = domain_name(&mut v, d, &format!("local.domains[{i}]")) {
                    if !domains.contains(&d) {
                        domains.push(d);
                    }
                }
            }
            domains
        }
        None => defaults::local_domains(&hostname),
    };
    let qualify_domain = match &raw.local.qualify_domain {
        Some(d) => {
            domain_name(&mut v, d, "local.qualify_domain").unwrap_or_else(|| hostname.clone())
        }
        None => hostname.clone(),
    };
    let local = LocalConfig {
        qualify_domain,
        catch_all: flag(
            &raw.local.catch_all,
            defaults::catch_all(!raw.users.is_empty()),
        ),
        vrfy: flag(&raw.local.vrfy, defaults::VRFY),
        expn: flag(&raw.local.expn, defaults::EXPN),
        delivery: local_delivery(&mut v, "local", &raw.local.delivery, &raw.local.lmtp),
        per_domain: local_per_domain(&mut v, &raw.local.per_domain, &domains),
        domains,
    };
    check_user_domains(&mut v, &raw, &users, &local.domains);
    let aliases = aliases(&mut v, &raw.aliases, &local.domains);

    let trusted_networks = match &raw.relay.trusted_networks {
        Some(list) => list
            .get_ref()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let parsed = parse_network(n.get_ref());
                if parsed.is_none() {
                    v.add(
                        at(n),
                        format!("relay.trusted_networks[{i}]"),
                        format!("invalid network \"{}\"", n.get_ref()),
                        "write a CIDR such as \"192.0.2.0/24\" or \"2001:db8::/32\", or a single address such as \"192.0.2.1\"",
                    );
                }
                parsed
            })
            .collect(),
        None => defaults::trusted_networks(),
    };

    let routes = routes(&mut v, &raw.routes);

    let nameservers = match &raw.dns.nameservers {
        Some(list) => list
            .get_ref()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let parsed = parse_socket_addr_default_port(n.get_ref(), defaults::DNS_PORT).filter(|a| a.port() != 0);
                if parsed.is_none() {
                    v.add(
                        at(n),
                        format!("dns.nameservers[{i}]"),
                        format!("invalid nameserver \"{}\"", n.get_ref()),
                        "write an IP address with an optional port, e.g. \"127.0.0.1\", \"127.0.0.1:5353\" or \"[::1]:53\"",
                    );
                }
                parsed
            })
            .collect(),
        None => Vec::new(),
    };

    let dnssec_trust_anchor = raw
        .dns
        .dnssec_trust_anchor
        .as_ref()
        .map(|p| readable_file(&mut v, p, "dns.dnssec_trust_anchor"));

    let queue = queue(&mut v, &raw);
    let outbound = outbound(&mut v, &raw, &hostname);
    let log = log(&mut v, &raw);
    let dkim = dkim(&mut v, &raw);
    let checks = checks(&raw);
    let srs = crate::srs::srs(&mut v, &raw, &hostname);
    let milters = crate::milters::milters(&mut v, &raw);
    let admin = crate::admin::admin(&mut v, &raw);
    let tls_rpt = crate::tls_rpt::tls_rpt(&mut v, &raw, &outbound.helo_name);

    v.finish()?;
    Ok(Config {
        hostname,
        data_dir,
        smtp,
        submission,
        submissions,
        tls,
        limits,
        local,
        users,
        aliases,
        relay: RelayConfig { trusted_networks },
        routes,
        dns: DnsConfig {
            nameservers,
            dnssec_trust_anchor,
        },
        queue,
        outbound,
        log,
        dkim,
        checks,
        srs,
        milters,
        admin,
        tls_rpt,
        source: Some(origin.to_path_buf()),
    })
}

/// `[checks]`: six booleans; a wrong type is already a TOML error naming the key.
fn checks(raw: &RawConfig) -> ChecksConfig {
    let c = &raw.checks;
    let d = defaults::CHECKS;
    ChecksConfig {
        spf: flag(&c.spf, d.spf),
        dkim: flag(&c.dkim, d.dkim),
        dmarc: flag(&c.dmarc, d.dmarc),
        arc: flag(&c.arc, d.arc),
        dmarc_reject: flag(&c.dmarc_reject, d.dmarc_reject),
        spf_fail_reject: flag(&c.spf_fail_reject, d.spf_fail_reject),
    }
}

fn flag(value: &Option<Spanned<bool>>, default: bool) -> bool {
    value.as_ref().map_or(default, |b| *b.get_ref())
}

fn listen(
    v: &mut Issues,
    value: &TextList,
    key: &'static str,
    default: Vec<SocketAddr>,
    seen: &mut HashMap<SocketAddr, String>,
) -> Vec<SocketAddr> {
    let Some(list) = value else { return default };
    let mut addrs = Vec::new();
    for (i, item) in list.get_ref().iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Ok(addr) = item.get_ref().trim().parse::<SocketAddr>() else {
            v.add(
                at(item),
                item_key,
                format!("invalid listen address \"{}\"", item.get_ref()),
                "write IP:PORT such as \"0.0.0.0:25\", \"127.0.0.1:2525\" or \"[::]:25\" (host names are not allowed)",
            );
            continue;
        };
        // Port 0 asks the OS for a free port (tests); two of those never clash.
        if addr.port() != 0 {
            if let Some(first) = seen.get(&addr) {
                v.add(
                    at(item),
                    item_key,
                    format!("{addr} is already listed in {first}"),
                    "listen on each address only once",
                );
                continue;
            }
            seen.insert(addr, item_key);
        }
        addrs.push(addr);
    }
    addrs
}

fn check_listeners(
    v: &mut Issues,
    raw: &RawConfig,
    smtp: &ListenerConfig,
    submission: &ListenerConfig,
    submissions: &ListenerConfig,
    have_tls: bool,
    require_tls_for_auth: bool,
) {
    let span_of = |l: &TextList| l.as_ref().and_then(at);
    if smtp.listen.is_empty()
        && submission.listen.is_empty()
        && submissions.listen.is_empty()
        && raw
            .smtp
            .listen
            .as_ref()
            .is_some_and(|l| l.get_ref().is_empty())
    {
        v.add(
            span_of(&raw.smtp.listen),
            "smtp.listen",
            "no listener is configured: smtp.listen, submission.listen and submissions.listen are all empty",
            "add an address to smtp.listen (e.g. [\"0.0.0.0:25\"]) or to submission.listen / submissions.listen",
        );
    }
    if !submissions.listen.is_empty() && !have_tls {
        v.add(
            span_of(&raw.submissions.listen),
            "submissions.listen",
            "implicit TLS (RFC 8314) needs a certificate, but there is no [tls] table",
            "add [tls] with cert and key, or set submissions.listen = []",
        );
    }
    if !submission.listen.is_empty() && !have_tls && require_tls_for_auth {
        v.add(
            span_of(&raw.submission.listen),
            "submission.listen",
            "submission.require_tls_for_auth is true but there is no [tls] table, so no client could ever authenticate",
            "add [tls] with cert and key, or set submission.require_tls_for_auth = false (only for tests on loopback)",
        );
    }
}

fn tls(v: &mut Issues, value: &Spanned<RawTls>) -> TlsConfig {
    let t = value.get_ref();
    TlsConfig {
        cert: pem_file(
            v,
            &t.cert,
            "tls.cert",
            "-----BEGIN CERTIFICATE-----",
            "a PEM certificate chain",
        ),
        key: pem_file(
            v,
            &t.key,
            "tls.key",
            "PRIVATE KEY-----",
            "a PEM private key",
        ),
    }
}

/// Checks at load time that a PEM file exists, is readable and holds what it should, so a bad path
/// fails `tern check-config` instead of the first STARTTLS handshake.
fn pem_file(
    v: &mut Issues,
    value: &Spanned<String>,
    key: &str,
    marker: &str,
    what: &str,
) -> PathBuf {
    let path = PathBuf::from(value.get_ref());
    if value.get_ref().trim().is_empty() {
        v.add(
            at(value),
            key,
            "the path is empty",
            format!("name the file holding {what}"),
        );
        return path;
    }
    match crate::files::read_bounded(&path, crate::files::MAX_SMALL_FILE) {
        Err(e) => v.add(
            at(value),
            key,
            format!("cannot read \"{}\": {e}", path.display()),
            file_fix(&e),
        ),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            if !(text.contains("-----BEGIN") && text.contains(marker)) {
                v.add(
                    at(value),
                    key,
                    format!("\"{}\" does not contain {what} (no \"{marker}\" line)", path.display()),
                    "point tls.cert at the PEM full-chain certificate and tls.key at the PEM private key",
                );
            }
        }
    }
    path
}

/// `[[dkim]]`: every key's names checked here, its file readable and PEM-shaped (a missing key
/// is a start-up error, never a silently unsigned message); the key material itself is parsed
/// by the signer, which the server builds before it listens.
fn dkim(v: &mut Issues, raw: &RawConfig) -> Vec<DkimConfig> {
    let mut keys: Vec<DkimConfig> = Vec::new();
    for (i, entry) in raw.dkim.iter().enumerate() {
        let key = format!("dkim[{i}]");
        if let Some(config) = dkim_key(v, entry.get_ref(), &key) {
            if keys
                .iter()
                .any(|k| k.domain == config.domain && k.selector == config.selector)
            {
                v.add(
                    at(&entry.get_ref().selector),
                    format!("{key}.selector"),
                    format!(
                        "selector \"{}\" of domain \"{}\" is configured twice",
                        config.selector, config.domain
                    ),
                    "give each key of a domain its own selector (one DNS record per selector)",
                );
                continue;
            }
            keys.push(config);
        }
    }
    keys
}

fn dkim_key(v: &mut Issues, raw: &RawDkim, key: &str) -> Option<DkimConfig> {
    let domain = domain_name(v, &raw.domain, &format!("{key}.domain"));
    // RFC 6376 3.1: a selector is one or more dot-separated DNS labels.
    let selector = raw.selector.get_ref().trim().to_ascii_lowercase();
    let selector_ok = is_domain(&selector);
    if !selector_ok {
        v.add(
            at(&raw.selector),
            format!("{key}.selector"),
            format!("\"{}\" is not a valid selector", raw.selector.get_ref()),
            "use DNS labels of letters, digits and hyphens, e.g. \"s2026\"",
        );
    }
    let key_file = dkim_key_file(v, &raw.key_file, key, domain.as_deref(), &selector);
    let headers = match &raw.headers {
        None => Some(
            defaults::DKIM_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        ),
        Some(list) => dkim_headers(v, list, key),
    };
    Some(DkimConfig {
        domain: domain?,
        selector: selector_ok.then_some(selector)?,
        key_file: key_file?,
        headers: headers?,
        subdomains: flag(&raw.subdomains, defaults::DKIM_SUBDOMAINS),
    })
}

fn dkim_key_file(
    v: &mut Issues,
    value: &Spanned<String>,
    key: &str,
    domain: Option<&str>,
    selector: &str,
) -> Option<PathBuf> {
    let path = PathBuf::from(value.get_ref());
    let keygen = format!(
        "tern dkim keygen --domain {} --selector {} --out {}",
        domain.unwrap_or("DOMAIN"),
        if selector.is_empty() {
            "SELECTOR"
        } else {
            selector
        },
        if value.get_ref().trim().is_empty() {
            "FILE".to_string()
        } else {
            path.display().to_string()
        }
    );
    let problem = if value.get_ref().trim().is_empty() {
        "the path is empty".to_string()
    } else {
        match crate::files::read_bounded(&path, crate::files::MAX_SMALL_FILE) {
            Err(e) => format!("cannot read DKIM key \"{}\": {e}", path.display()),
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                if text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----") {
                    return Some(path);
                }
                format!(
                    "\"{}\" is not a PEM private key (no \"PRIVATE KEY-----\" line)",
                    path.display()
                )
            }
        }
    };
    v.add(
        at(value),
        format!("{key}.key_file"),
        problem,
        format!("point key_file at the PEM key of this selector, or create one with `{keygen}` (and publish the record it prints)"),
    );
    None
}

/// `headers`: field names (RFC 5322 2.2: printable ASCII but colon), each once, From among them
/// (RFC 6376 5.4: the From field MUST be signed).
fn dkim_headers(
    v: &mut Issues,
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
) -> Option<Vec<String>> {
    let mut headers: Vec<String> = Vec::new();
    let mut ok = true;
    for (i, h) in list.get_ref().iter().enumerate() {
        let name = h.get_ref().trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            v.add(
                at(h),
                format!("{key}.headers[{i}]"),
                format!("\"{}\" is not a header field name", h.get_ref()),
                "write field names without the colon, e.g. \"Subject\"",
            );
            ok = false;
        } else if !headers.iter().any(|seen| seen.eq_ignore_ascii_case(name)) {
            headers.push(name.to_string());
        }
    }
    if ok && !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        v.add(
            at(list),
            format!("{key}.headers"),
            "the list does not contain \"From\", which every DKIM signature must cover (RFC 6376 5.4)",
            "add \"From\" to headers, or remove headers to use the default list",
        );
        ok = false;
    }
    ok.then_some(headers)
}

/// A whole number in `min..=max`; `default` when absent or invalid (with an issue).
fn number(
    v: &mut Issues,
    value: &Option<Spanned<i64>>,
    key: &str,
    min: i64,
    max: i64,
    default: i64,
    note: &str,
) -> i64 {
    let Some(value) = value else { return default };
    let n = *value.get_ref();
    if n < min || n > max {
        let problem = if n < min {
            if min == 0 {
                format!("{n} is negative")
            } else {
                format!("{n} is too small (minimum {min})")
            }
        } else {
            format!("{n} is too large (maximum {max})")
        };
        let range = if max == i64::MAX {
            format!("of at least {min}")
        } else {
            format!("from {min} to {max}")
        };
        v.add(
            at(value),
            key,
            problem,
            format!("use a number {range}, e.g. {default} (the default){note}"),
        );
        return default;
    }
    n
}

fn count(
    v: &mut Issues,
    value: &Option<Spanned<i64>>,
    key: &str,
    min: i64,
    default: usize,
    note: &str,
) -> usize {
    let default_i = i64::try_from(default).unwrap_or(i64::MAX);
    usize::try_from(number(v, value, key, min, i64::MAX, default_i, note)).unwrap_or(default)
}

fn port(v: &mut Issues, value: &Option<Spanned<i64>>, key: &str, default: u16) -> u16 {
    u16::try_from(number(v, value, key, 1, 65535, i64::from(default), "")).unwrap_or(default)
}

fn size(v: &mut Issues, value: &Option<Spanned<Size>>, key: &str, default: u64) -> u64 {
    let Some(value) = value else { return default };
    let fix = format!(
        "write a number of bytes such as {default}, or a size string such as \"25MiB\" or \"10MB\""
    );
    let parsed = match value.get_ref() {
        Size::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        Size::Text(t) => parse_size(t).map_err(|why| format!("invalid size \"{t}\": {why}")),
    };
    match parsed {
        Ok(0) => {
            v.add(at(value), key, "the size is zero", fix);
            default
        }
        Ok(n) => n,
        Err(problem) => {
            v.add(at(value), key, problem, fix);
            default
        }
    }
}

/// `local.delivery` and `local.lmtp`: Maildir (the default), or LMTP (RFC 2033) to the server
/// `lmtp` names. `lmtp` is required with "lmtp" and refused with "maildir", so a config never
/// names a server it does not use.
fn local_delivery(v: &mut Issues, prefix: &str, delivery: &Text, lmtp: &Text) -> LocalDelivery {
    let (delivery_key, lmtp_key) = (format!("{prefix}.delivery"), format!("{prefix}.lmtp"));
    let mode = delivery
        .as_ref()
        .map(|d| d.get_ref().trim().to_ascii_lowercase());
    match mode.as_deref() {
        None | Some("maildir") => {
            if let Some(l) = lmtp {
                v.add(
                    at(l),
                    &lmtp_key,
                    format!("{lmtp_key} is set but {delivery_key} is \"maildir\", so it would never be used"),
                    format!("set {delivery_key} = \"lmtp\" to deliver through it, or remove {lmtp_key}"),
                );
            }
            LocalDelivery::Maildir
        }
        Some("lmtp") => {
            let Some(l) = lmtp else {
                v.add(
                    delivery.as_ref().and_then(at),
                    &lmtp_key,
                    format!("{delivery_key} = \"lmtp\" needs the address of the LMTP server"),
                    "add local.lmtp = \"unix:/run/dovecot/lmtp\" (or \"inet:127.0.0.1:24\")",
                );
                return LocalDelivery::Maildir;
            };
            match crate::milters::parse_address(l.get_ref()) {
                Some(MilterAddress::Unix(path)) => LocalDelivery::Lmtp(LmtpAddress::Unix(path)),
                Some(MilterAddress::Inet(addr)) => LocalDelivery::Lmtp(LmtpAddress::Inet(addr)),
                None => {
                    v.add(
                        at(l),
                        &lmtp_key,
                        format!("invalid LMTP address \"{}\"", l.get_ref()),
                        "write \"unix:/absolute/path\" (e.g. \"unix:/run/dovecot/lmtp\") or \"inet:IP:PORT\" (e.g. \"inet:127.0.0.1:24\")",
                    );
                    LocalDelivery::Maildir
                }
            }
        }
        Some(_) => {
            v.add(
                delivery.as_ref().and_then(at),
                &delivery_key,
                format!(
                    "unknown local delivery \"{}\"",
                    delivery.as_ref().map_or("", |d| d.get_ref().as_str())
                ),
                format!("use \"maildir\" (the default: tern writes the mailboxes) or \"lmtp\" (with {lmtp_key}: hand mail to Dovecot or another LMTP server)"),
            );
            LocalDelivery::Maildir
        }
    }
}

/// `[local.per_domain."<domain>"]`: a delivery for one local domain, checked as `[local]`'s
/// own. A domain that is not in `local.domains` is refused: its mail would never be local.
fn local_per_domain(
    v: &mut Issues,
    raw: &BTreeMap<String, crate::raw::RawLocalDomain>,
    domains: &[String],
) -> BTreeMap<String, LocalDelivery> {
    let mut out = BTreeMap::new();
    for (name, entry) in raw {
        let domain = name.trim_end_matches('.').to_ascii_lowercase();
        let prefix = format!("local.per_domain.{name:?}");
        let span = entry.delivery.as_ref().or(entry.lmtp.as_ref()).and_then(at);
        if !domains.contains(&domain) {
            v.add(
                span,
                &prefix,
                format!(
                    "{domain} is not one of local.domains, so no mail for it is delivered locally"
                ),
                format!("add \"{domain}\" to local.domains, or remove [local.per_domain.{name:?}]"),
            );
            continue;
        }
        if entry.delivery.is_none() {
            v.add(
                span,
                format!("{prefix}.delivery"),
                "a per-domain entry needs delivery",
                "set delivery = \"lmtp\" (with lmtp = \"unix:...\") or delivery = \"maildir\"",
            );
            continue;
        }
        let delivery = local_delivery(v, &prefix, &entry.delivery, &entry.lmtp);
        out.insert(domain, delivery);
    }
    out
}

fn bare_line_endings(v: &mut Issues, value: &Text) -> BareLineEndings {
    let Some(value) = value else {
        return defaults::BARE_LINE_ENDINGS;
    };
    let text = value.get_ref().trim().to_ascii_lowercase();
    match BareLineEndings::ALL.iter().find(|(name, _)| *name == text) {
        Some((_, mode)) => *mode,
        None => {
            v.add(
                at(value),
                "smtp.bare_line_endings",
                format!("unknown bare line ending policy \"{}\"", value.get_ref()),
                "use \"normalize\" (store them as CRLF) or \"reject\" (refuse the message with 554)",
            );
            defaults::BARE_LINE_ENDINGS
        }
    }
}

fn tls_policy(v: &mut Issues, value: &Text, key: &str, default: TlsPolicy) -> TlsPolicy {
    let Some(value) = value else { return default };
    let text = value.get_ref().trim().to_ascii_lowercase();
    match TlsPolicy::ALL.iter().find(|(name, _)| *name == text) {
        Some((_, policy)) => *policy,
        None => {
            v.add(
                at(value),
                key,
                format!("unknown TLS policy \"{}\"", value.get_ref()),
                "use one of \"none\", \"opportunistic\", \"required\"",
            );
            default
        }
    }
}

fn limits(v: &mut Issues, raw: &RawConfig) -> Limits {
    let l = &raw.limits;
    Limits {
        max_message_size: size(
            v,
            &l.max_message_size,
            "limits.max_message_size",
            defaults::MAX_MESSAGE_SIZE,
        ),
        max_recipients: count(
            v,
            &l.max_recipients,
            "limits.max_recipients",
            1,
            defaults::MAX_RECIPIENTS,
            "",
        ),
        max_connections: count(
            v,
            &l.max_connections,
            "limits.max_connections",
            1,
            defaults::MAX_CONNECTIONS,
            "",
        ),
        max_connections_per_ip: count(
            v,
            &l.max_connections_per_ip,
            "limits.max_connections_per_ip",
            0,
            defaults::MAX_CONNECTIONS_PER_IP,
            "; 0 means unlimited",
        ),
        max_messages_per_ip_per_minute: count(
            v,
            &l.max_messages_per_ip_per_minute,
            "limits.max_messages_per_ip_per_minute",
            0,
            defaults::MAX_MESSAGES_PER_IP_PER_MINUTE,
            "; 0 means unlimited",
        ),
        max_errors: count(
            v,
            &l.max_errors,
            "limits.max_errors",
            1,
            defaults::MAX_ERRORS,
            "",
        ),
        max_header_size: size(
            v,
            &l.max_header_size,
            "limits.max_header_size",
            defaults::MAX_HEADER_SIZE,
        ),
        max_data_memory: size(
            v,
            &l.max_data_memory,
            "limits.max_data_memory",
            defaults::MAX_DATA_MEMORY,
        ),
        max_auth_failures: count(
            v,
            &l.max_auth_failures,
            "limits.max_auth_failures",
            1,
            defaults::MAX_AUTH_FAILURES,
            "",
        ),
        command_timeout: duration(
            v,
            &l.command_timeout,
            "limits.command_timeout",
            defaults::COMMAND_TIMEOUT,
            false,
            caps::COMMAND_TIMEOUT,
        ),
        data_timeout: duration(
            v,
            &l.data_timeout,
            "limits.data_timeout",
            defaults::DATA_TIMEOUT,
            false,
            caps::DATA_TIMEOUT,
        ),
        max_auth_checks: count(
            v,
            &l.max_auth_checks,
            "limits.max_auth_checks",
            1,
            defaults::max_auth_checks(),
            " (the number of CPU cores)",
        ),
        max_auth_failures_per_user: count(
            v,
            &l.max_auth_failures_per_user,
            "limits.max_auth_failures_per_user",
            1,
            defaults::MAX_AUTH_FAILURES_PER_USER,
            "",
        ),
        max_junk_commands: count(
            v,
            &l.max_junk_commands,
            "limits.max_junk_commands",
            0,
            defaults::MAX_JUNK_COMMANDS,
            "",
        ),
        max_session_time: duration(
            v,
            &l.max_session_time,
            "limits.max_session_time",
            defaults::MAX_SESSION_TIME,
            false,
            caps::MAX_SESSION_TIME,
        ),
        ipv6_prefix_length: small(
            v,
            &l.ipv6_prefix_length,
            "limits.ipv6_prefix_length",
            1,
            128,
            defaults::IPV6_PREFIX_LENGTH,
            "; 128 counts single addresses",
        ),
        stress_threshold: small(
            v,
            &l.stress_threshold,
            "limits.stress_threshold",
            1,
            100,
            defaults::STRESS_THRESHOLD,
            " (percent of max_connections)",
        ),
        stress_command_timeout: duration(
            v,
            &l.stress_command_timeout,
            "limits.stress_command_timeout",
            defaults::STRESS_COMMAND_TIMEOUT,
            false,
            caps::STRESS_COMMAND_TIMEOUT,
        ),
        stress_data_timeout: duration(
            v,
            &l.stress_data_timeout,
            "limits.stress_data_timeout",
            defaults::STRESS_DATA_TIMEOUT,
            false,
            caps::STRESS_DATA_TIMEOUT,
        ),
        min_free_space: min_free_space(v, &l.min_free_space),
        max_new_mailboxes_per_message: count(
            v,
            &l.max_new_mailboxes_per_message,
            "limits.max_new_mailboxes_per_message",
            0,
            defaults::MAX_NEW_MAILBOXES_PER_MESSAGE,
            "; 0 means unlimited",
        ),
        max_new_mailboxes_per_minute: count(
            v,
            &l.max_new_mailboxes_per_minute,
            "limits.max_new_mailboxes_per_minute",
            0,
            defaults::MAX_NEW_MAILBOXES_PER_MINUTE,
            "; 0 means unlimited",
        ),
    }
}

/// Largest `limits.min_free_space` percentage: beyond half the disk the check would refuse
/// mail on a disk that is mostly empty, which is surely a typo.
const MAX_FREE_SPACE_PERCENT: u8 = 50;

/// `limits.min_free_space`: a size (as `max_message_size`), a whole percentage of the
/// filesystem ("5%", 1 to 50), or 0 for no check.
fn min_free_space(v: &mut Issues, value: &Option<Spanned<Size>>) -> MinFreeSpace {
    let Some(value) = value else {
        return defaults::MIN_FREE_SPACE;
    };
    let parsed = match value.get_ref() {
        Size::Bytes(n) => u64::try_from(*n)
            .map(MinFreeSpace::Bytes)
            .map_err(|_| format!("{n} is negative")),
        Size::Text(t) => match t.trim().strip_suffix('%') {
            Some(number) => match number.trim().parse::<u8>() {
                Ok(0) => Ok(MinFreeSpace::Off),
                Ok(p) if p <= MAX_FREE_SPACE_PERCENT => Ok(MinFreeSpace::Percent(p)),
                _ => Err(format!(
                    "invalid percentage \"{t}\" (a whole number from 1 to {MAX_FREE_SPACE_PERCENT} is expected)"
                )),
            },
            None => parse_size(t)
                .map(MinFreeSpace::Bytes)
                .map_err(|why| format!("invalid size \"{t}\": {why}")),
        },
    };
    match parsed {
        Ok(MinFreeSpace::Bytes(0)) => MinFreeSpace::Off,
        Ok(m) => m,
        Err(problem) => {
            v.add(
                at(value),
                "limits.min_free_space",
                problem,
                "write a size such as \"1GiB\" or \"500MB\", a percentage of the filesystem such as \"5%\", or 0 to turn the check off (the default is the smaller of 1GiB and 5%)",
            );
            defaults::MIN_FREE_SPACE
        }
    }
}

/// A bounded integer that fits a `u8` (a prefix length, a percentage).
fn small(
    v: &mut Issues,
    value: &Option<Spanned<i64>>,
    key: &str,
    min: u8,
    max: u8,
    default: u8,
    note: &str,
) -> u8 {
    let n = number(
        v,
        value,
        key,
        i64::from(min),
        i64::from(max),
        i64::from(default),
        note,
    );
    u8::try_from(n).unwrap_or(default)
}

fn users(v: &mut Issues, raw: &RawConfig) -> Vec<User> {
    let mut users: Vec<User> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for (i, u) in raw.users.iter().enumerate() {
        let name = u.name.get_ref().trim().to_ascii_lowercase();
        let key = format!("users[{i}].name");
        if split_address(&name).is_none() {
            v.add(
                at(&u.name),
                key,
                format!("\"{}\" is not an address", u.name.get_ref()),
                "write the full address, e.g. name = \"alice@example.test\"",
            );
            continue;
        }
        if let Some(first) = index_of.get(&name) {
            v.add(
                at(&u.name),
                key,
                format!("user \"{name}\" is already defined as users[{first}]"),
                "remove one of the two entries",
            );
            continue;
        }
        if let Some(p) = &u.password {
            if !p.get_ref().starts_with("$argon2") {
                v.add(
                    at(p),
                    format!("users[{i}].password"),
                    "the password is not an argon2 hash (it must start with \"$argon2\")",
                    "store the hash printed by `tern passwd`, never the plain password; or remove the key for a mailbox without login",
                );
            } else if let Err(why) = password::check_phc(p.get_ref()) {
                // Parsed in full now, so a damaged hash is never first found at that user's AUTH.
                v.add(
                    at(p),
                    format!("users[{i}].password"),
                    format!("the password hash of user \"{name}\" is not a usable argon2 PHC string: {why}"),
                    format!("run `tern passwd` and store the hash it prints (the whole line) as the password of \"{name}\""),
                );
            }
        }
        index_of.insert(name.clone(), i);
        users.push(User {
            name,
            password: u.password.as_ref().map(|p| p.get_ref().clone()),
        });
    }
    users
}

/// Users must live in a local domain: mail for any other domain is relayed, never delivered to them.
fn check_user_domains(v: &mut Issues, raw: &RawConfig, users: &[User], domains: &[String]) {
    for (i, u) in raw.users.iter().enumerate() {
        let name = u.name.get_ref().trim().to_ascii_lowercase();
        let Some((_, domain)) = split_address(&name) else {
            continue;
        };
        let domain = normalize_domain(domain);
        if users.iter().any(|k| k.name == name) && !domains.contains(&domain) {
            v.add(
                at(&u.name),
                format!("users[{i}].name"),
                format!("the domain \"{domain}\" of user \"{name}\" is not a local domain"),
                format!("add \"{domain}\" to local.domains, or correct the address"),
            );
        }
    }
}

fn aliases(
    v: &mut Issues,
    raw: &BTreeMap<String, Spanned<OneOrMany>>,
    domains: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (name, targets) in raw {
        let key = format!("aliases.{}", quote_key(name));
        let alias = name.trim().to_ascii_lowercase();
        let Some((_, domain)) = split_address(&alias) else {
            v.add(
                at(targets),
                key,
                format!("alias \"{name}\" is not an address"),
                "write the full address as the key, e.g. \"postmaster@example.test\" = [\"alice@example.test\"]",
            );
            continue;
        };
        let domain = normalize_domain(domain);
        if !domains.contains(&domain) {
            v.add(
                at(targets),
                key.clone(),
                format!("the domain \"{domain}\" of alias \"{alias}\" is not a local domain, so the alias could never match"),
                format!("add \"{domain}\" to local.domains, or correct the alias"),
            );
        }
        if out.contains_key(&alias) {
            v.add(
                at(targets),
                key,
                format!("alias \"{alias}\" is defined twice (keys are case-insensitive)"),
                "merge the two entries into one",
            );
            continue;
        }
        let list = &targets.get_ref().0;
        if list.is_empty() {
            v.add(
                at(targets),
                key.clone(),
                "the alias has no targets",
                "list one or more addresses, e.g. [\"alice@example.test\"]",
            );
        }
        let mut clean = Vec::new();
        for target in list {
            let target = target.trim();
            if split_address(target).is_none() {
                v.add(
                    at(targets),
                    key.clone(),
                    format!("target \"{target}\" is not an address (it needs local@domain)"),
                    "write full addresses such as \"alice@example.test\"",
                );
            } else {
                clean.push(target.to_string());
            }
        }
        out.insert(alias, clean);
    }
    out
}

fn routes(v: &mut Issues, raw: &BTreeMap<String, Spanned<RawRoute>>) -> BTreeMap<String, Route> {
    let mut out = BTreeMap::new();
    for (name, route) in raw {
        let key = format!("routes.{}", quote_key(name));
        let domain = if name.trim() == "*" {
            "*".to_string()
        } else {
            normalize_domain(name.trim())
        };
        if domain != "*" && !is_domain(&domain) {
            v.add(
                at(route),
                key.clone(),
                format!("\"{name}\" is neither a domain name nor \"*\""),
                "use the destination domain as the key (\"partner.test\"), or \"*\" for a smarthost",
            );
        }
        if out.contains_key(&domain) {
            v.add(
                at(route),
                key,
                format!("a route for \"{domain}\" is defined twice (keys are case-insensitive)"),
                "keep one of the two entries",
            );
            continue;
        }
        let built = match route.get_ref() {
            RawRoute::Short(target) => match parse_host_port(target, defaults::ROUTE_PORT) {
                Ok((host, port)) => Some(Route {
                    host,
                    port,
                    tls: defaults::ROUTE_TLS,
                    auth: None,
                    ca_file: None,
                    dane: defaults::ROUTE_DANE,
                }),
                Err(why) => {
                    v.add(
                        at(route),
                        key.clone(),
                        format!("invalid route \"{target}\": {why}"),
                        "write \"host\" or \"host:port\", e.g. \"mx.partner.test:2525\" or \"[2001:db8::1]:25\"",
                    );
                    None
                }
            },
            RawRoute::Full(t) => {
                let host_text = t.host.get_ref().trim();
                let host = host_text
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host_text);
                if host.parse::<IpAddr>().is_err()
                    && !is_domain(host.strip_suffix('.').unwrap_or(host))
                {
                    let fix = if host.contains(':') {
                        "put only the name or IP in host and the port in port = ..."
                    } else {
                        "use a host name such as \"mx.partner.test\" or an IP address"
                    };
                    v.add(
                        at(&t.host),
                        format!("{key}.host"),
                        format!("\"{host_text}\" is neither a domain name nor an IP address"),
                        fix,
                    );
                }
                let port = port(v, &t.port, &format!("{key}.port"), defaults::ROUTE_PORT);
                let tls = tls_policy(v, &t.tls, &format!("{key}.tls"), defaults::ROUTE_TLS);
                let auth = route_auth(v, &key, &t.user, &t.password_file, at(route));
                if auth.is_some() {
                    credentials_need_verified_tls(v, &key, &t.tls, tls, at(route));
                }
                let ca_file = t
                    .ca_file
                    .as_ref()
                    .map(|p| readable_file(v, p, &format!("{key}.ca_file")));
                Some(Route {
                    host: host.to_string(),
                    port,
                    tls,
                    auth,
                    ca_file,
                    dane: flag(&t.dane, defaults::ROUTE_DANE),
                })
            }
        };
        if let Some(r) = built {
            out.insert(domain, r);
        }
    }
    out
}

/// The path in `p`, with an issue under `key` if it cannot be opened for reading now.
fn readable_file(v: &mut Issues, p: &Spanned<String>, key: &str) -> PathBuf {
    let path = PathBuf::from(p.get_ref());
    if let Err(e) = std::fs::File::open(&path) {
        v.add(
            at(p),
            key.to_string(),
            format!("cannot read \"{}\": {e}", path.display()),
            file_fix(&e),
        );
    }
    path
}

fn route_auth(
    v: &mut Issues,
    key: &str,
    user: &Text,
    password_file: &Text,
    route_span: Option<Range<usize>>,
) -> Option<RouteAuth> {
    match (user, password_file) {
        (None, None) => None,
        (Some(u), None) => {
            v.add(
                at(u),
                format!("{key}.user"),
                "user is set but password_file is not",
                "set both user and password_file, or neither",
            );
            None
        }
        (None, Some(p)) => {
            v.add(
                at(p),
                format!("{key}.password_file"),
                "password_file is set but user is not",
                "set both user and password_file, or neither",
            );
            None
        }
        (Some(u), Some(p)) => {
            if u.get_ref().is_empty() {
                v.add(
                    at(u).or(route_span),
                    format!("{key}.user"),
                    "the user name is empty",
                    "set the login name for the next hop",
                );
            }
            let path = readable_file(v, p, &format!("{key}.password_file"));
            Some(RouteAuth {
                user: u.get_ref().clone(),
                password_file: path,
            })
        }
    }
}

/// A route that logs in must verify the server first: with `none` or `opportunistic` (whose
/// certificates are not checked, RFC 7435) an active attacker or a misrouted smarthost would be
/// handed the password (RFC 4954 4 leaves it to the client to require a protected channel).
/// Only `required` verifies the certificate for `host` before AUTH.
fn credentials_need_verified_tls(
    v: &mut Issues,
    key: &str,
    written: &Text,
    tls: TlsPolicy,
    route_span: Option<Range<usize>>,
) {
    if tls == TlsPolicy::Required {
        return;
    }
    let how = if written.is_some() {
        format!("tls is \"{}\"", tls.as_str())
    } else {
        format!("tls is not set (so \"{}\")", tls.as_str())
    };
    v.add(
        written.as_ref().and_then(at).or(route_span),
        format!("{key}.tls"),
        format!("the route has user and password_file but {how}: the password could be sent to a server whose certificate is never verified"),
        "set tls = \"required\" in this route (and ca_file = \"...\" if the server's certificate is not from a public CA), or remove user and password_file",
    );
}

fn queue(v: &mut Issues, raw: &RawConfig) -> QueueConfig {
    let q = &raw.queue;
    let retry_schedule = match &q.retry_schedule {
        None => defaults::RETRY_SCHEDULE.to_vec(),
        Some(list) if list.get_ref().is_empty() => {
            v.add(
                at(list),
                "queue.retry_schedule",
                "the retry schedule is empty",
                "list at least one delay, e.g. [\"5m\", \"30m\", \"1h\"] (the last one repeats)",
            );
            defaults::RETRY_SCHEDULE.to_vec()
        }
        Some(list) => list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                duration(
                    v,
                    &Some(d.clone()),
                    &format!("queue.retry_schedule[{i}]"),
                    defaults::RETRY_SCHEDULE[0],
                    false,
                    caps::RETRY_DELAY,
                )
            })
            .collect(),
    };
    let delay_warning = duration(
        v,
        &q.delay_warning,
        "queue.delay_warning",
        Duration::ZERO,
        true,
        caps::DELAY_WARNING,
    );
    QueueConfig {
        max_age: duration(
            v,
            &q.max_age,
            "queue.max_age",
            defaults::QUEUE_MAX_AGE,
            false,
            caps::QUEUE_MAX_AGE,
        ),
        retry_schedule,
        max_received_headers: count(
            v,
            &q.max_received_headers,
            "queue.max_received_headers",
            1,
            defaults::MAX_RECEIVED_HEADERS,
            "",
        ),
        delay_warning: (!delay_warning.is_zero())
            .then_some(delay_warning)
            .or(defaults::DELAY_WARNING),
        backend: crate::backend::backend(v, q),
    }
}

fn outbound(v: &mut Issues, raw: &RawConfig, hostname: &str) -> OutboundConfig {
    let o = &raw.outbound;
    OutboundConfig {
        mx_port: port(v, &o.mx_port, "outbound.mx_port", defaults::MX_PORT),
        concurrency: count(
            v,
            &o.concurrency,
            "outbound.concurrency",
            1,
            defaults::OUTBOUND_CONCURRENCY,
            "",
        ),
        concurrency_per_host: count(
            v,
            &o.concurrency_per_host,
            "outbound.concurrency_per_host",
            1,
            defaults::OUTBOUND_CONCURRENCY_PER_HOST,
            "",
        ),
        tls: tls_policy(v, &o.tls, "outbound.tls", defaults::OUTBOUND_TLS),
        helo_name: match &o.helo_name {
            Some(h) => {
                domain_name(v, h, "outbound.helo_name").unwrap_or_else(|| hostname.to_string())
            }
            None => hostname.to_string(),
        },
        connect_timeout: duration(
            v,
            &o.connect_timeout,
            "outbound.connect_timeout",
            defaults::CONNECT_TIMEOUT,
            false,
            caps::CONNECT_TIMEOUT,
        ),
        command_timeout: duration(
            v,
            &o.command_timeout,
            "outbound.command_timeout",
            defaults::OUTBOUND_COMMAND_TIMEOUT,
            false,
            caps::OUTBOUND_COMMAND_TIMEOUT,
        ),
        data_timeout: duration(
            v,
            &o.data_timeout,
            "outbound.data_timeout",
            defaults::OUTBOUND_DATA_TIMEOUT,
            false,
            caps::OUTBOUND_DATA_TIMEOUT,
        ),
        attempt_timeout: duration(
            v,
            &o.attempt_timeout,
            "outbound.attempt_timeout",
            defaults::OUTBOUND_ATTEMPT_TIMEOUT,
            false,
            caps::OUTBOUND_ATTEMPT_TIMEOUT,
        ),
        deny_networks: outbound_networks(v, &o.deny_networks, "outbound.deny_networks")
            .into_iter()
            .map(|(_, _, net)| net)
            .collect(),
        allow_networks: allow_networks(v, &o.allow_networks),
        min_data_rate: min_data_rate(v, o),
        mta_sts: flag(&o.mta_sts, defaults::MTA_STS),
        dane: flag(&o.dane, defaults::DANE),
        mta_sts_ca_file: o
            .mta_sts_ca_file
            .as_ref()
            .map(|p| readable_file(v, p, "outbound.mta_sts_ca_file")),
        mta_sts_port: port(
            v,
            &o.mta_sts_port,
            "outbound.mta_sts_port",
            defaults::MTA_STS_PORT,
        ),
    }
}

/// A list of networks for `[outbound]`, each with its index and position in the file. An
/// IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is refused: addresses are compared as the
/// IPv4 address they carry, so it would never match.
fn outbound_networks(
    v: &mut Issues,
    list: &TextList,
    key: &str,
) -> Vec<(usize, Option<Range<usize>>, ipnet::IpNet)> {
    let Some(list) = list else {
        return Vec::new();
    };
    let mapped =
        ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    let mut out = Vec::new();
    for (i, n) in list.get_ref().iter().enumerate() {
        match parse_network(n.get_ref()) {
            None => v.add(
                at(n),
                format!("{key}[{i}]"),
                format!("invalid network \"{}\"", n.get_ref()),
                "write a CIDR such as \"192.0.2.0/24\" or \"2001:db8::/32\", or a single address such as \"192.0.2.1\"",
            ),
            Some(ipnet::IpNet::V6(net)) if mapped.contains(&net) => v.add(
                at(n),
                format!("{key}[{i}]"),
                format!("\"{}\" is an IPv4-mapped IPv6 network", n.get_ref()),
                "write the IPv4 network instead (\"10.0.0.0/8\" for \"::ffff:10.0.0.0/104\"): IPv4-mapped addresses are checked as IPv4",
            ),
            Some(net) => out.push((i, at(n), net.trunc())),
        }
    }
    out
}

/// `outbound.allow_networks`: only parts of the always-refused ranges mean anything here (every
/// other address is allowed already), so anything else is a mistake worth reporting.
fn allow_networks(v: &mut Issues, list: &TextList) -> Vec<ipnet::IpNet> {
    let key = "outbound.allow_networks";
    let refused = defaults::always_refused_networks();
    let mut out = Vec::new();
    for (i, span, net) in outbound_networks(v, list, key) {
        if refused.iter().any(|(_, r)| r.contains(&net)) {
            out.push(net);
            continue;
        }
        let ranges: Vec<String> = refused.iter().map(|(_, r)| r.to_string()).collect();
        v.add(
            span,
            format!("{key}[{i}]"),
            format!(
                "{net} is not inside a range tern refuses for MX delivery, so allowing it does nothing"
            ),
            format!(
                "list only parts of {}, or remove it (to refuse addresses, use outbound.deny_networks)",
                ranges.join(", ")
            ),
        );
    }
    out
}

/// `outbound.min_data_rate` (a size per second; 0 = no minimum) and its grace period.
fn min_data_rate(v: &mut Issues, o: &crate::raw::RawOutbound) -> Option<MinDataRate> {
    let key = "outbound.min_data_rate";
    let rate = match &o.min_data_rate {
        None => defaults::OUTBOUND_MIN_DATA_RATE,
        Some(value) => {
            let parsed = match value.get_ref() {
                Size::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
                Size::Text(t) => {
                    parse_size(t).map_err(|why| format!("invalid rate \"{t}\": {why}"))
                }
            };
            match parsed {
                Ok(n) => n,
                Err(problem) => {
                    v.add(
                        at(value),
                        key,
                        problem,
                        format!(
                            "write bytes per second such as {} or \"1KiB\", or 0 for no minimum",
                            defaults::OUTBOUND_MIN_DATA_RATE
                        ),
                    );
                    defaults::OUTBOUND_MIN_DATA_RATE
                }
            }
        }
    };
    let grace = duration(
        v,
        &o.min_data_rate_grace,
        "outbound.min_data_rate_grace",
        defaults::OUTBOUND_MIN_DATA_RATE_GRACE,
        true,
        caps::OUTBOUND_MIN_DATA_RATE_GRACE,
    );
    std::num::NonZeroU64::new(rate).map(|bytes_per_sec| MinDataRate {
        bytes_per_sec,
        grace,
    })
}

fn log(v: &mut Issues, raw: &RawConfig) -> LogConfig {
    let level = match &raw.log.level {
        None => defaults::LOG_LEVEL.to_string(),
        Some(l) => {
            let level = l.get_ref().trim().to_ascii_lowercase();
            if LOG_LEVELS.contains(&level.as_str()) {
                level
            } else {
                v.add(
                    at(l),
                    "log.level",
                    format!("unknown log level \"{}\"", l.get_ref()),
                    "use one of \"trace\", \"debug\", \"info\", \"warn\", \"error\"",
                );
                defaults::LOG_LEVEL.to_string()
            }
        }
    };
    let format = match &raw.log.format {
        None => defaults::LOG_FORMAT,
        Some(f) => {
            let text = f.get_ref().trim().to_ascii_lowercase();
            match LogFormat::ALL.iter().find(|(name, _)| *name == text) {
                Some((_, format)) => *format,
                None => {
                    v.add(
                        at(f),
                        "log.format",
                        format!("unknown log format \"{}\"", f.get_ref()),
                        "use \"text\" or \"json\"",
                    );
                    defaults::LOG_FORMAT
                }
            }
        }
    };
    LogConfig { level, format }
}
