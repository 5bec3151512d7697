//! `tern send`: compose a message (text, HTML, attachments) and deliver it through a server or
//! straight to the recipients' MX hosts, with exit codes a script can rely on (see exit.rs).

pub mod deliver;
pub mod exit;
pub mod helo;
pub mod message;
pub mod qualify;
pub mod report;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tern_client::{
    load_ca_file, AuthChannel, CertFingerprint, ConnectOptions, Credentials, Direction, HeloName,
    SessionOptions, Timeouts, TlsMode,
};
use tern_dns::{setup_resolver, Resolver};
use tern_proto::Address;

use deliver::Route;
use message::{Attachment, Compose, Mailbox};

const PROG: &str = "tern send";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsArg {
    /// STARTTLS or fail.
    Required,
    /// STARTTLS when offered (default).
    Opportunistic,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Never encrypt.
    None,
}

/// Compose a message and send it (exit codes below).
#[derive(Debug, Args)]
#[command(after_help = exit::HELP)]
pub struct SendArgs {
    /// Sender address (envelope and From:), `addr` or `Name <addr>`.
    #[arg(long, value_name = "ADDRESS")]
    pub from: String,
    /// Recipient (To:); repeat for more.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Recipient (Cc:); repeat for more.
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Vec<String>,
    /// Hidden recipient: in the envelope only, never in a header.
    #[arg(long, value_name = "ADDRESS")]
    pub bcc: Vec<String>,
    #[arg(long)]
    pub subject: Option<String>,
    /// Text body (UTF-8); default: standard input, unless it is a terminal.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// HTML alternative of the body (multipart/alternative).
    #[arg(long, value_name = "FILE")]
    pub html_file: Option<PathBuf>,
    /// Attach a file (base64, content type from its name); repeat for more.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Extra header field, e.g. --header "Reply-To: a@b.example"; repeat for more.
    #[arg(long, value_name = "NAME: VALUE")]
    pub header: Vec<String>,
    /// Send through this server instead of the recipients' MX hosts.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: Option<String>,
    /// Port for --server without one and for MX delivery (default 25, 465 with --tls implicit;
    /// MX delivery also honours $TERN_MX_PORT).
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_enum, default_value_t = TlsArg::Opportunistic)]
    pub tls: TlsArg,
    /// Trust this CA certificate (PEM) in addition to the system roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Accept exactly the server certificate with this SHA-256 fingerprint (hex, colons
    /// optional, e.g. from `openssl x509 -noout -fingerprint -sha256`), for a self-signed server;
    /// chain and name are then not checked.
    #[arg(long, value_name = "SHA256")]
    pub tls_fingerprint: Option<String>,
    /// Do not verify the server certificate (encryption without authentication).
    #[arg(long)]
    pub insecure: bool,
    /// AUTH user name (PLAIN or LOGIN; only over TLS whose certificate verifies, unless
    /// --allow-plaintext-auth).
    #[arg(long, requires = "password_file")]
    pub user: Option<String>,
    /// File holding the AUTH password (first line).
    #[arg(long, value_name = "FILE", requires = "user")]
    pub password_file: Option<PathBuf>,
    /// Allow AUTH where the password is not protected: without TLS, or over TLS whose
    /// certificate does not verify.
    #[arg(long)]
    pub allow_plaintext_auth: bool,
    /// Cap every SMTP timeout (connect, greeting, each command, data) at this, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Name to send in EHLO (default: the config's hostname, else this host's canonical name,
    /// if fully qualified; else the address literal of the local socket, e.g. [192.0.2.1]).
    #[arg(long)]
    pub helo: Option<String>,
    /// Print the envelope and the message instead of sending.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the SMTP transcript (C:/S: lines, AUTH redacted) and each recipient's outcome.
    #[arg(short, long)]
    pub verbose: bool,
}

/// A failure before anything was sent: the message and the exit code.
struct Early(u8, String);

pub fn run(args: Box<SendArgs>) -> ExitCode {
    match prepare(&args) {
        Ok(job) => execute(job, args.verbose),
        Err(Early(code, msg)) => {
            eprintln!("{PROG}: {msg}");
            ExitCode::from(code)
        }
    }
}

