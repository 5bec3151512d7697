//! Loader tests: every default, every key, every validation rule, error positions and wording.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::load::discover_in;
use crate::*;

const MIN: u64 = 60;

fn load(text: &str) -> Config {
    match Config::from_toml_str(text, Path::new("tern.toml")) {
        Ok(c) => c,
        Err(e) => panic!("config should load, got:\n{e}"),
    }
}

fn error(text: &str) -> ConfigError {
    match Config::from_toml_str(text, Path::new("tern.toml")) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error text contains every needle (key path, problem, fix).
fn rejects(text: &str, needles: &[&str]) -> String {
    let message = error(text).to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "error should contain {needle:?}, got:\n{message}"
        );
    }
    message
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Fake but well-formed-looking PEM files: the loader checks readability and PEM markers only.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("fullchain.pem");
    let key = dir.join("key.pem");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    (cert, key)
}

fn tls_table(dir: &Path) -> String {
    let (cert, key) = tls_files(dir);
    format!(
        "[tls]\ncert = '{}'\nkey = '{}'\n",
        cert.display(),
        key.display()
    )
}

// ---------------------------------------------------------------- defaults

#[test]
fn every_default() {
    let c = Config::defaults();
    let host = defaults::hostname();
    assert_eq!(c.hostname, host);
    assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
    assert_eq!(c.smtp.listen, vec![addr("127.0.0.1:2525")]);
    assert!(c.submission.listen.is_empty());
    assert!(c.submission.require_tls_for_auth);
    assert!(c.submission.enforce_sender);
    assert!(c.submissions.listen.is_empty());
    assert_eq!(c.smtp.bare_line_endings, BareLineEndings::Normalize);
    assert_eq!(c.submission.bare_line_endings, BareLineEndings::Normalize);
    assert_eq!(c.tls, None);
    let l = &c.limits;
    assert_eq!(l.max_message_size, 26_214_400);
    assert_eq!(l.max_recipients, 100);
    assert_eq!(l.max_connections, 1000);
    assert_eq!(l.max_connections_per_ip, 100);
    assert_eq!(l.max_messages_per_ip_per_minute, 0);
    assert_eq!(l.max_errors, 20);
    assert_eq!(l.max_header_size, 1_048_576);
    assert_eq!(l.max_data_memory, 128 * 1024 * 1024);
    assert_eq!(l.max_auth_failures, 5);
    assert_eq!(l.command_timeout, secs(5 * MIN));
    assert_eq!(l.data_timeout, secs(10 * MIN));
    assert!(l.max_auth_checks >= 1);
    assert_eq!(l.max_auth_failures_per_user, 10);
    assert_eq!(l.max_junk_commands, 20);
    assert_eq!(l.max_session_time, secs(60 * MIN));
    assert_eq!(l.ipv6_prefix_length, 64);
    assert_eq!(l.stress_threshold, 80);
    assert_eq!(l.stress_command_timeout, secs(10));
    assert_eq!(l.stress_data_timeout, secs(2 * MIN));
    assert_eq!(
        l.min_free_space,
        MinFreeSpace::SmallerOf {
            bytes: 1 << 30,
            percent: 5
        }
    );
    assert_eq!(l.max_new_mailboxes_per_message, 10);
    assert_eq!(l.max_new_mailboxes_per_minute, 60);
    assert!(c.local.domains.contains(&"localhost".to_string()));
    assert!(c.local.domains.contains(&host));
    assert!(c.local.catch_all, "no users -> catch-all");
    assert_eq!(c.local.qualify_domain, host);
    assert!(!c.local.vrfy);
    assert!(!c.local.expn);
    assert!(c.users.is_empty());
    assert!(c.aliases.is_empty());
    let nets: Vec<String> = c
        .relay
        .trusted_networks
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
    assert!(c.routes.is_empty());
    assert!(c.dns.nameservers.is_empty());
    assert_eq!(c.queue.max_age, secs(5 * 86400));
    assert_eq!(
        c.queue.retry_schedule,
        [
            secs(5 * MIN),
            secs(10 * MIN),
            secs(20 * MIN),
            secs(40 * MIN),
            secs(60 * MIN)
        ]
    );
    assert_eq!(c.queue.max_received_headers, 50);
    assert_eq!(c.queue.delay_warning, None);
    let o = &c.outbound;
    assert_eq!(o.mx_port, 25);
    assert_eq!(o.concurrency, 50);
    assert_eq!(o.concurrency_per_host, 5);
    assert_eq!(o.tls, TlsPolicy::Opportunistic);
    assert_eq!(o.helo_name, host);
    assert_eq!(o.connect_timeout, secs(30));
    assert_eq!(o.command_timeout, secs(5 * MIN));
    assert_eq!(o.data_timeout, secs(10 * MIN));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.source, None);
}

#[test]
fn empty_file_equals_defaults() {
    let loaded = load("");
    assert_eq!(loaded.source.as_deref(), Some(Path::new("tern.toml")));
    assert_eq!(
        Config {
            source: None,
            ..loaded
        },
        Config::defaults()
    );
    // Empty sections are the same as absent ones.
    let sections = "[smtp]\n[submission]\n[submissions]\n[limits]\n[local]\n[aliases]\n[relay]\n[routes]\n[dns]\n[queue]\n[outbound]\n[log]\n";
    assert_eq!(
        Config {
            source: None,
            ..load(sections)
        },
        Config::defaults()
    );
}

#[test]
fn catch_all_default_flips_with_users() {
    let c = load("[[users]]\nname = \"a@localhost\"\n");
    assert!(!c.local.catch_all);
    let c = load("[local]\ncatch_all = true\n[[users]]\nname = \"a@localhost\"\n");
    assert!(c.local.catch_all);
}

#[test]
fn domains_and_helo_follow_hostname() {
    let c = load("hostname = \"MX.Example.TEST.\"\n");
    assert_eq!(c.hostname, "mx.example.test");
    assert_eq!(c.local.domains, ["localhost", "mx.example.test"]);
    assert_eq!(c.outbound.helo_name, "mx.example.test");
    assert_eq!(c.local.qualify_domain, "mx.example.test");
}

// ---------------------------------------------------------------- every key

