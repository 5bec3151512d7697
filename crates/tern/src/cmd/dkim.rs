//! `tern dkim`: make a DKIM key and print the DNS record to publish (`keygen`), print the record
//! of an existing key again (`record`), and ask the DNS whether the published record matches
//! the key (`check`), and verify the signatures of a message file (`verify`). The key handling
//! and verification are tern-auth's; this module is the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tern_auth::{check_record, generate_key, DkimRecord, KeyAlgorithm, PrivateKey, RecordCheck};
use tern_config::{Config, DkimConfig};
use tern_dns::{setup_resolver, DnsError};

const PROG: &str = "tern dkim";

/// sysexits.h codes, as the other subcommands use them.
pub(crate) mod exit {
    pub const MISMATCH: u8 = 1;
    pub const USAGE: u8 = 64;
    pub const NOINPUT: u8 = 66;
    pub const SOFTWARE: u8 = 70;
    pub const CANTCREAT: u8 = 73;
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}

#[derive(Subcommand)]
pub enum DkimAction {
    /// Write a new private key (mode 0600, never over an existing file) and print its TXT record.
    Keygen {
        /// The signing domain (d=), e.g. example.test.
        #[arg(long)]
        domain: String,
        /// The selector (s=): the record goes to SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value_t = AlgorithmArg::Rsa2048)]
        algorithm: AlgorithmArg,
        /// Where to write the PEM key (the [[dkim]] key_file).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the TXT record of an existing key again.
    Record {
        /// The PEM key file.
        #[arg(long)]
        key: PathBuf,
        /// With --selector: print the record as a zone-file line under its name (default: the
        /// [[dkim]] entry of the config whose key_file this is, else the record text only).
        #[arg(long, requires = "selector")]
        domain: Option<String>,
        #[arg(long, requires = "domain")]
        selector: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Look up SELECTOR._domainkey.DOMAIN and say whether it publishes the key.
    Check {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// The PEM key file (default: key_file of the config's [[dkim]] entry for the domain
        /// and selector).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Ask this DNS server (ip:port) instead of [dns] nameservers or the system resolver.
        #[arg(long)]
        nameserver: Option<SocketAddr>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Verify every DKIM-Signature of a message file (RFC 6376) and print each result and an
    /// Authentication-Results field. Exit 0: every signature passes; 1: one fails or there is
    /// none; 75: a key could not be looked up (DNS), none failed.
    Verify {
        /// The message (header, empty line, body); `-` reads stdin. LF line endings are read
        /// as CRLF.
        file: PathBuf,
        /// Ask this DNS server (ip:port) instead of [dns] nameservers or the system resolver.
        #[arg(long)]
        nameserver: Option<SocketAddr>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
pub struct ConfigArg {
    /// Config file (default: $TERN_CONFIG, else /etc/tern/tern.toml if present).
    #[arg(long, short = 'c', env = "TERN_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// RSA, 2048 bits: what every receiver verifies (the default).
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// RSA, 4096 bits: the record no longer fits some DNS control panels.
    #[value(name = "rsa-4096")]
    Rsa4096,
    /// Ed25519 (RFC 8463): short, but not verified everywhere; pair it with an RSA key.
    #[value(name = "ed25519")]
    Ed25519,
}

impl From<AlgorithmArg> for KeyAlgorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::Rsa2048 => KeyAlgorithm::Rsa2048,
            AlgorithmArg::Rsa4096 => KeyAlgorithm::Rsa4096,
            AlgorithmArg::Ed25519 => KeyAlgorithm::Ed25519,
        }
    }
}

/// A failure: the exit code and what to tell the user.
pub(crate) struct Failed(pub(crate) u8, pub(crate) String);

pub fn run(action: DkimAction) -> ExitCode {
    let result = match action {
        DkimAction::Keygen {
            domain,
            selector,
            algorithm,
            out,
        } => keygen(&domain, &selector, algorithm.into(), &out),
        DkimAction::Record {
            key,
            domain,
            selector,
            config,
        } => record(&key, domain.zip(selector), &config),
        DkimAction::Check {
            domain,
            selector,
            key,
            nameserver,
            config,
        } => check(&domain, &selector, key, nameserver, &config),
        DkimAction::Verify {
            file,
            nameserver,
            config,
        } => super::dkim_verify::verify(&file, nameserver, &config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, message)) => {
            eprintln!("{PROG}: {message}");
            ExitCode::from(code)
        }
    }
}

/// Lower-case DNS labels (RFC 6376 3.1: a selector is a sub-domain; d= a domain name).
fn name(what: &str, value: &str) -> Result<String, Failed> {
    let v = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if v.is_empty() || v.len() > 253 || !v.split('.').all(label_ok) {
        return Err(Failed(
            exit::USAGE,
            format!("--{what} {value:?} is not a DNS name (letters, digits, hyphens, dots)"),
        ));
    }
    Ok(v)
}

fn keygen(domain: &str, selector: &str, algorithm: KeyAlgorithm, out: &Path) -> Result<(), Failed> {
    let domain = name("domain", domain)?;
    let selector = name("selector", selector)?;
    let pem = generate_key(algorithm).map_err(|e| Failed(exit::SOFTWARE, e.to_string()))?;
    // Read back through the loader the server uses: what is printed is what will be signed with.
    let key =
        PrivateKey::from_pem(pem.as_bytes()).map_err(|e| Failed(exit::SOFTWARE, e.to_string()))?;
    write_exclusive(out, pem.as_bytes()).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it exists; a key is never overwritten (its record may be published): choose another --out or a new selector".to_string()
        } else {
            e.to_string()
        };
        Failed(exit::CANTCREAT, format!("cannot write {}: {why}", out.display()))
    })?;
    let record = DkimRecord::new(&domain, &selector, &key);
    eprintln!(
        "wrote {} ({}, mode 0600). Publish this TXT record, then add to the config:\n\
         [[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"",
        out.display(),
        key.key_type(),
        out.display()
    );
    println!("{}", record.zone_line());
    Ok(())
}