struct Job {
    route: Route,
    opts: ConnectOptions,
    from: String,
    rcpts: Vec<String>,
    message: Vec<u8>,
    dry_run: bool,
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Early> {
    std::fs::read(path).map_err(|e| {
        Early(
            exit::NOINPUT,
            format!("cannot read {what} {}: {e}", path.display()),
        )
    })
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, Early> {
    String::from_utf8(bytes).map_err(|_| Early(exit::DATAERR, format!("{what} is not valid UTF-8")))
}

/// Parses `addr` or `Name <addr>`, qualifying an address without a domain (`root` ->
/// `root@<local.qualify_domain>`, see qualify.rs).
fn check_addr(s: &str, flag: &str, qualify_domain: &str) -> Result<Mailbox, Early> {
    let mut m = Mailbox::parse(s);
    m.addr = qualify::address(&m.addr, qualify_domain);
    Address::parse(&m.addr).map_err(|e| {
        Early(
            exit::USAGE,
            format!("invalid address {s:?} for {flag}: {e}"),
        )
    })?;
    Ok(m)
}

fn prepare(args: &SendArgs) -> Result<Job, Early> {
    // The config names the qualify domain and our host name (embedded defaults without one).
    let config =
        tern_config::Config::discover(None).map_err(|e| Early(exit::CONFIG, e.to_string()))?;
    let qd = config.local.qualify_domain.as_str();
    // Addresses first: a usage error should not wait for stdin.
    let from = check_addr(&args.from, "--from", qd)?;
    let to = args
        .to
        .iter()
        .map(|a| check_addr(a, "--to", qd))
        .collect::<Result<Vec<_>, _>>()?;
    let cc = args
        .cc
        .iter()
        .map(|a| check_addr(a, "--cc", qd))
        .collect::<Result<Vec<_>, _>>()?;
    let bcc = args
        .bcc
        .iter()
        .map(|a| check_addr(a, "--bcc", qd))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rcpts: Vec<String> = Vec::new();
    for m in to.iter().chain(&cc).chain(&bcc) {
        if !rcpts.iter().any(|r| r.eq_ignore_ascii_case(&m.addr)) {
            rcpts.push(m.addr.clone());
        }
    }
    if rcpts.is_empty() {
        return Err(Early(
            exit::USAGE,
            "no recipient: give --to, --cc or --bcc".into(),
        ));
    }
    let headers = args
        .header
        .iter()
        .map(|h| message::parse_header_arg(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Early(exit::USAGE, e))?;
    let pin = tls_policy(args)?;

    // Every input file before any network traffic: nothing is half-sent for a missing file.
    let mut attachments = Vec::new();
    for path in &args.attach {
        let data = read_file(path, "attachment")?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        let content_type = mime_guess::from_path(path)
            .first_or_octet_stream()
            .essence_str()
            .to_string();
        attachments.push(Attachment {
            filename,
            content_type,
            data,
        });
    }
    let html = match &args.html_file {
        Some(p) => Some(utf8(read_file(p, "HTML file")?, "the HTML file")?),
        None => None,
    };
    let text = match &args.body_file {
        Some(p) => Some(utf8(read_file(p, "body file")?, "the body file")?),
        None if std::io::stdin().is_terminal() => None,
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                Early(
                    exit::NOINPUT,
                    format!("cannot read the body from stdin: {e}"),
                )
            })?;
            Some(utf8(buf, "the body on stdin")?)
        }
    };
    let credentials = match (&args.user, &args.password_file) {
        (Some(user), Some(pf)) => {
            let raw = utf8(read_file(pf, "password file")?, "the password file")?;
            let password = raw.lines().next().unwrap_or_default().to_string();
            Some(Credentials {
                authzid: None,
                username: user.clone(),
                password,
            })
        }
        _ => None,
    };
    let extra_roots = match &args.tls_ca {
        Some(ca) => load_ca_file(ca).map_err(|e| Early(exit::NOINPUT, e.describe("--tls-ca")))?,
        None => Vec::new(),
    };

    let sender_domain = Address::parse(&from.addr)
        .map(|a| a.domain().normalized())
        .unwrap_or_else(|_| "localhost".into());
    let compose = Compose {
        from: Some(from.clone()),
        to,
        cc,
        subject: args.subject.clone(),
        text,
        html,
        attachments,
        headers,
        message_id: format!("{}@{}", uuid::Uuid::now_v7().simple(), sender_domain),
    };
    let message = message::build(&compose);

    let tls = match args.tls {
        TlsArg::Required => TlsMode::Required,
        TlsArg::Opportunistic => TlsMode::Opportunistic,
        TlsArg::Implicit => TlsMode::Implicit,
        TlsArg::None => TlsMode::None,
    };
    let default_port = if tls == TlsMode::Implicit { 465 } else { 25 };
    let route = match &args.server {
        Some(server) => {
            let (host, port) = split_host_port(server, args.port.unwrap_or(default_port))
                .map_err(|e| Early(exit::USAGE, e))?;
            Route::Server { host, port }
        }
        None if args.dry_run => Route::Server {
            host: "(MX)".into(),
            port: 25,
        },
        None => {
            let env_port = std::env::var("TERN_MX_PORT").ok();
            let port = match (args.port, env_port) {
                (Some(p), _) => p,
                (None, Some(p)) => p
                    .parse()
                    .map_err(|_| Early(exit::USAGE, format!("TERN_MX_PORT={p:?} is not a port")))?,
                (None, None) => default_port,
            };
            Route::Mx {
                port,
                resolver: resolver()?,
            }
        }
    };
    let helo = match &args.helo {
        Some(name) => HeloName::Name(name.clone()),
        None => helo::default_name(&config.hostname),
    };
    let mut session = SessionOptions::new(helo);
    session.timeouts = args.timeout.map(Timeouts::capped).unwrap_or_default();
    session.auth_channel = if args.allow_plaintext_auth {
        AuthChannel::Any
    } else {
        AuthChannel::VerifiedTls
    };
    if args.verbose {
        session.transcript = Some(Arc::new(|d: Direction, line: &str| eprintln!("{d} {line}")));
    }
    let mut opts = ConnectOptions::new(session);
    opts.tls = tls;
    opts.extra_roots = extra_roots;
    opts.pin = pin;
    opts.credentials = credentials;
    // The certificate is always checked unless --insecure. Under opportunistic STARTTLS one
    // that does not verify leaves the session encrypted but unauthenticated (RFC 7435; MX
    // certificates are often self-signed), never cleartext, and carries no password;
    // required and implicit TLS fail instead (tern_client::ConnectOptions::cert_check).
    opts.verify_tls = !args.insecure;
    Ok(Job {
        route,
        opts,
        from: from.addr,
        rcpts,
        message,
        dry_run: args.dry_run,
    })
}