#[test]
fn every_key_parses() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let text = format!(
        r#"
hostname = "mx.example.test"
data_dir = "/var/lib/tern"
[smtp]
listen = ["0.0.0.0:25", "[::]:25"]
bare_line_endings = "Reject"
[submission]
listen = ["127.0.0.1:587"]
require_tls_for_auth = false
enforce_sender = false
[submissions]
listen = ["127.0.0.1:465"]
{tls}
[limits]
max_message_size = 1000
max_recipients = 7
max_connections = 8
max_connections_per_ip = 0
max_messages_per_ip_per_minute = 30
max_errors = 3
max_header_size = "64KiB"
max_auth_failures = 2
command_timeout = "1m"
data_timeout = "2m 30s"
max_auth_checks = 3
max_auth_failures_per_user = 4
max_junk_commands = 0
max_session_time = "20m"
ipv6_prefix_length = 56
stress_threshold = 90
stress_command_timeout = "5s"
stress_data_timeout = "30s"
[local]
domains = ["Example.TEST.", "other.test"]
qualify_domain = "Other.TEST."
catch_all = true
vrfy = true
expn = true
[[users]]
name = "Alice@Example.test"
password = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo"
[[users]]
name = "bob@other.test"
[aliases]
"Postmaster@example.test" = ["alice@example.test", "bob@remote.test"]
"abuse@example.test" = "alice@example.test"
[relay]
trusted_networks = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
[routes]
"Partner.test" = "127.0.0.1:2626"
"plain.test" = "mx.plain.test"
"other.test" = {{ host = "mx.other.test", port = 2526, tls = "required", user = "u", password_file = '{pw}' }}
"*" = {{ host = "smarthost.test", port = 587, tls = "none" }}
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
[queue]
max_age = "2d"
retry_schedule = ["1m", "2m"]
max_received_headers = 30
delay_warning = "4h"
[outbound]
mx_port = 2525
concurrency = 4
concurrency_per_host = 2
tls = "required"
helo_name = "out.example.test"
connect_timeout = "5s"
command_timeout = "6s"
data_timeout = "7s"
[log]
level = "DEBUG"
format = "json"
"#,
        tls = tls_table(dir.path()),
        pw = pw.display()
    );
    let c = load(&text);
    assert_eq!(c.hostname, "mx.example.test");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/tern"));
    assert_eq!(c.smtp.listen, [addr("0.0.0.0:25"), addr("[::]:25")]);
    assert_eq!(c.submission.listen, [addr("127.0.0.1:587")]);
    assert!(!c.submission.require_tls_for_auth);
    assert!(!c.submission.enforce_sender);
    // The AUTH policy set in [submission] is shared by the implicit-TLS listener.
    assert!(!c.submissions.enforce_sender);
    assert_eq!(c.submissions.listen, [addr("127.0.0.1:465")]);
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.path().join("fullchain.pem"));
    assert_eq!(tls.key, dir.path().join("key.pem"));
    let l = &c.limits;
    assert_eq!(
        (
            l.max_message_size,
            l.max_recipients,
            l.max_connections,
            l.max_connections_per_ip
        ),
        (1000, 7, 8, 0)
    );
    assert_eq!(
        (
            l.max_messages_per_ip_per_minute,
            l.max_errors,
            l.max_header_size,
            l.max_auth_failures
        ),
        (30, 3, 65536, 2)
    );
    assert_eq!((l.command_timeout, l.data_timeout), (secs(60), secs(150)));
    assert_eq!(
        (
            l.max_auth_checks,
            l.max_auth_failures_per_user,
            l.max_junk_commands
        ),
        (3, 4, 0)
    );
    assert_eq!(
        (l.max_session_time, l.ipv6_prefix_length, l.stress_threshold),
        (secs(20 * MIN), 56, 90)
    );
    assert_eq!(
        (l.stress_command_timeout, l.stress_data_timeout),
        (secs(5), secs(30))
    );
    assert_eq!(c.local.domains, ["example.test", "other.test"]);
    assert_eq!(c.local.qualify_domain, "other.test");
    // The [smtp] policy holds for every listener, like [submission]'s AUTH policy.
    for l in [&c.smtp, &c.submission, &c.submissions] {
        assert_eq!(l.bare_line_endings, BareLineEndings::Reject);
    }
    assert!(c.local.catch_all && c.local.vrfy && c.local.expn);
    assert_eq!(c.users.len(), 2);
    assert_eq!(c.users[0].name, "alice@example.test");
    assert!(c.users[0]
        .password
        .as_deref()
        .unwrap()
        .starts_with("$argon2id$"));
    assert_eq!(c.users[1].password, None);
    assert_eq!(
        c.aliases["postmaster@example.test"],
        ["alice@example.test", "bob@remote.test"]
    );
    assert_eq!(c.aliases["abuse@example.test"], ["alice@example.test"]);
    let nets: Vec<String> = c
        .relay
        .trusted_networks
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    assert_eq!(
        c.routes["partner.test"],
        Route {
            host: "127.0.0.1".into(),
            port: 2626,
            tls: TlsPolicy::Opportunistic,
            auth: None,
            ca_file: None,
            dane: false,
        }
    );
    assert_eq!(c.routes["plain.test"].port, 25);
    let other = &c.routes["other.test"];
    assert_eq!(
        (other.host.as_str(), other.port, other.tls),
        ("mx.other.test", 2526, TlsPolicy::Required)
    );
    let auth = other.auth.as_ref().unwrap();
    assert_eq!(
        (auth.user.as_str(), auth.password_file.as_path()),
        ("u", pw.as_path())
    );
    assert_eq!(auth.read_password().unwrap(), "secret");
    assert_eq!(c.routes["*"].tls, TlsPolicy::None);
    assert_eq!(
        c.dns.nameservers,
        [addr("127.0.0.1:5353"), addr("[::1]:53")]
    );
    assert_eq!(c.queue.max_age, secs(2 * 86400));
    assert_eq!(c.queue.retry_schedule, [secs(60), secs(120)]);
    assert_eq!(c.queue.max_received_headers, 30);
    assert_eq!(c.queue.delay_warning, Some(secs(4 * 3600)));
    let o = &c.outbound;
    assert_eq!(
        (o.mx_port, o.concurrency, o.concurrency_per_host, o.tls),
        (2525, 4, 2, TlsPolicy::Required)
    );
    assert_eq!(o.helo_name, "out.example.test");
    assert_eq!(
        (o.connect_timeout, o.command_timeout, o.data_timeout),
        (secs(5), secs(6), secs(7))
    );
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn sizes_accept_integers_and_strings() {
    let c = load("[limits]\nmax_message_size = \"25MiB\"\nmax_header_size = \"10MB\"\nmax_data_memory = \"16MiB\"\n");
    assert_eq!(c.limits.max_message_size, 25 * 1024 * 1024);
    assert_eq!(c.limits.max_header_size, 10_000_000);
    assert_eq!(c.limits.max_data_memory, 16 * 1024 * 1024);
    assert_eq!(
        load("[limits]\nmax_message_size = 5_000\n")
            .limits
            .max_message_size,
        5000
    );
}

#[test]
fn delay_warning_zero_is_off() {
    assert_eq!(
        load("[queue]\ndelay_warning = \"0s\"\n")
            .queue
            .delay_warning,
        None
    );
}

#[test]
fn dotted_keys_work_too() {
    assert_eq!(load("limits.max_recipients = 9\n").limits.max_recipients, 9);
    for bad in [
        "ipv6_prefix_length = 0",
        "ipv6_prefix_length = 129",
        "stress_threshold = 0",
        "stress_threshold = 101",
        "max_auth_checks = 0",
        "max_session_time = \"0s\"",
    ] {
        assert!(
            Config::from_toml_str(&format!("[limits]\n{bad}\n"), Path::new("t.toml")).is_err(),
            "{bad} accepted"
        );
    }
}

#[test]
fn min_free_space_takes_a_size_a_percentage_or_zero() {
    let m = |v: &str| {
        load(&format!("[limits]\nmin_free_space = {v}\n"))
            .limits
            .min_free_space
    };
    assert_eq!(m("\"1GiB\""), MinFreeSpace::Bytes(1 << 30));
    assert_eq!(m("\"500MB\""), MinFreeSpace::Bytes(500_000_000));
    assert_eq!(m("1048576"), MinFreeSpace::Bytes(1 << 20));
    assert_eq!(m("\"5%\""), MinFreeSpace::Percent(5));
    assert_eq!(m("\" 50 % \""), MinFreeSpace::Percent(50));
    assert_eq!(m("0"), MinFreeSpace::Off);
    assert_eq!(m("\"0%\""), MinFreeSpace::Off);
    assert_eq!(m("\"0B\""), MinFreeSpace::Off);
    for bad in ["\"51%\"", "\"1.5%\"", "\"-1%\"", "\"%\"", "-5", "\"lots\""] {
        rejects(
            &format!("[limits]\nmin_free_space = {bad}\n"),
            &["limits.min_free_space", "\"5%\"", "0 to turn the check off"],
        );
    }
    // The threshold on a given filesystem.
    let gib = 1u64 << 30;
    let default = Config::defaults().limits.min_free_space;
    assert_eq!(default.threshold(10 * gib), gib / 2, "5 % of a small disk");
    assert_eq!(default.threshold(2000 * gib), gib, "1 GiB of a large one");
    assert_eq!(MinFreeSpace::Percent(50).threshold(u64::MAX), u64::MAX / 2);
    assert_eq!(MinFreeSpace::Off.threshold(gib), 0);
}

