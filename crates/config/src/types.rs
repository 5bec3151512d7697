//! The validated, read-only configuration types that the rest of tern consumes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration. Build it with [`Config::defaults`], [`Config::from_toml_str`],
/// [`Config::load_file`] or [`Config::discover`]; every value in it has already been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Our own name: EHLO greeting, Received headers, DSNs. A valid domain name.
    pub hostname: String,
    /// Where the spool and maildirs live. Relative paths are relative to the current directory.
    pub data_dir: PathBuf,
    /// Port 25 style MTA-to-MTA listener (RFC 5321).
    pub smtp: ListenerConfig,
    /// Message submission with STARTTLS + AUTH (RFC 6409).
    pub submission: ListenerConfig,
    /// Message submission over implicit TLS (RFC 8314).
    pub submissions: ListenerConfig,
    /// Certificate and key; `None` means no STARTTLS and no implicit-TLS listener.
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub local: LocalConfig,
    pub users: Vec<User>,
    /// Lower-cased alias address -> one or more target addresses.
    pub aliases: BTreeMap<String, Vec<String>>,
    pub relay: RelayConfig,
    /// Lower-cased destination domain (or "*" for a smarthost) -> static route.
    pub routes: BTreeMap<String, Route>,
    pub dns: DnsConfig,
    pub queue: QueueConfig,
    pub outbound: OutboundConfig,
    pub log: LogConfig,
    /// `[[dkim]]`: signing keys for outbound mail; empty = nothing is signed.
    pub dkim: Vec<DkimConfig>,
    /// `[checks]`: what inbound mail on port 25 is verified for, and which failures are refused.
    pub checks: ChecksConfig,
    /// `[srs]`: the Sender Rewriting Scheme for mail forwarded off-host; `None` = off (no secret).
    pub srs: Option<crate::SrsConfig>,
    /// `[[milters]]`: content filters, consulted in this order.
    pub milters: Vec<crate::MilterConfig>,
    /// `[admin]`: the admin HTTP listener; `None` = off.
    pub admin: Option<crate::AdminConfig>,
    /// `[tls_rpt]`: RFC 8460 TLS reporting of MX deliveries (off by default).
    pub tls_rpt: crate::TlsRptConfig,
    /// The file this configuration came from; `None` for the embedded defaults.
    pub source: Option<PathBuf>,
}

/// One listener kind. `require_tls_for_auth` and `enforce_sender` matter for submission(s) only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub listen: Vec<SocketAddr>,
    /// RFC 4954 4: do not offer or accept AUTH (plaintext passwords) before TLS is active.
    pub require_tls_for_auth: bool,
    /// MAIL FROM must be an address of the authenticated user (RFC 6409 6.1 allows the MSA to enforce this).
    pub enforce_sender: bool,
    /// What DATA does with a bare CR or LF (set in `[smtp]`, applies to every listener).
    pub bare_line_endings: BareLineEndings,
}

/// How the server treats a CR or LF that is not part of a CRLF pair inside DATA (RFC 5321
/// 2.3.8 forbids them). Either way the data ends only at `<CRLF>.<CRLF>`, so a message can never
/// be split into two (SMTP smuggling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BareLineEndings {
    /// Store each bare CR or LF as CRLF, as Postfix 3.9 does by default
    /// (`smtpd_forbid_bare_newline = normalize`): mail from MTAs that pass them through is kept.
    #[default]
    Normalize,
    /// Refuse the whole message with 554 5.6.0.
    Reject,
}

impl BareLineEndings {
    pub const ALL: [(&'static str, BareLineEndings); 2] = [
        ("normalize", BareLineEndings::Normalize),
        ("reject", BareLineEndings::Reject),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BareLineEndings::Normalize => "normalize",
            BareLineEndings::Reject => "reject",
        }
    }
}