/// Checks the TLS flags against each other before anything is read or sent, and parses
/// `--tls-fingerprint`. Credentials go only where the certificate can be verified (issue 10,
/// RFC 8314 4.1): with `--tls none` or `--insecure` nothing could verify it, so `--user` is a
/// usage error there unless `--allow-plaintext-auth` says the password may go unprotected.
fn tls_policy(args: &SendArgs) -> Result<Option<CertFingerprint>, Early> {
    let usage = |msg: String| Err(Early(exit::USAGE, msg));
    if args.user.is_some() && !args.allow_plaintext_auth {
        if args.tls == TlsArg::None {
            return usage(
                "--user with --tls none would send the password in the clear; use --tls required \
                 (or implicit) so the server is verified, or add --allow-plaintext-auth"
                    .into(),
            );
        }
        if args.insecure {
            return usage(format!(
                "--user with --insecure would send the password to a server whose certificate is \
                 not verified; drop --insecure and {VERIFY_HINT}, or add --allow-plaintext-auth"
            ));
        }
    }
    let Some(text) = &args.tls_fingerprint else {
        return Ok(None);
    };
    for (given, flag) in [
        (args.tls_ca.is_some(), "--tls-ca"),
        (args.insecure, "--insecure"),
        (args.tls == TlsArg::None, "--tls none"),
    ] {
        if given {
            return usage(format!(
                "--tls-fingerprint and {flag} do not go together: a pinned certificate is \
                 accepted by its fingerprint alone; give one of them"
            ));
        }
    }
    CertFingerprint::parse(text).map(Some).map_err(|e| {
        Early(
            exit::USAGE,
            format!("invalid --tls-fingerprint {text:?}: {e}"),
        )
    })
}

/// How to make a server's certificate verify, for the messages that refuse an unverified one.
pub(crate) const VERIFY_HINT: &str = "trust its CA with --tls-ca FILE or pin its certificate \
    with --tls-fingerprint SHA256 (openssl x509 -noout -fingerprint -sha256 -in CERT)";

/// The resolver for MX delivery: `$TERN_NAMESERVER` or the system configuration.
fn resolver() -> Result<Arc<dyn Resolver>, Early> {
    let nameservers = match std::env::var("TERN_NAMESERVER") {
        Ok(ns) => vec![ns.parse().map_err(|_| {
            Early(
                exit::USAGE,
                format!("TERN_NAMESERVER={ns:?} is not ip:port"),
            )
        })?],
        Err(_) => Vec::new(),
    };
    let setup = setup_resolver(&nameservers, Duration::from_secs(5));
    // A one-shot tool says what is wrong and exits (75: try again) rather than quietly asking
    // the fallback nameserver the relay uses to keep static routes working.
    match setup.fallback {
        Some(e) => Err(Early(exit::TEMPFAIL, format!("DNS resolver: {e}"))),
        None => Ok(setup.resolver),
    }
}

/// `host`, `host:port`, `[v6]:port`, `v6` or an IPv4 address.
fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("invalid --server {s:?}: expected HOST[:PORT]");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Ok((host.to_string(), port.parse().map_err(|_| bad())?))
        }
        _ if s.is_empty() => Err(bad()),
        _ => Ok((s.to_string(), default_port)),
    }
}

pub(crate) fn local_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn execute(job: Job, verbose: bool) -> ExitCode {
    if job.dry_run {
        println!("Envelope-From: <{}>", job.from);
        for r in &job.rcpts {
            println!("Envelope-To: <{r}>");
        }
        println!();
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&job.message);
        let _ = out.flush();
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{PROG}: cannot start the runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let results = runtime.block_on(deliver::deliver(
        &job.route,
        &job.opts,
        &job.from,
        &job.rcpts,
        &job.message,
    ));
    let (worst, lines) = report::summarize(&results, PROG, verbose);
    for line in lines {
        eprintln!("{line}");
    }
    exit::for_class(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("mx.test", 25).unwrap(),
            ("mx.test".into(), 25)
        );
        assert_eq!(
            split_host_port("mx.test:2525", 25).unwrap(),
            ("mx.test".into(), 2525)
        );
        assert_eq!(split_host_port("[::1]:26", 25).unwrap(), ("::1".into(), 26));
        assert_eq!(split_host_port("::1", 25).unwrap(), ("::1".into(), 25));
        assert!(split_host_port("mx.test:x", 25).is_err());
    }
}