#[test]
fn mailbox_caps_are_counts_with_zero_unlimited() {
    let c = load("[limits]\nmax_new_mailboxes_per_message = 0\nmax_new_mailboxes_per_minute = 5\n");
    assert_eq!(c.limits.max_new_mailboxes_per_message, 0);
    assert_eq!(c.limits.max_new_mailboxes_per_minute, 5);
    rejects(
        "[limits]\nmax_new_mailboxes_per_minute = -1\n",
        &[
            "limits.max_new_mailboxes_per_minute",
            "is negative",
            "0 means unlimited",
        ],
    );
    rejects(
        "[limits]\nmax_new_mailboxes_per_message = \"ten\"\n",
        &["limits.max_new_mailboxes_per_message"],
    );
}

// ---------------------------------------------------------------- queries

#[test]
fn is_local_domain_ignores_case_and_trailing_dot() {
    let c = load("[local]\ndomains = [\"example.test\"]\n");
    assert!(c.is_local_domain("example.test"));
    assert!(c.is_local_domain("EXAMPLE.Test."));
    assert!(!c.is_local_domain("example.test.."));
    assert!(!c.is_local_domain("sub.example.test"));
    assert!(
        !c.is_local_domain("localhost"),
        "an explicit list replaces the default"
    );
}

#[test]
fn is_trusted_handles_v4_v6_and_mapped() {
    let c = load("[relay]\ntrusted_networks = [\"192.0.2.0/24\", \"2001:db8::1\"]\n");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(c.is_trusted(ip("192.0.2.200")));
    assert!(!c.is_trusted(ip("192.0.3.1")));
    assert!(
        c.is_trusted(ip("::ffff:192.0.2.9")),
        "IPv4-mapped IPv6 counts as IPv4"
    );
    assert!(!c.is_trusted(ip("::ffff:192.0.3.9")));
    assert!(c.is_trusted(ip("2001:db8::1")));
    assert!(!c.is_trusted(ip("2001:db8::2")));
    assert!(
        !c.is_trusted(ip("127.0.0.1")),
        "an explicit list replaces the default"
    );
    assert!(Config::defaults().is_trusted(ip("127.1.2.3")));
    assert!(Config::defaults().is_trusted(ip("::1")));
    assert!(Config::defaults().is_trusted(ip("::ffff:127.0.0.1")));
    assert!(!Config::defaults().is_trusted(ip("192.0.2.1")));
}

#[test]
fn user_lookup_is_case_insensitive() {
    let c = load("[[users]]\nname = \"Alice@Localhost\"\n");
    assert_eq!(
        c.user("ALICE@localhost").map(|u| u.name.as_str()),
        Some("alice@localhost")
    );
    assert!(c.user("bob@localhost").is_none());
}

#[test]
fn route_for_exact_then_smarthost() {
    let c = load("[routes]\n\"partner.test\" = \"127.0.0.1:2626\"\n");
    assert_eq!(c.route_for("PARTNER.test.").map(|r| r.port), Some(2626));
    assert!(c.route_for("sub.partner.test").is_none());
    let c = load("[routes]\n\"partner.test\" = \"127.0.0.1:2626\"\n\"*\" = { host = \"smart.test\", port = 587 }\n");
    assert_eq!(
        c.route_for("elsewhere.test").map(|r| r.host.as_str()),
        Some("smart.test")
    );
    assert_eq!(c.route_for("partner.test").map(|r| r.port), Some(2626));
}

#[test]
fn user_debug_hides_password() {
    let c = load("[[users]]\nname = \"a@localhost\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo\"\n");
    let debug = format!("{:?}", c.users[0]);
    assert!(!debug.contains("aGFzaGhhc2hoYXNo"), "{debug}");
    assert!(debug.contains("a@localhost"));
}

// ---------------------------------------------------------------- parse errors