/// Created only if absent, readable by the owner only, on disk before we say it is written.
pub(crate) fn write_exclusive(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn load_key(path: &Path) -> Result<PrivateKey, Failed> {
    PrivateKey::load(path).map_err(|e| {
        let code = match e {
            tern_auth::KeyError::Read { .. } => exit::NOINPUT,
            _ => exit::CONFIG,
        };
        Failed(code, e.to_string())
    })
}

/// The config, when there is one: an explicit file must load; none at all is fine.
pub(crate) fn config(arg: &ConfigArg) -> Result<Option<Config>, Failed> {
    match Config::discover(arg.config.as_deref()) {
        Ok(cfg) if cfg.source.is_some() => Ok(Some(cfg)),
        Ok(_) => Ok(None),
        Err(e) => Err(Failed(exit::CONFIG, e.to_string())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn record(key_file: &Path, named: Option<(String, String)>, arg: &ConfigArg) -> Result<(), Failed> {
    let key = load_key(key_file)?;
    let named = match named {
        Some((d, s)) => Some((name("domain", &d)?, name("selector", &s)?)),
        None => config(arg)?.and_then(|cfg| {
            cfg.dkim
                .iter()
                .find(|k| same_file(&k.key_file, key_file))
                .map(|k| (k.domain.clone(), k.selector.clone()))
        }),
    };
    match named {
        Some((domain, selector)) => {
            println!("{}", DkimRecord::new(&domain, &selector, &key).zone_line())
        }
        None => {
            eprintln!("(publish at SELECTOR._domainkey.DOMAIN; give --domain and --selector for the full line)");
            println!("{}", DkimRecord::new("DOMAIN", "SELECTOR", &key).value);
        }
    }
    Ok(())
}

fn check(
    domain: &str,
    selector: &str,
    key_file: Option<PathBuf>,
    nameserver: Option<SocketAddr>,
    arg: &ConfigArg,
) -> Result<(), Failed> {
    let domain = name("domain", domain)?;
    let selector = name("selector", selector)?;
    let cfg = config(arg)?;
    let key_file = match key_file {
        Some(k) => k,
        None => cfg
            .as_ref()
            .and_then(|c| c.dkim.iter().find(|k: &&DkimConfig| k.domain == domain && k.selector == selector))
            .map(|k| k.key_file.clone())
            .ok_or_else(|| {
                Failed(
                    exit::USAGE,
                    format!("no [[dkim]] entry for {domain} selector {selector} in the config: give --key FILE"),
                )
            })?,
    };
    let key = load_key(&key_file)?;
    let expected = DkimRecord::new(&domain, &selector, &key);
    let nameservers = match (nameserver, &cfg) {
        (Some(ns), _) => vec![ns],
        (None, Some(c)) => c.dns.nameservers.clone(),
        (None, None) => Vec::new(),
    };
    let records = lookup(&expected.name, &nameservers)?;
    match check_record(&key, &records) {
        RecordCheck::Matches => {
            println!(
                "OK: {} publishes the key of {} ({})",
                expected.name,
                key_file.display(),
                key.key_type()
            );
            Ok(())
        }
        RecordCheck::Missing => Err(Failed(
            exit::MISMATCH,
            format!(
                "MISSING: no DKIM record at {}; publish:\n{}",
                expected.name,
                expected.zone_line()
            ),
        )),
        RecordCheck::Mismatch(why) => Err(Failed(
            exit::MISMATCH,
            format!(
                "MISMATCH: the record at {} does not match the key of {}:\n  {}\npublish instead:\n{}",
                expected.name,
                key_file.display(),
                why.join("\n  "),
                expected.zone_line()
            ),
        )),
    }
}

/// The TXT records at `name` (NXDOMAIN is simply none).
fn lookup(name: &str, nameservers: &[SocketAddr]) -> Result<Vec<Vec<u8>>, Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed(exit::SOFTWARE, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let setup = setup_resolver(nameservers, Duration::from_secs(5));
        if let Some(e) = setup.fallback {
            return Err(Failed(exit::TEMPFAIL, format!("DNS resolver: {e}")));
        }
        match setup.resolver.txt(name).await {
            Ok(records) => Ok(records),
            Err(DnsError::NxDomain(_)) => Ok(Vec::new()),
            Err(e) => Err(Failed(
                exit::TEMPFAIL,
                format!("cannot look up {name}: {e}"),
            )),
        }
    })
}
