//! The complete example configurations (the task's and the one in docs/configuration.md) load as documented.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tern_config::{Config, LogFormat, TlsPolicy};

/// Writes stand-in PEM files, a password file and an SRS secret, and points the example's paths at them.
fn with_files(text: &str, dir: &Path) -> anyhow::Result<String> {
    let cert = dir.join("fullchain.pem");
    let key = dir.join("key.pem");
    let pw = dir.join("pw");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )?;
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    )?;
    std::fs::write(&pw, "relay-secret\n")?;
    let srs = dir.join("srs.secret");
    std::fs::write(&srs, "an-srs-secret-of-enough-length\n")?;
    Ok(text
        .replace("/etc/tern/srs.secret", &srs.display().to_string())
        .replace("/etc/tern/fullchain.pem", &cert.display().to_string())
        .replace("/etc/tern/key.pem", &key.display().to_string())
        .replace("/etc/tern/relay-password", &pw.display().to_string()))
}

const TASK_EXAMPLE: &str = r#"
hostname = "mx.example.test"
data_dir = "/var/lib/tern"
[smtp]
listen = ["0.0.0.0:25", "[::]:25"]
[submission]
listen = []
require_tls_for_auth = true
enforce_sender = true
[submissions]
listen = []
[tls]
cert = "/etc/tern/fullchain.pem"
key = "/etc/tern/key.pem"
[limits]
max_message_size = 26214400
max_recipients = 100
max_connections = 1000
max_connections_per_ip = 100
max_messages_per_ip_per_minute = 0
max_errors = 20
max_header_size = 1048576
max_auth_failures = 5
command_timeout = "5m"
data_timeout = "10m"
[local]
domains = ["example.test"]
catch_all = false
vrfy = false
expn = false
[[users]]
name = "alice@example.test"
password = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo"
[aliases]
"postmaster@example.test" = ["alice@example.test", "bob@remote.test"]
[relay]
trusted_networks = ["127.0.0.0/8", "::1/128"]
[routes]
"partner.test" = "127.0.0.1:2626"
"other.test" = { host = "mx.other.test", port = 2526, tls = "required", user = "u", password_file = "/etc/tern/relay-password" }
"*" = { host = "smarthost.test", port = 587, tls = "required" }
[dns]
nameservers = ["127.0.0.1:5353"]
[queue]
max_age = "5d"
retry_schedule = ["5m", "10m", "20m", "40m", "1h"]
max_received_headers = 50
delay_warning = "4h"
[outbound]
mx_port = 25
concurrency = 50
concurrency_per_host = 5
tls = "opportunistic"
helo_name = "mx.example.test"
connect_timeout = "30s"
command_timeout = "5m"
data_timeout = "10m"
[log]
level = "info"
format = "text"
"#;

#[test]
fn the_full_example_parses() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text = with_files(TASK_EXAMPLE, dir.path())?;
    let c = Config::from_toml_str(&text, Path::new("tern.toml"))?;
    assert_eq!(c.hostname, "mx.example.test");
    assert_eq!(
        c.smtp.listen,
        ["0.0.0.0:25".parse::<SocketAddr>()?, "[::]:25".parse()?]
    );
    assert_eq!(
        c.tls.as_ref().map(|t| t.cert.clone()),
        Some(dir.path().join("fullchain.pem"))
    );
    assert_eq!(c.limits.data_timeout, Duration::from_secs(600));
    assert!(c.is_local_domain("Example.Test."));
    assert!(!c.is_local_domain("localhost"));
    assert!(c.user("ALICE@example.test").is_some());
    assert!(!c.local.catch_all);
    assert_eq!(c.aliases["postmaster@example.test"].len(), 2);
    assert_eq!(
        c.route_for("partner.test")
            .map(|r| (r.host.as_str(), r.port)),
        Some(("127.0.0.1", 2626))
    );
    let other = c
        .route_for("OTHER.test")
        .ok_or_else(|| anyhow::anyhow!("no route"))?;
    assert_eq!(other.tls, TlsPolicy::Required);
    assert_eq!(
        other
            .auth
            .as_ref()
            .map(|a| a.read_password())
            .transpose()?
            .as_deref(),
        Some("relay-secret")
    );
    assert_eq!(c.route_for("anything.test").map(|r| r.port), Some(587));
    assert_eq!(c.dns.nameservers, ["127.0.0.1:5353".parse::<SocketAddr>()?]);
    assert_eq!(c.queue.delay_warning, Some(Duration::from_secs(4 * 3600)));
    assert_eq!(c.outbound.tls, TlsPolicy::Opportunistic);
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(c.is_trusted("::ffff:127.0.0.1".parse()?));
    Ok(())
}

/// The example in docs/configuration.md is the first ```toml block after "## Complete example".
#[test]
fn the_documented_example_parses() -> anyhow::Result<()> {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let section = doc
        .split_once("## Complete example")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("no complete example in {}", doc_path.display()))?;
    let block = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .ok_or_else(|| anyhow::anyhow!("no toml block"))?;
    let dir = tempfile::tempdir()?;
    let text = with_files(block, dir.path())?;
    let c = Config::from_toml_str(&text, Path::new("docs/configuration.md"))?;
    assert!(c.tls.is_some());
    assert!(!c.submissions.listen.is_empty());
    assert!(!c.users.is_empty());
    assert!(!c.routes.is_empty());
    assert_eq!(c.local.qualify_domain, "example.test");
    assert_eq!(
        c.smtp.bare_line_endings,
        tern_config::BareLineEndings::Normalize
    );
    Ok(())
}

/// Every ```toml snippet in the docs (outside the complete example) must at least parse against the schema
/// or fail only because it names files that do not exist here.
#[test]
fn documented_snippets_use_real_keys() -> anyhow::Result<()> {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let dir = tempfile::tempdir()?;
    let mut count = 0;
    for block in doc.split("```toml\n").skip(1) {
        let Some((block, _)) = block.split_once("\n```") else {
            continue;
        };
        count += 1;
        let text = with_files(block, dir.path())?;
        if let Err(e) = Config::from_toml_str(&text, Path::new("snippet.toml")) {
            anyhow::bail!("documented snippet is rejected:\n{block}\n---\n{e}");
        }
    }
    assert!(count >= 2, "expected toml snippets in the docs");
    Ok(())
}