#[test]
fn unknown_top_level_key_names_it_and_lists_valid_ones() {
    let e = rejects(
        "hostname = \"a.test\"\nhostnme = \"b\"\n",
        &[
            "tern.toml:2:1: hostnme: unknown key `hostnme`",
            "`hostname`",
            "`outbound`",
            "fix: remove the key or correct its spelling",
        ],
    );
    assert!(
        matches!(error("hostnme = 1").issues(), [i] if i.key == "hostnme"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_section() {
    rejects(
        "[limits]\nmax_recipients = 5\nmax_recipient = 5\n",
        &[
            "tern.toml:3:1: limits.max_recipient: unknown key `max_recipient`; valid keys here:",
            "`max_recipients`",
            "`data_timeout`",
            "fix:",
        ],
    );
    rejects(
        "[[users]]\nname = \"a@localhost\"\npasswd = \"x\"\n",
        &["users[0].passwd: unknown key `passwd`", "`password`"],
    );
    rejects(
        "[routes]\n\"p.test\" = { host = \"h.test\", prot = 25 }\n",
        &["routes.\"p.test\".prot: unknown key `prot`", "`port`"],
    );
    rejects(
        "[smtp]\nlisten = []\nenforce_sender = true\n",
        &["smtp.enforce_sender: unknown key", "`listen`"],
    );
}

#[test]
fn unknown_section() {
    rejects(
        "[limit]\nmax_recipients = 5\n",
        &["tern.toml:1:2: limit: unknown key `limit`", "`limits`"],
    );
}

#[test]
fn type_errors_have_position_key_and_hint() {
    rejects(
        "\n[limits]\nmax_recipients = \"many\"\n",
        &[
            "tern.toml:3:18: limits.max_recipients: invalid type: string \"many\"",
            "fix: write a whole number",
        ],
    );
    rejects(
        "[limits]\ncommand_timeout = 300\n",
        &[
            "tern.toml:2:19: limits.command_timeout: invalid type: integer `300`",
            "fix: write a duration string such as \"30s\"",
        ],
    );
    rejects(
        "[local]\nvrfy = \"yes\"\n",
        &["local.vrfy", "fix: write true or false"],
    );
    rejects(
        "[smtp]\nlisten = \"0.0.0.0:25\"\n",
        &[
            "smtp.listen: invalid type",
            "fix: write a list of addresses",
        ],
    );
    rejects("[routes]\n\"p.test\" = 25\n", &["routes.\"p.test\": invalid type: integer `25`, expected a \"host[:port]\" string or a table"]);
    rejects(
        "[aliases]\n\"a@localhost\" = 5\n",
        &[
            "aliases.\"a@localhost\": invalid type",
            "an address string or a list",
        ],
    );
}

#[test]
fn missing_required_keys() {
    rejects(
        "[tls]\ncert = \"/x\"\n",
        &["tern.toml:1:1: tls: required key `key` is missing; fix: add key = ..."],
    );
    rejects(
        "[[users]]\npassword = \"$argon2id$x\"\n",
        &["users[0]: required key `name` is missing"],
    );
    rejects(
        "[routes]\n\"p.test\" = { port = 25 }\n",
        &["routes.\"p.test\": required key `host` is missing"],
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = error("hostname = \"a.test\"\n[limits]\nmax_recipients = = 5\n");
    let issue = &e.issues()[0];
    assert_eq!(issue.location.map(|(l, _)| l), Some(3), "{e}");
    assert!(e.to_string().starts_with("tern.toml:3:"), "{e}");
    assert!(
        e.to_string().contains("fix: correct the TOML syntax"),
        "{e}"
    );
    let e = error("[limits\n");
    assert!(e.to_string().starts_with("tern.toml:1:"), "{e}");
    let e = error("a = 1\na = 2\n");
    assert!(e.to_string().starts_with("tern.toml:2:1:"), "{e}");
}

// ---------------------------------------------------------------- validation rules

#[test]
fn invalid_duration_message_matches_the_documented_form() {
    rejects(
        "[limits]\n\n\n\n\n\ncommand_timeout = \"5 mins please\"\n",
        &["tern.toml:7:19: limits.command_timeout: invalid duration \"5 mins please\" (expected e.g. \"5m\", \"30s\", \"1h\"); fix: use a humantime duration"],
    );
}

#[test]
fn zero_durations_are_rejected_where_meaningless() {
    for key in ["command_timeout", "data_timeout"] {
        rejects(
            &format!("[limits]\n{key} = \"0s\"\n"),
            &[
                &format!("limits.{key}: duration \"0s\" is zero"),
                "fix: use a duration longer than zero",
            ],
        );
    }
    for key in ["connect_timeout", "command_timeout", "data_timeout"] {
        rejects(
            &format!("[outbound]\n{key} = \"0s\"\n"),
            &[&format!("outbound.{key}: duration \"0s\" is zero")],
        );
    }
    rejects(
        "[queue]\nmax_age = \"0s\"\n",
        &["queue.max_age: duration \"0s\" is zero"],
    );
    rejects(
        "[queue]\nretry_schedule = [\"5m\", \"0s\"]\n",
        &["queue.retry_schedule[1]: duration \"0s\" is zero"],
    );
    rejects(
        "[queue]\nretry_schedule = [\"5m\", \"soon\"]\n",
        &["queue.retry_schedule[1]: invalid duration \"soon\""],
    );
    rejects(
        "[queue]\ndelay_warning = \"later\"\n",
        &["queue.delay_warning: invalid duration"],
    );
}

#[test]
fn durations_are_capped_per_key() {
    let keys: [(&str, &str, Duration); 9] = [
        ("limits", "command_timeout", caps::COMMAND_TIMEOUT),
        ("limits", "data_timeout", caps::DATA_TIMEOUT),
        ("queue", "max_age", caps::QUEUE_MAX_AGE),
        ("queue", "delay_warning", caps::DELAY_WARNING),
        ("outbound", "connect_timeout", caps::CONNECT_TIMEOUT),
        (
            "outbound",
            "command_timeout",
            caps::OUTBOUND_COMMAND_TIMEOUT,
        ),
        ("outbound", "data_timeout", caps::OUTBOUND_DATA_TIMEOUT),
        (
            "outbound",
            "attempt_timeout",
            caps::OUTBOUND_ATTEMPT_TIMEOUT,
        ),
        ("queue", "retry_schedule", caps::RETRY_DELAY),
    ];
    for (section, key, cap) in keys {
        let write = |d: Duration| {
            let d = humantime::format_duration(d).to_string();
            if key == "retry_schedule" {
                format!("[{section}]\n{key} = [\"{d}\"]\n")
            } else {
                format!("[{section}]\n{key} = \"{d}\"\n")
            }
        };
        // The cap itself loads; one second more, or an absurd value, is refused with the cap.
        load(&write(cap));
        let shown = humantime::format_duration(cap).to_string();
        let path = if key == "retry_schedule" {
            format!("{section}.{key}[0]")
        } else {
            format!("{section}.{key}")
        };
        rejects(
            &write(cap + secs(1)),
            &[
                &format!("{path}: duration"),
                &format!("is longer than the maximum of {shown} for this key; fix: use at most \"{shown}\""),
            ],
        );
        rejects(
            &write(Duration::from_secs(100_000_000 * 31_557_600)),
            &[&format!("{path}: duration")],
        );
    }
    // The literal from issue 10.
    rejects(
        "[limits]\ncommand_timeout = \"100000000years\"\n",
        &["tern.toml:2:19: limits.command_timeout: duration \"100000000years\" is longer than the maximum of 1h for this key"],
    );
}

#[test]
fn retry_schedule_must_not_be_empty() {
    rejects("[queue]\nretry_schedule = []\n", &["tern.toml:2:18: queue.retry_schedule: the retry schedule is empty; fix: list at least one delay"]);
}

#[test]
fn counts_must_be_in_range() {
    for key in [
        "max_recipients",
        "max_connections",
        "max_errors",
        "max_auth_failures",
    ] {
        rejects(
            &format!("[limits]\n{key} = 0\n"),
            &[&format!(
                "limits.{key}: 0 is too small (minimum 1); fix: use a number of at least 1"
            )],
        );
    }
    for key in ["max_connections_per_ip", "max_messages_per_ip_per_minute"] {
        rejects(
            &format!("[limits]\n{key} = -1\n"),
            &[
                &format!("limits.{key}: -1 is negative"),
                "0 means unlimited",
            ],
        );
        assert_eq!(
            load(&format!("[limits]\n{key} = 0\n"))
                .limits
                .max_connections_per_ip
                == 0,
            key == "max_connections_per_ip"
        );
    }
    rejects(
        "[queue]\nmax_received_headers = 0\n",
        &["queue.max_received_headers: 0 is too small"],
    );
    rejects(
        "[outbound]\nconcurrency = 0\n",
        &["outbound.concurrency: 0 is too small"],
    );
    rejects(
        "[outbound]\nconcurrency_per_host = 0\n",
        &["outbound.concurrency_per_host: 0 is too small"],
    );
    rejects(
        "[outbound]\nmx_port = 0\n",
        &["outbound.mx_port: 0 is too small"],
    );
    rejects(
        "[outbound]\nmx_port = 70000\n",
        &["outbound.mx_port: 70000 is too large (maximum 65535)"],
    );
}

#[test]
fn sizes_are_checked() {
    rejects(
        "[limits]\nmax_message_size = 0\n",
        &["limits.max_message_size: the size is zero; fix: write a number of bytes"],
    );
    rejects(
        "[limits]\nmax_message_size = -5\n",
        &["limits.max_message_size: -5 is negative"],
    );
    rejects(
        "[limits]\nmax_header_size = \"lots\"\n",
        &["limits.max_header_size: invalid size \"lots\"", "\"25MiB\""],
    );
    rejects(
        "[limits]\nmax_header_size = \"10 parsecs\"\n",
        &["unknown unit \"parsecs\""],
    );
}

#[test]
fn hostname_and_helo_must_be_domains() {
    rejects("hostname = \"not a host\"\n", &["tern.toml:1:12: hostname: \"not a host\" is not a valid domain name; fix: use a name such as"]);
    rejects(
        "hostname = \"\"\n",
        &["hostname: \"\" is not a valid domain name"],
    );
    rejects(
        "[outbound]\nhelo_name = \"bad_name\"\n",
        &["outbound.helo_name: \"bad_name\" is not a valid domain name"],
    );
    rejects(
        "[local]\ndomains = [\"ok.test\", \"-bad.test\"]\n",
        &["local.domains[1]: \"-bad.test\" is not a valid domain name"],
    );
    rejects(
        "[local]\nqualify_domain = \"root@x\"\n",
        &["local.qualify_domain: \"root@x\" is not a valid domain name"],
    );
}

#[test]
fn bare_line_endings_is_normalize_or_reject() {
    rejects(
        "[smtp]\nbare_line_endings = \"fix\"\n",
        &["smtp.bare_line_endings: unknown bare line ending policy \"fix\"; fix: use \"normalize\""],
    );
    let c = load("[smtp]\nbare_line_endings = \"normalize\"\n");
    assert_eq!(c.smtp.bare_line_endings, BareLineEndings::Normalize);
}

#[test]
fn data_dir_must_not_be_empty() {
    rejects(
        "data_dir = \"\"\n",
        &["data_dir: the path is empty; fix: name a directory"],
    );
}

#[test]
fn listen_addresses_are_socket_addresses() {
    rejects(
        "[smtp]\nlisten = [\"localhost:25\"]\n",
        &["smtp.listen[0]: invalid listen address \"localhost:25\"; fix: write IP:PORT"],
    );
    rejects(
        "[smtp]\nlisten = [\"0.0.0.0\"]\n",
        &["smtp.listen[0]: invalid listen address"],
    );
    rejects("[smtp]\nlisten = [\"127.0.0.1:25\"]\n[submission]\nlisten = [\"127.0.0.1:25\"]\nrequire_tls_for_auth = false\n", &["submission.listen[0]: 127.0.0.1:25 is already listed in smtp.listen[0]; fix: listen on each address only once"]);
    // Port 0 (ephemeral, used by tests) may repeat.
    let c = load("[smtp]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n");
    assert_eq!(c.smtp.listen.len(), 2);
}

#[test]
fn smtp_listen_may_be_empty_only_with_another_listener() {
    rejects(
        "[smtp]\nlisten = []\n",
        &[
            "tern.toml:2:10: smtp.listen: no listener is configured",
            "fix: add an address to smtp.listen",
        ],
    );
    let c = load("[smtp]\nlisten = []\n[submission]\nlisten = [\"127.0.0.1:587\"]\nrequire_tls_for_auth = false\n");
    assert!(c.smtp.listen.is_empty());
}

#[test]
fn submissions_requires_tls() {
    rejects("[submissions]\nlisten = [\"127.0.0.1:465\"]\n", &["submissions.listen: implicit TLS (RFC 8314) needs a certificate, but there is no [tls] table; fix: add [tls]"]);
    let dir = tempfile::tempdir().unwrap();
    let c = load(&format!(
        "[submissions]\nlisten = [\"127.0.0.1:465\"]\n{}",
        tls_table(dir.path())
    ));
    assert_eq!(c.submissions.listen, [addr("127.0.0.1:465")]);
}

#[test]
fn submission_auth_over_tls_needs_tls() {
    rejects("[submission]\nlisten = [\"127.0.0.1:587\"]\n", &["submission.listen: submission.require_tls_for_auth is true but there is no [tls] table", "or set submission.require_tls_for_auth = false"]);
}

#[test]
fn tls_files_must_exist_and_be_pem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    rejects(
        &format!("[tls]\ncert = '{0}'\nkey = '{0}'\n", missing.display()),
        &[
            "tern.toml:2:8: tls.cert: cannot read",
            "missing.pem",
            "fix: correct the path or create the file",
            "tern.toml:3:7: tls.key: cannot read",
        ],
    );
    let (cert, key) = tls_files(dir.path());
    // Swapped files are caught by their PEM labels.
    rejects(
        &format!(
            "[tls]\ncert = '{}'\nkey = '{}'\n",
            key.display(),
            cert.display()
        ),
        &[
            "tls.cert: \"",
            "does not contain a PEM certificate chain",
            "tls.key: \"",
            "does not contain a PEM private key",
            "fix: point tls.cert at the PEM full-chain certificate",
        ],
    );
    rejects(
        "[tls]\ncert = ''\nkey = ''\n",
        &["tls.cert: the path is empty", "tls.key: the path is empty"],
    );
}

#[test]
fn users_are_addresses_in_local_domains_with_argon2_hashes() {
    rejects("[[users]]\nname = \"alice\"\n", &["tern.toml:2:8: users[0].name: \"alice\" is not an address; fix: write the full address"]);
    rejects(
        "[[users]]\nname = \"alice@elsewhere.test\"\n",
        &["users[0].name: the domain \"elsewhere.test\" of user \"alice@elsewhere.test\" is not a local domain; fix: add \"elsewhere.test\" to local.domains"],
    );
    rejects(
        "[[users]]\nname = \"a@localhost\"\npassword = \"hunter2\"\n",
        &["tern.toml:3:12: users[0].password: the password is not an argon2 hash (it must start with \"$argon2\"); fix: store the hash printed by `tern passwd`"],
    );
    // Starts with $argon2 but cannot verify: found at load, not at the first AUTH (issue 10).
    rejects(
        "[[users]]\nname = \"a@localhost\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$\"\n",
        &["tern.toml:3:12: users[0].password: the password hash of user \"a@localhost\" is not a usable argon2 PHC string: not a PHC string", "fix: run `tern passwd`"],
    );
    rejects(
        "[[users]]\nname = \"b@localhost\"\npassword = \"$argon2id$v=19$m=4294967295,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo\"\n",
        &["users[0].password: the password hash of user \"b@localhost\" is not a usable argon2 PHC string: memory cost m=4294967295 KiB is above"],
    );
    rejects(
        "[[users]]\nname = \"a@localhost\"\n[[users]]\nname = \"A@LOCALHOST\"\n",
        &["users[1].name: user \"a@localhost\" is already defined as users[0]"],
    );
}

#[test]
fn aliases_are_checked() {
    rejects(
        "[aliases]\n\"postmaster@localhost\" = [\"alice\"]\n",
        &[
            "aliases.\"postmaster@localhost\": target \"alice\" is not an address",
            "fix: write full addresses",
        ],
    );
    rejects(
        "[aliases]\n\"postmaster@localhost\" = []\n",
        &["the alias has no targets; fix: list one or more addresses"],
    );
    rejects(
        "[aliases]\npostmaster = [\"a@localhost\"]\n",
        &["aliases.postmaster: alias \"postmaster\" is not an address"],
    );
    rejects(
        "[aliases]\n\"x@remote.test\" = [\"a@localhost\"]\n",
        &["the domain \"remote.test\" of alias \"x@remote.test\" is not a local domain"],
    );
    rejects(
        "[aliases]\n\"X@localhost\" = [\"a@localhost\"]\n\"x@localhost\" = [\"b@localhost\"]\n",
        &["alias \"x@localhost\" is defined twice"],
    );
}

#[test]
fn trusted_networks_and_nameservers_are_checked() {
    rejects(
        "[relay]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
        &["relay.trusted_networks[0]: invalid network \"10.0.0.0/33\"; fix: write a CIDR"],
    );
    rejects(
        "[dns]\nnameservers = [\"dns.example\"]\n",
        &["dns.nameservers[0]: invalid nameserver \"dns.example\"; fix: write an IP address"],
    );
    rejects(
        "[dns]\nnameservers = [\"127.0.0.1:0\"]\n",
        &["dns.nameservers[0]: invalid nameserver"],
    );
}

#[test]
fn routes_are_checked() {
    rejects(
        "[routes]\n\"p.test\" = \"mx.p.test:99999\"\n",
        &[
            "routes.\"p.test\": invalid route \"mx.p.test:99999\": invalid port \"99999\"",
            "fix: write \"host\" or \"host:port\"",
        ],
    );
    rejects(
        "[routes]\n\"bad key!\" = \"mx.test\"\n",
        &["routes.\"bad key!\": \"bad key!\" is neither a domain name nor \"*\""],
    );
    rejects("[routes]\n\"p.test\" = { host = \"mx.p.test:25\" }\n", &["routes.\"p.test\".host: \"mx.p.test:25\" is neither a domain name nor an IP address; fix: put only the name or IP in host"]);
    rejects("[routes]\n\"p.test\" = { host = \"mx.p.test\", tls = \"always\" }\n", &["routes.\"p.test\".tls: unknown TLS policy \"always\"; fix: use one of \"none\", \"opportunistic\", \"required\""]);
    rejects(
        "[routes]\n\"p.test\" = { host = \"mx.p.test\", port = 0 }\n",
        &["routes.\"p.test\".port: 0 is too small"],
    );
    rejects("[routes]\n\"p.test\" = { host = \"mx.p.test\", user = \"u\" }\n", &["routes.\"p.test\".user: user is set but password_file is not; fix: set both user and password_file, or neither"]);
    rejects(
        "[routes]\n\"p.test\" = { host = \"mx.p.test\", password_file = \"/x\" }\n",
        &["routes.\"p.test\".password_file: password_file is set but user is not"],
    );
    rejects("[routes]\n\"p.test\" = { host = \"mx.p.test\", user = \"u\", password_file = \"/nonexistent/tern/pw\" }\n", &["routes.\"p.test\".password_file: cannot read \"/nonexistent/tern/pw\""]);
    rejects(
        "[routes]\n\"P.test\" = \"a.test\"\n\"p.test\" = \"b.test\"\n",
        &["a route for \"p.test\" is defined twice"],
    );
    rejects("[routes]\n\"p.test\" = { host = \"mx.p.test\", tls = \"required\", ca_file = \"/nonexistent/tern/ca.pem\" }\n", &["routes.\"p.test\".ca_file: cannot read \"/nonexistent/tern/ca.pem\""]);
    let c = load("[routes]\n\"v6.test\" = { host = \"[2001:db8::1]\" }\n");
    assert_eq!(c.routes["v6.test"].host, "2001:db8::1");
}

#[test]
fn route_credentials_need_required_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let pw = pw.display();
    // Not set: the default (opportunistic, unverified) is named, at the route's position.
    rejects(
        &format!("[routes]\n\"*\" = {{ host = \"smtp.provider.test\", user = \"me\", password_file = '{pw}' }}\n"),
        &[
            "tern.toml:2:7: routes.\"*\".tls: the route has user and password_file but tls is not set (so \"opportunistic\"): the password could be sent to a server whose certificate is never verified",
            "; fix: set tls = \"required\" in this route",
        ],
    );
    for policy in ["none", "opportunistic"] {
        rejects(
            &format!("[routes]\n\"p.test\" = {{ host = \"mx.p.test\", tls = \"{policy}\", user = \"me\", password_file = '{pw}' }}\n"),
            &[&format!("routes.\"p.test\".tls: the route has user and password_file but tls is \"{policy}\"")],
        );
    }
    let c = load(&format!("[routes]\n\"*\" = {{ host = \"smtp.provider.test\", tls = \"required\", user = \"me\", password_file = '{pw}' }}\n"));
    assert_eq!(c.routes["*"].tls, TlsPolicy::Required);
    // Without credentials any policy stays valid.
    load("[routes]\n\"p.test\" = { host = \"mx.p.test\", tls = \"none\" }\n");
}

#[test]
fn outbound_tls_and_log_values_are_checked() {
    rejects(
        "[outbound]\ntls = \"yes\"\n",
        &["outbound.tls: unknown TLS policy \"yes\""],
    );
    rejects("[log]\nlevel = \"verbose\"\n", &["log.level: unknown log level \"verbose\"; fix: use one of \"trace\", \"debug\", \"info\", \"warn\", \"error\""]);
    rejects(
        "[log]\nformat = \"xml\"\n",
        &["log.format: unknown log format \"xml\"; fix: use \"text\" or \"json\""],
    );
}

#[test]
fn all_validation_errors_are_collected_in_file_order() {
    let e = error("[limits]\nmax_recipients = 0\ncommand_timeout = \"soon\"\n[log]\nlevel = \"loud\"\n[queue]\nretry_schedule = []\n");
    let keys: Vec<&str> = e.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "limits.max_recipients",
            "limits.command_timeout",
            "log.level",
            "queue.retry_schedule"
        ]
    );
    assert_eq!(e.to_string().lines().count(), 4, "{e}");
    assert!(matches!(e, ConfigError::Invalid(_)));
}