impl fmt::Display for BareLineEndings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PEM files for the server certificate (full chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Per-session and per-client limits, enforced by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes; advertised with SIZE (RFC 1870).
    pub max_message_size: u64,
    /// RCPT commands accepted per transaction (RFC 5321 4.5.3.1.8 requires at least 100 be accepted).
    pub max_recipients: usize,
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// 0 = unlimited.
    pub max_messages_per_ip_per_minute: usize,
    /// Bad commands in one session before 421 and close.
    pub max_errors: usize,
    /// Bytes of the header section of one message.
    pub max_header_size: u64,
    /// Bytes of message data all sessions together hold in memory while messages arrive (the
    /// rest goes to spool files as it comes in).
    pub max_data_memory: u64,
    /// Failed AUTH attempts per IP before 421.
    pub max_auth_failures: usize,
    /// RFC 5321 4.5.3.2.7: server timeout waiting for the next command.
    pub command_timeout: Duration,
    /// RFC 5321 4.5.3.2.6: timeout while receiving DATA (between blocks / before the final reply).
    pub data_timeout: Duration,
    /// Password checks running at once; an AUTH beyond them gets 454 4.7.0. At least 1.
    pub max_auth_checks: usize,
    /// Failed AUTH attempts for one user name, from any client, before it is locked.
    pub max_auth_failures_per_user: usize,
    /// Free NOOP/RSET/HELP/VRFY/EXPN/HELO/EHLO per session; the excess counts as errors.
    pub max_junk_commands: usize,
    /// Longest session, whatever the client does.
    pub max_session_time: Duration,
    /// IPv6 clients are grouped by this prefix for every per-client limit (1..=128).
    pub ipv6_prefix_length: u8,
    /// Percent (1..=100) of `max_connections` busy past which the stress timeouts apply.
    pub stress_threshold: u8,
    /// `command_timeout` while in stress mode.
    pub stress_command_timeout: Duration,
    /// `data_timeout` while in stress mode.
    pub stress_data_timeout: Duration,
    /// Free space the data directory's filesystems must keep: below it a new MAIL gets
    /// `452 4.3.1` (RFC 3463 X.3.1) while mail already accepted goes on.
    pub min_free_space: MinFreeSpace,
    /// Mailbox directories one message may create (catch-all only); 0 = unlimited.
    pub max_new_mailboxes_per_message: usize,
    /// Mailbox directories the server may create per minute (catch-all only); 0 = unlimited.
    pub max_new_mailboxes_per_minute: usize,
}

/// `limits.min_free_space`: how much of a filesystem must stay free before new mail is refused.
/// The percentages are whole numbers from 1 to 50 (checked when the configuration is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFreeSpace {
    /// No free-space check (`0`); a write that fails with ENOSPC is still answered `452 4.3.1`.
    Off,
    /// This many bytes.
    Bytes(u64),
    /// This percentage of the filesystem's size.
    Percent(u8),
    /// Whichever of the two is smaller on the filesystem at hand (the default).
    SmallerOf { bytes: u64, percent: u8 },
}

impl MinFreeSpace {
    /// The bytes that must stay free on a filesystem of `total` bytes (0 = no limit).
    pub fn threshold(self, total: u64) -> u64 {
        let share = |percent: u8| {
            // u128: `total * percent` cannot overflow for any filesystem size.
            (u128::from(total) * u128::from(percent) / 100).min(u128::from(u64::MAX)) as u64
        };
        match self {
            MinFreeSpace::Off => 0,
            MinFreeSpace::Bytes(b) => b,
            MinFreeSpace::Percent(p) => share(p),
            MinFreeSpace::SmallerOf { bytes, percent } => bytes.min(share(percent)),
        }
    }
}

impl fmt::Display for MinFreeSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFreeSpace::Off => f.write_str("0 (off)"),
            MinFreeSpace::Bytes(b) => write!(f, "{b} bytes"),
            MinFreeSpace::Percent(p) => write!(f, "{p}%"),
            MinFreeSpace::SmallerOf { bytes, percent } => {
                write!(f, "the smaller of {bytes} bytes and {percent}%")
            }
        }
    }
}