// ---------------------------------------------------------------- finding the file

#[test]
fn discover_order() {
    let dir = tempfile::tempdir().unwrap();
    let explicit = dir.path().join("explicit.toml");
    let from_env = dir.path().join("env.toml");
    let system = dir.path().join("system.toml");
    std::fs::write(&explicit, "[limits]\nmax_recipients = 1\n").unwrap();
    std::fs::write(&from_env, "[limits]\nmax_recipients = 2\n").unwrap();
    std::fs::write(&system, "[limits]\nmax_recipients = 3\n").unwrap();
    let pick = |e: Option<&Path>, env: Option<&Path>, sys: &Path| {
        let c = discover_in(e, env.map(|p| p.as_os_str().to_owned()), sys).unwrap();
        (c.limits.max_recipients, c.source)
    };
    assert_eq!(
        pick(Some(&explicit), Some(&from_env), &system),
        (1, Some(explicit.clone()))
    );
    assert_eq!(
        pick(None, Some(&from_env), &system),
        (2, Some(from_env.clone()))
    );
    assert_eq!(
        pick(None, Some(Path::new("")), &system),
        (3, Some(system.clone())),
        "empty $TERN_CONFIG is ignored"
    );
    assert_eq!(pick(None, None, &system), (3, Some(system.clone())));
    let absent = dir.path().join("absent.toml");
    assert_eq!(
        pick(None, None, &absent),
        (100, None),
        "no file anywhere -> embedded defaults"
    );
}

#[test]
fn named_but_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.toml");
    let e = discover_in(Some(&absent), None, Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("absent.toml: cannot read config file (--config)")
            && e.contains("fix: create the file"),
        "{e}"
    );
    let e = discover_in(
        None,
        Some(absent.clone().into_os_string()),
        Path::new("/nonexistent"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("($TERN_CONFIG)"), "{e}");
    let e = Config::load_file(&absent).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }) && e.issues().is_empty());
}

#[test]
fn load_file_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.toml");
    std::fs::write(&path, "[log]\nlevel = \"loud\"\n").unwrap();
    let e = Config::load_file(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2:9: log.level:", path.display())),
        "{e}"
    );
    std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
    let e = Config::load_file(&path).unwrap_err().to_string();
    assert!(e.contains("fix: save the file as UTF-8 text"), "{e}");
}

#[test]
fn dkim_keys_with_defaults_and_explicit_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = tls_files(dir.path());
    let cfg = load(&format!(
        "[[dkim]]\ndomain = \"Example.TEST.\"\nselector = \"S2026\"\nkey_file = {key:?}\n\
         [[dkim]]\ndomain = \"example.test\"\nselector = \"ed\"\nkey_file = {key:?}\n\
         headers = [\"from\", \"Subject\", \"subject\"]\nsubdomains = true\n"
    ));
    assert_eq!(cfg.dkim.len(), 2);
    let rsa = &cfg.dkim[0];
    assert_eq!(rsa.domain, "example.test");
    assert_eq!(rsa.selector, "s2026");
    assert_eq!(rsa.key_file, key);
    assert_eq!(
        rsa.headers,
        defaults::DKIM_HEADERS.map(String::from).to_vec()
    );
    assert!(!rsa.subdomains);
    let ed = &cfg.dkim[1];
    assert_eq!(ed.headers, ["from", "Subject"], "deduplicated, case kept");
    assert!(ed.subdomains);
    assert!(load("").dkim.is_empty());
    assert!(Config::defaults().dkim.is_empty());
}

#[test]
fn dkim_rejects_duplicates_and_non_pem_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    rejects(
        &format!(
            "[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = {key:?}\n\
             [[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = {key:?}\n"
        ),
        &["tern.toml:7:12:", "dkim[1].selector", "configured twice"],
    );
    rejects(
        &format!("[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = {cert:?}\n"),
        &[
            "dkim[0].key_file",
            "is not a PEM private key",
            "tern dkim keygen --domain example.test --selector s1",
        ],
    );
    rejects(
        "[[dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\n",
        &["required key `key_file` is missing"],
    );
}

#[test]
fn checks_default_to_verify_everything_and_reject_dmarc_only() {
    let c = load("");
    assert_eq!(c.checks, defaults::CHECKS);
    assert!(c.checks.spf && c.checks.dkim && c.checks.dmarc && c.checks.arc);
    assert!(c.checks.dmarc_reject);
    assert!(!c.checks.spf_fail_reject);
    assert_eq!(Config::defaults().checks, defaults::CHECKS);
}

#[test]
fn checks_keys_are_read() {
    let c = load(
        "[checks]\nspf = false\ndkim = false\ndmarc = false\narc = false\ndmarc_reject = false\nspf_fail_reject = true\n",
    );
    assert_eq!(
        c.checks,
        ChecksConfig {
            spf: false,
            dkim: false,
            dmarc: false,
            arc: false,
            dmarc_reject: false,
            spf_fail_reject: true,
        }
    );
}

#[test]
fn checks_reject_wrong_types_and_unknown_keys() {
    rejects("[checks]\nspf = \"yes\"\n", &["checks.spf", "invalid type"]);
    rejects("[checks]\ndmarc_quarantine = true\n", &["dmarc_quarantine"]);
}