/// Which domains we deliver locally, and how we answer about local users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Lower-cased, no trailing dot.
    pub domains: Vec<String>,
    /// Appended to addresses without a domain by `tern sendmail` and `tern send` (`root` ->
    /// `root@<qualify_domain>`), as sendmail's `$j` / Postfix's `myorigin`. A domain name.
    pub qualify_domain: String,
    /// Accept any local part of a local domain (delivered to the maildir of that address).
    pub catch_all: bool,
    /// RFC 5321 3.5.3: true answers VRFY for local users with 250; false always answers 252.
    pub vrfy: bool,
    /// RFC 5321 3.5.2: true lets EXPN expand aliases; false refuses.
    pub expn: bool,
    /// `local.delivery` (with `local.lmtp`): how the recipients of local domains are stored,
    /// unless `per_domain` says otherwise for their domain.
    pub delivery: LocalDelivery,
    /// `[local.per_domain."<domain>"]`: the delivery of one local domain (lower-cased, one of
    /// `domains`), e.g. one domain's mailboxes on a Dovecot, the others in tern's Maildirs.
    pub per_domain: BTreeMap<String, LocalDelivery>,
}

impl LocalConfig {
    /// How mail for the local domain `domain` is stored (`per_domain`, else `delivery`).
    pub fn delivery_for(&self, domain: &str) -> &LocalDelivery {
        if !self.per_domain.is_empty() {
            let d = domain.trim_end_matches('.').to_ascii_lowercase();
            if let Some(delivery) = self.per_domain.get(&d) {
                return delivery;
            }
        }
        &self.delivery
    }

    /// The LMTP server mail for the local domain `domain` goes to, if it goes to one.
    pub fn lmtp_for(&self, domain: &str) -> Option<&LmtpAddress> {
        self.delivery_for(domain).lmtp()
    }

    /// The LMTP server of the mailbox key `local@domain` (a router key), if it has one.
    pub fn lmtp_for_mailbox(&self, key: &str) -> Option<&LmtpAddress> {
        let domain = key.rsplit_once('@').map_or("", |(_, d)| d);
        self.lmtp_for(domain)
    }

    /// True when some local domain is delivered over LMTP.
    pub fn any_lmtp(&self) -> bool {
        self.delivery.lmtp().is_some() || self.per_domain.values().any(|d| d.lmtp().is_some())
    }
}

/// How mail for local recipients is stored (`local.delivery`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDelivery {
    /// tern writes each copy into `<data_dir>/mailboxes` itself, before the 250.
    #[default]
    Maildir,
    /// Local recipients are queued like remote ones and handed to this LMTP server (RFC 2033,
    /// e.g. Dovecot's `lmtp`) by the relay, so the queue covers the time it is down.
    Lmtp(LmtpAddress),
}

impl LocalDelivery {
    /// The LMTP server, for `Lmtp`.
    pub fn lmtp(&self) -> Option<&LmtpAddress> {
        match self {
            LocalDelivery::Maildir => None,
            LocalDelivery::Lmtp(address) => Some(address),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            LocalDelivery::Maildir => "maildir",
            LocalDelivery::Lmtp(_) => "lmtp",
        }
    }
}

/// Where the LMTP server listens (`local.lmtp`): `unix:/run/dovecot/lmtp` or
/// `inet:127.0.0.1:24`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpAddress {
    Unix(PathBuf),
    Inet(SocketAddr),
}

impl fmt::Display for LmtpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LmtpAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            LmtpAddress::Inet(addr) => write!(f, "inet:{addr}"),
        }
    }
}

/// A local mailbox that may also log in (AUTH) when it has a password.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Full address, lower-cased; its domain is one of `local.domains`.
    pub name: String,
    /// argon2 PHC hash (`$argon2id$...`); `None` = mailbox only, cannot AUTH.
    pub password: Option<String>,
}