#[test]
fn outbound_address_policy_defaults_and_keys() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let d = load("");
    assert!(d.outbound.deny_networks.is_empty());
    assert!(d.outbound.allow_networks.is_empty());
    // The always-refused ranges, also in their IPv4-mapped form; ordinary addresses pass.
    for refused in [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.1.1",
    ] {
        assert!(
            matches!(
                d.outbound.refusal(ip(refused)),
                Some(Refusal::Reserved { .. })
            ),
            "{refused}"
        );
    }
    for ok in ["192.0.2.1", "10.1.1.1", "2001:db8::1", "::ffff:192.0.2.1"] {
        assert_eq!(d.outbound.refusal(ip(ok)), None, "{ok}");
    }
    let c = load(
        "[outbound]\ndeny_networks = [\"10.0.0.0/8\", \"2001:db8::1\", \"127.0.0.2\"]\nallow_networks = [\"127.0.0.0/8\", \"::1\"]\n",
    );
    let o = &c.outbound;
    assert_eq!(o.refusal(ip("127.0.0.1")), None);
    assert_eq!(o.refusal(ip("::ffff:127.0.0.1")), None);
    assert_eq!(o.refusal(ip("::1")), None);
    // deny_networks wins over allow_networks, and catches the mapped form too.
    assert_eq!(
        o.refusal(ip("127.0.0.2")),
        Some(Refusal::Denied("127.0.0.2/32".parse().unwrap()))
    );
    assert_eq!(
        o.refusal(ip("::ffff:10.2.3.4")),
        Some(Refusal::Denied("10.0.0.0/8".parse().unwrap()))
    );
    assert!(o.refusal(ip("2001:db8::1")).is_some());
    assert_eq!(o.refusal(ip("2001:db8::2")), None);
    // Link-local is still refused: only loopback was allowed.
    assert!(o.refusal(ip("169.254.0.1")).is_some());
    let text = o.refusal(ip("127.0.0.2")).unwrap().to_string();
    assert_eq!(text, "in outbound.deny_networks (127.0.0.2/32)");
    let text = d.outbound.refusal(ip("127.0.0.1")).unwrap().to_string();
    assert!(text.starts_with("loopback (127.0.0.0/8)"), "{text}");
    assert!(text.contains("outbound.allow_networks"), "{text}");
}

#[test]
fn outbound_networks_are_checked() {
    rejects(
        "[outbound]\ndeny_networks = [\"10.0.0.0/33\"]\n",
        &["outbound.deny_networks[0]: invalid network \"10.0.0.0/33\"; fix: write a CIDR"],
    );
    rejects(
        "[outbound]\ndeny_networks = [\"::ffff:10.0.0.0/104\"]\n",
        &[
            "outbound.deny_networks[0]: \"::ffff:10.0.0.0/104\" is an IPv4-mapped IPv6 network",
            "write the IPv4 network instead",
        ],
    );
    rejects(
        "[outbound]\nallow_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n",
        &[
            "outbound.allow_networks[1]: 10.0.0.0/8 is not inside a range tern refuses",
            "fix: list only parts of 127.0.0.0/8",
        ],
    );
    // A range wider than the refused one allows more than it can: refused too.
    rejects(
        "[outbound]\nallow_networks = [\"127.0.0.0/7\"]\n",
        &["outbound.allow_networks[0]: 126.0.0.0/7 is not inside"],
    );
    rejects(
        "[outbound]\nallow_networks = \"127.0.0.0/8\"\n",
        &["outbound.allow_networks", "write a list of networks"],
    );
}

#[test]
fn min_data_rate_defaults_sizes_and_off() {
    let d = load("");
    let rate = d.outbound.min_data_rate.expect("on by default");
    assert_eq!(rate.bytes_per_sec.get(), 1024);
    assert_eq!(rate.grace, secs(30));
    let c = load("[outbound]\nmin_data_rate = \"64KiB\"\nmin_data_rate_grace = \"1s\"\n");
    let rate = c.outbound.min_data_rate.unwrap();
    assert_eq!((rate.bytes_per_sec.get(), rate.grace), (64 * 1024, secs(1)));
    let c = load("[outbound]\nmin_data_rate = 500\nmin_data_rate_grace = \"0s\"\n");
    let rate = c.outbound.min_data_rate.unwrap();
    assert_eq!((rate.bytes_per_sec.get(), rate.grace), (500, secs(0)));
    assert_eq!(
        load("[outbound]\nmin_data_rate = 0\n")
            .outbound
            .min_data_rate,
        None
    );
    rejects(
        "[outbound]\nmin_data_rate = -1\n",
        &[
            "outbound.min_data_rate: -1 is negative",
            "or 0 for no minimum",
        ],
    );
    rejects(
        "[outbound]\nmin_data_rate = \"fast\"\n",
        &["outbound.min_data_rate: invalid rate \"fast\""],
    );
    rejects(
        "[outbound]\nmin_data_rate_grace = \"2h\"\n",
        &["outbound.min_data_rate_grace", "use at most \"1h\""],
    );
    rejects(
        "[outbound]\nmin_data_rate_grace = \"soon\"\n",
        &["outbound.min_data_rate_grace: invalid duration \"soon\""],
    );
}

#[test]
fn local_delivery_is_maildir_or_lmtp_with_its_address() {
    use crate::{LmtpAddress, LocalDelivery};
    assert_eq!(Config::defaults().local.delivery, LocalDelivery::Maildir);
    assert_eq!(
        load("[local]\ndelivery = \"maildir\"\n")
            .local
            .delivery
            .lmtp(),
        None
    );
    let c = load("[local]\ndelivery = \"lmtp\"\nlmtp = \"unix:/run/dovecot/lmtp\"\n");
    assert_eq!(
        c.local.delivery,
        LocalDelivery::Lmtp(LmtpAddress::Unix(PathBuf::from("/run/dovecot/lmtp")))
    );
    assert_eq!(
        c.local.delivery.lmtp().map(ToString::to_string).as_deref(),
        Some("unix:/run/dovecot/lmtp")
    );
    let c = load("[local]\ndelivery = \"LMTP\"\nlmtp = \"inet:127.0.0.1:24\"\n");
    assert_eq!(
        c.local.delivery.lmtp(),
        Some(&LmtpAddress::Inet(addr("127.0.0.1:24")))
    );
}

#[test]
fn local_delivery_per_domain_overrides_the_default() {
    use crate::{LmtpAddress, LocalDelivery};
    let c = load(
        "[local]\ndomains = [\"a.test\", \"b.test\"]\n\
         [local.per_domain.\"B.test\"]\ndelivery = \"lmtp\"\nlmtp = \"inet:127.0.0.1:24\"\n",
    );
    assert_eq!(c.local.delivery_for("a.test"), &LocalDelivery::Maildir);
    assert_eq!(
        c.local.lmtp_for("b.test"),
        Some(&LmtpAddress::Inet(addr("127.0.0.1:24")))
    );
    assert_eq!(
        c.local.lmtp_for_mailbox("bob@B.TEST"),
        Some(&LmtpAddress::Inet(addr("127.0.0.1:24")))
    );
    assert_eq!(c.local.lmtp_for_mailbox("alice@a.test"), None);
    assert!(c.local.any_lmtp());
    // The other way round: LMTP by default, one domain kept in tern's Maildirs.
    let c = load(
        "[local]\ndomains = [\"a.test\", \"b.test\"]\ndelivery = \"lmtp\"\n\
         lmtp = \"unix:/run/dovecot/lmtp\"\n[local.per_domain.\"a.test\"]\ndelivery = \"maildir\"\n",
    );
    assert_eq!(c.local.lmtp_for("a.test"), None);
    assert_eq!(
        c.local
            .lmtp_for("b.test")
            .map(ToString::to_string)
            .as_deref(),
        Some("unix:/run/dovecot/lmtp")
    );
    assert!(!Config::defaults().local.any_lmtp());
}

#[test]
fn local_delivery_per_domain_errors_name_the_key_and_the_fix() {
    rejects(
        "[local]\ndomains = [\"a.test\"]\n[local.per_domain.\"c.test\"]\ndelivery = \"maildir\"\n",
        &[
            "local.per_domain.\"c.test\": c.test is not one of local.domains",
            "fix: add \"c.test\" to local.domains",
        ],
    );
    rejects(
        "[local]\ndomains = [\"a.test\"]\n[local.per_domain.\"a.test\"]\ndelivery = \"lmtp\"\n",
        &["local.per_domain.\"a.test\".lmtp: local.per_domain.\"a.test\".delivery = \"lmtp\" needs the address"],
    );
    rejects(
        "[local]\ndomains = [\"a.test\"]\n[local.per_domain.\"a.test\"]\nlmtp = \"inet:127.0.0.1:24\"\n",
        &["local.per_domain.\"a.test\".delivery: a per-domain entry needs delivery"],
    );
    rejects(
        "[local]\ndomains = [\"a.test\"]\n[local.per_domain.\"a.test\"]\ndelivery = \"maildir\"\nfolder = \"x\"\n",
        &["local.per_domain.\"a.test\".folder: unknown key `folder`"],
    );
}

#[test]
fn local_delivery_errors_name_the_key_and_the_fix() {
    rejects(
        "[local]\ndelivery = \"lmtp\"\n",
        &[
            "local.lmtp: local.delivery = \"lmtp\" needs the address of the LMTP server",
            "fix: add local.lmtp = \"unix:/run/dovecot/lmtp\"",
        ],
    );
    rejects(
        "[local]\nlmtp = \"unix:/run/dovecot/lmtp\"\n",
        &[
            "local.lmtp: local.lmtp is set but local.delivery is \"maildir\"",
            "fix: set local.delivery = \"lmtp\"",
        ],
    );
    rejects(
        "[local]\ndelivery = \"maildir\"\nlmtp = \"inet:127.0.0.1:24\"\n",
        &["local.lmtp: local.lmtp is set but local.delivery is \"maildir\""],
    );
    rejects(
        "[local]\ndelivery = \"dovecot\"\n",
        &[
            "local.delivery: unknown local delivery \"dovecot\"",
            "fix: use \"maildir\"",
        ],
    );
    for bad in [
        "/run/dovecot/lmtp",
        "unix:relative/lmtp",
        "inet:127.0.0.1",
        "inet:mail.test:24",
    ] {
        rejects(
            &format!("[local]\ndelivery = \"lmtp\"\nlmtp = \"{bad}\"\n"),
            &[
                &format!("local.lmtp: invalid LMTP address \"{bad}\""),
                "fix: write \"unix:/absolute/path\"",
            ],
        );
    }
}

#[test]
fn mta_sts_is_on_by_default_with_its_port_and_ca_file() {
    let d = load("");
    assert!(d.outbound.mta_sts);
    assert_eq!(d.outbound.mta_sts_port, 443);
    assert_eq!(d.outbound.mta_sts_ca_file, None);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let c = load(&format!(
        "[outbound]\nmta_sts = false\nmta_sts_port = 8443\nmta_sts_ca_file = \"{}\"\n",
        ca.display()
    ));
    assert!(!c.outbound.mta_sts);
    assert_eq!(c.outbound.mta_sts_port, 8443);
    assert_eq!(c.outbound.mta_sts_ca_file, Some(ca));
    rejects(
        "[outbound]\nmta_sts_port = 0\n",
        &["outbound.mta_sts_port: 0 is too small"],
    );
    rejects(
        "[outbound]\nmta_sts_ca_file = \"/nonexistent/ca.pem\"\n",
        &[
            "outbound.mta_sts_ca_file",
            "cannot read \"/nonexistent/ca.pem\"",
        ],
    );
    rejects(
        "[outbound]\nmta_sts = \"yes\"\n",
        &["outbound.mta_sts", "write true or false"],
    );
    // A reload applies them (the relay is rebuilt from the new config).
    let changes = crate::diff::diff(
        "",
        "[outbound]\nmta_sts = false\nmta_sts_port = 8443\nmta_sts_ca_file = \"/x\"\n",
    )
    .unwrap();
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| !c.needs_restart), "{changes:?}");
}

#[test]
fn tls_rpt_is_off_by_default_and_follows_helo_name() {
    let d = Config::defaults();
    assert!(!d.tls_rpt.enabled);
    assert_eq!(d.tls_rpt.interval, Duration::from_secs(24 * 60 * MIN));
    let c = load("hostname = \"h.test\"\n[outbound]\nhelo_name = \"mx.h.test\"\n");
    assert_eq!(c.tls_rpt.organization, "mx.h.test");
    assert_eq!(c.tls_rpt.contact, "postmaster@mx.h.test");
    assert_eq!(c.tls_rpt.from, "postmaster@mx.h.test");
    let c = load(
        "[tls_rpt]\nenabled = true\ninterval = \"2s\"\norganization = \"Example Org\"\ncontact = \"https://example.test/tls\"\nfrom = \"reports@example.test\"\n",
    );
    assert!(c.tls_rpt.enabled);
    assert_eq!(c.tls_rpt.interval, Duration::from_secs(2));
    assert_eq!(c.tls_rpt.organization, "Example Org");
    assert_eq!(c.tls_rpt.contact, "https://example.test/tls");
    assert_eq!(c.tls_rpt.from, "reports@example.test");
}

#[test]
fn tls_rpt_errors_name_the_key() {
    rejects(
        "[tls_rpt]\nfrom = \"not an address\"\n",
        &["tls_rpt.from", "is not a mail address"],
    );
    rejects(
        "[tls_rpt]\ninterval = \"0s\"\n",
        &["tls_rpt.interval", "zero"],
    );
    rejects(
        "[tls_rpt]\ninterval = \"30days\"\n",
        &["tls_rpt.interval", "longer than the maximum"],
    );
    rejects(
        "[tls_rpt]\nenabled = \"yes\"\n",
        &["tls_rpt.enabled", "true or false"],
    );
    rejects(
        "[tls_rpt]\nsecret = 1\n",
        &["tls_rpt.secret", "unknown key"],
    );
    rejects(
        "[tls_rpt]\norganization = \" \"\n",
        &["tls_rpt.organization", "empty"],
    );
    let d = crate::diff::diff("", "[tls_rpt]\nenabled = true\n").unwrap();
    assert!(d[0].key == "tls_rpt.enabled" && d[0].needs_restart);
}

#[test]
fn dane_keys_default_parse_and_reload() {
    let d = load("");
    assert!(d.outbound.dane);
    assert_eq!(d.dns.dnssec_trust_anchor, None);
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("test.key");
    std::fs::write(&anchor, "test. 3600 IN DNSKEY 257 3 13 AAAA\n").unwrap();
    let c = load(&format!(
        "[dns]\ndnssec_trust_anchor = \"{}\"\n[outbound]\ndane = false\n[routes]\n\"a.test\" = {{ host = \"mx.a.test\", dane = true }}\n\"b.test\" = \"mx.b.test\"\n",
        anchor.display()
    ));
    assert!(!c.outbound.dane);
    assert_eq!(c.dns.dnssec_trust_anchor, Some(anchor));
    assert!(c.routes["a.test"].dane);
    assert!(!c.routes["b.test"].dane);
    rejects(
        "[outbound]\ndane = \"yes\"\n",
        &["outbound.dane", "write true or false"],
    );
    rejects(
        "[dns]\ndnssec_trust_anchor = \"/nonexistent/root.key\"\n",
        &["dns.dnssec_trust_anchor"],
    );
    // Both apply on reload (the relay's resolver and connector are rebuilt).
    let d = crate::diff::diff(
        "",
        "[outbound]\ndane = false\n[dns]\ndnssec_trust_anchor = \"/x\"\n",
    )
    .unwrap();
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|c| !c.needs_restart), "{d:?}");
}