// Hand-written so a stray `{:?}` never puts a password hash into a log.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<argon2 hash>"))
            .finish()
    }
}

/// Who may relay to non-local domains without AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub trusted_networks: Vec<ipnet::IpNet>,
}

/// A static next hop for a remote domain (no MX lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Domain name or IP address literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub tls: TlsPolicy,
    pub auth: Option<RouteAuth>,
    /// PEM file of CA certificates trusted (besides the public roots) when verifying this hop's
    /// certificate under `tls = "required"`: a smarthost with a private CA.
    pub ca_file: Option<PathBuf>,
    /// DANE (RFC 7672) for this hop: look up TLSA `_<port>._tcp.<host>` and, when usable
    /// records are found, require TLS verified by them.
    pub dane: bool,
}

/// Credentials for AUTH at a route's next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    pub user: String,
    /// File whose content (trailing newline stripped) is the password; checked readable at load.
    pub password_file: PathBuf,
}

impl RouteAuth {
    /// Reads the password from `password_file`, without its trailing line ending.
    pub fn read_password(&self) -> std::io::Result<String> {
        let text =
            crate::files::read_bounded_string(&self.password_file, crate::files::MAX_SMALL_FILE)?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// Outbound TLS policy (RFC 3207 STARTTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsPolicy {
    /// Never use STARTTLS.
    None,
    /// Use STARTTLS when offered, fall back to plaintext otherwise; certificates are not verified.
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and succeed; otherwise the attempt fails temporarily (no plaintext).
    Required,
}

impl TlsPolicy {
    pub const ALL: [(&'static str, TlsPolicy); 3] = [
        ("none", TlsPolicy::None),
        ("opportunistic", TlsPolicy::Opportunistic),
        ("required", TlsPolicy::Required),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
        }
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DKIM signing key (`[[dkim]]`, RFC 6376 / RFC 8463). The key file was readable and looked
/// like a PEM private key at load time; the key itself (type, RSA size) is checked by the signer
/// when the server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    /// The signing domain (`d=`), lower-case, no trailing dot.
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    pub key_file: PathBuf,
    /// Header fields to sign (`h=`), in this order; always contains `From` (RFC 6376 5.4), which
    /// the signer also over-signs.
    pub headers: Vec<String>,
    /// Also sign mail whose From: domain is a subdomain of `domain`.
    pub subdomains: bool,
}

/// `[checks]`: inbound verification of mail received on the port 25 listener (never of
/// authenticated submission). Each flag is independent; DMARC needs the SPF and DKIM results,
/// so `dmarc` with both of them off evaluates nothing that can align and reports `dmarc=none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksConfig {
    /// SPF (RFC 7208) of MAIL FROM (of HELO for the null sender).
    pub spf: bool,
    /// Every DKIM-Signature (RFC 6376).
    pub dkim: bool,
    /// DMARC (RFC 7489): alignment and the published policy.
    pub dmarc: bool,
    /// ARC chain validation (RFC 8617).
    pub arc: bool,
    /// A DMARC failure under `p=reject` is refused with 550 5.7.1 at the end of DATA; `false`
    /// delivers it with the result in Authentication-Results.
    pub dmarc_reject: bool,
    /// An SPF `fail` (`-all`) is refused with 550 5.7.23 at MAIL FROM.
    pub spf_fail_reject: bool,
}

/// Resolver settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Empty = the system resolver (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// DNSKEY records (zone-file form) trusted for DNSSEC validation of DANE lookups instead
    /// of the built-in root anchors (a private signed zone, the tests).
    pub dnssec_trust_anchor: Option<PathBuf>,
}

/// Spool lifetime and retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// RFC 5321 4.5.4.1: give up (and bounce) after this long; 4-5 days is the suggested range.
    pub max_age: Duration,
    /// Delay before attempt n+1; the last entry repeats. Jitter is the scheduler's job.
    pub retry_schedule: Vec<Duration>,
    /// RFC 5321 6.3: more Received headers than this means a mail loop; the message is rejected/bounced.
    pub max_received_headers: usize,
    /// Send a "delayed" DSN (RFC 3464) after this long; `None` = never.
    pub delay_warning: Option<Duration>,
    /// Where the queue lives: the filesystem spool (default) or a PostgreSQL database several
    /// nodes share (docs/cluster.md).
    pub backend: crate::backend::QueueBackend,
}

/// Outbound delivery (the SMTP client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Port for MX delivery; 25 in production (RFC 5321 4.5.4.2), a high port in tests.
    pub mx_port: u16,
    pub concurrency: usize,
    pub concurrency_per_host: usize,
    /// Policy for MX delivery; routes carry their own.
    pub tls: TlsPolicy,
    /// Name we send in EHLO/HELO.
    pub helo_name: String,
    pub connect_timeout: Duration,
    /// RFC 5321 4.5.3.2.1-4.5.3.2.5: wait for the banner and the EHLO/MAIL/RCPT/DATA replies.
    pub command_timeout: Duration,
    /// RFC 5321 4.5.3.2.6: wait for the reply to the final dot.
    pub data_timeout: Duration,
    /// A deadline for one whole delivery attempt to one destination (connect, TLS, AUTH, the
    /// transaction), so a tarpit answering just inside every per-phase timeout cannot hold a
    /// delivery slot for hours.
    pub attempt_timeout: Duration,
    /// Networks an MX-resolved address may never be in (RFC 5321 5.1 hops chosen by the
    /// recipient domain's DNS, not by the operator). Explicit `[routes]` are exempt.
    pub deny_networks: Vec<ipnet::IpNet>,
    /// Parts of the always-refused ranges ([`crate::defaults::always_refused_networks`]) that MX
    /// delivery may use after all (a lab, the tests); `deny_networks` still wins.
    pub allow_networks: Vec<ipnet::IpNet>,
    /// The slowest the remote may take the message body after the grace period; `None` = no
    /// minimum (`min_data_rate = 0`).
    pub min_data_rate: Option<MinDataRate>,
    /// RFC 8461 MTA-STS for MX delivery: look up and apply the recipient domain's policy.
    pub mta_sts: bool,
    /// Extra CA certificates trusted for the MTA-STS policy fetch and for the TLS an
    /// `enforce` policy requires (a private setup, the tests); the webpki roots always are.
    pub mta_sts_ca_file: Option<PathBuf>,
    /// The HTTPS port policies are fetched from; 443 (RFC 8461 3.3), a high port in tests.
    pub mta_sts_port: u16,
    /// DANE (RFC 7672) for MX delivery: DNSSEC-signed MX hosts with TLSA records get TLS
    /// verified by those records (docs/dane.md).
    pub dane: bool,
}

/// `outbound.min_data_rate` with its grace period: after `grace`, the body must have been
/// written at `bytes_per_sec` on average over the time since the grace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinDataRate {
    pub bytes_per_sec: std::num::NonZeroU64,
    pub grace: Duration,
}

/// Why an MX-resolved address is refused ([`OutboundConfig::refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Inside one of `outbound.deny_networks`.
    Denied(ipnet::IpNet),
    /// Inside an always-refused range (loopback, link-local, unspecified) that
    /// `outbound.allow_networks` does not exempt.
    Reserved {
        kind: &'static str,
        network: ipnet::IpNet,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied(net) => write!(f, "in outbound.deny_networks ({net})"),
            Refusal::Reserved { kind, network } => write!(
                f,
                "{kind} ({network}), never used for MX delivery unless in outbound.allow_networks"
            ),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// One of trace, debug, info, warn, error (lower-case).
    pub level: String,
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub const ALL: [(&'static str, LogFormat); 2] =
        [("text", LogFormat::Text), ("json", LogFormat::Json)];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accepted `log.level` values.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];
