//! Every default value of the configuration, in one place. `Config::defaults()` and the loader both use these.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::types::{
    BareLineEndings, ChecksConfig, Config, DnsConfig, Limits, ListenerConfig, LocalConfig,
    LocalDelivery, LogConfig, LogFormat, MinDataRate, MinFreeSpace, OutboundConfig, QueueConfig,
    RelayConfig, TlsPolicy,
};
use crate::values::{is_domain, normalize_domain};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Used when the system hostname is unavailable or not a valid domain name.
pub const FALLBACK_HOSTNAME: &str = "localhost";
pub const DATA_DIR: &str = "./tern-data";
/// An unprivileged loopback port, so a fresh install cannot become an open relay by accident.
pub const SMTP_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2525));
pub const REQUIRE_TLS_FOR_AUTH: bool = true;
/// Postfix 3.9's default (`smtpd_forbid_bare_newline = normalize`): keep mail from MTAs that pass
/// a bare CR or LF through, without letting it end the data early.
pub const BARE_LINE_ENDINGS: BareLineEndings = BareLineEndings::Normalize;
pub const ENFORCE_SENDER: bool = true;

/// 25 MiB, a common provider limit; advertised via SIZE (RFC 1870).
pub const MAX_MESSAGE_SIZE: u64 = 26_214_400;
/// RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients.
pub const MAX_RECIPIENTS: usize = 100;
pub const MAX_CONNECTIONS: usize = 1000;
pub const MAX_CONNECTIONS_PER_IP: usize = 100;
pub const MAX_MESSAGES_PER_IP_PER_MINUTE: usize = 0;
pub const MAX_ERRORS: usize = 20;
pub const MAX_HEADER_SIZE: u64 = 1_048_576;
/// 128 MiB: every session of the default `max_connections` can receive with full buffers
/// (about 192 KiB each); past it, sessions stream with small buffers instead.
pub const MAX_DATA_MEMORY: u64 = 128 * 1024 * 1024;
pub const MAX_AUTH_FAILURES: usize = 5;
/// RFC 5321 4.5.3.2.7: server timeout of at least 5 minutes while awaiting a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * MINUTE);
/// RFC 5321 4.5.3.2.6: DATA termination timeout of at least 10 minutes.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(10 * MINUTE);
/// Failed AUTH attempts for one user name (from any address) before it is locked for a while.
pub const MAX_AUTH_FAILURES_PER_USER: usize = 10;
/// NOOP, RSET, HELP, VRFY, EXPN, HELO and EHLO that are free in one session; each one beyond
/// counts toward `max_errors` (Postfix's smtpd_junk_command_limit, with a smaller default).
pub const MAX_JUNK_COMMANDS: usize = 20;
/// A session is closed after this long whatever it does, so slots cannot be held forever.
pub const MAX_SESSION_TIME: Duration = Duration::from_secs(60 * MINUTE);
/// An IPv6 client owns at least a /64 (RFC 4291 2.5.1: interface identifiers are 64 bits), so
/// per-client limits count the /64, not the single address.
pub const IPV6_PREFIX_LENGTH: u8 = 64;
/// Percent of `max_connections` in use past which the stress timeouts apply.
pub const STRESS_THRESHOLD: u8 = 80;
/// Postfix's stress-mode smtpd_timeout.
pub const STRESS_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
pub const STRESS_DATA_TIMEOUT: Duration = Duration::from_secs(2 * MINUTE);
/// `limits.min_free_space`: the smaller of 1 GiB and 5 % of the filesystem. 5 % alone would hold
/// back 100 GB of a 2 TB disk, far more than the mail in flight and the bounces need; 1 GiB
/// alone would be a tenth of a 10 GiB VPS disk. The smaller of the two keeps room for the
/// queue's updates, the DSNs and the messages already past MAIL, on small and large disks alike.
pub const MIN_FREE_SPACE: MinFreeSpace = MinFreeSpace::SmallerOf {
    bytes: 1 << 30,
    percent: 5,
};
/// `limits.max_new_mailboxes_per_message`: with catch-all on, one message may create this many
/// mailbox directories (a real message to a new address creates one; a spray creates many).
pub const MAX_NEW_MAILBOXES_PER_MESSAGE: usize = 10;
/// `limits.max_new_mailboxes_per_minute`: mailbox directories created server-wide per minute.
pub const MAX_NEW_MAILBOXES_PER_MINUTE: usize = 60;

/// Concurrent password checks: about one per core, since argon2 is CPU-bound (and takes 19 MiB
/// each); more in flight would only queue and cost memory.
pub fn max_auth_checks() -> usize {
    // Asked once: std reads /proc/self/cgroup and the CPU quota files on every call (about 20
    // system calls), and default limits are built in places that run per connection.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

pub const VRFY: bool = false;
pub const EXPN: bool = false;

/// RFC 5321 4.5.4.1: give up after 4-5 days.
pub const QUEUE_MAX_AGE: Duration = Duration::from_secs(5 * DAY);
/// RFC 5321 4.5.4.1 asks for retry intervals of at least 30 minutes; the first retries come sooner
/// (greylisting usually clears in minutes) and the schedule backs off to hourly.
pub const RETRY_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(5 * MINUTE),
    Duration::from_secs(10 * MINUTE),
    Duration::from_secs(20 * MINUTE),
    Duration::from_secs(40 * MINUTE),
    Duration::from_secs(HOUR),
];
/// RFC 5321 6.3: loops are detected by counting Received headers. The RFC suggests a threshold of
/// "normally at least 100"; we use Postfix's `hopcount_limit` of 50, which no legitimate path reaches.
pub const MAX_RECEIVED_HEADERS: usize = 50;
/// `None`: no delay warning DSN.
pub const DELAY_WARNING: Option<Duration> = None;

/// RFC 5321 4.5.4.2: SMTP is port 25.
pub const MX_PORT: u16 = 25;
/// RFC 8461: MTA-STS is on unless turned off.
pub const MTA_STS: bool = true;
/// `outbound.dane`: DANE for MX delivery is on (it only acts on DNSSEC-signed domains).
pub const DANE: bool = true;
/// A route's `dane`: off (a route is the operator's own choice).
pub const ROUTE_DANE: bool = false;
/// RFC 8461 3.3: policies are fetched over HTTPS.
pub const MTA_STS_PORT: u16 = 443;
/// Port used by a route written without one.
pub const ROUTE_PORT: u16 = 25;
pub const OUTBOUND_CONCURRENCY: usize = 50;
pub const OUTBOUND_CONCURRENCY_PER_HOST: usize = 5;
pub const OUTBOUND_TLS: TlsPolicy = TlsPolicy::Opportunistic;
pub const ROUTE_TLS: TlsPolicy = TlsPolicy::Opportunistic;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 5321 4.5.3.2.1-4.5.3.2.5: 5 minutes for the banner and MAIL/RCPT replies (2-3 for DATA; we use one value).
pub const OUTBOUND_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * MINUTE);
/// RFC 5321 4.5.3.2.6: 10 minutes for the reply to the final dot.
pub const OUTBOUND_DATA_TIMEOUT: Duration = Duration::from_secs(10 * MINUTE);
/// `outbound.attempt_timeout`: a whole delivery attempt to one destination (tarpits).
pub const OUTBOUND_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30 * MINUTE);

/// `outbound.min_data_rate`: 1 KiB/s, Postfix's `smtpd_min_data_rate` is 500 B/s for the
/// same purpose on the receiving side; any real link is far faster.
pub const OUTBOUND_MIN_DATA_RATE: u64 = 1024;
/// `outbound.min_data_rate_grace`: time for TCP slow start and a receiver's content checks
/// before the rate counts.
pub const OUTBOUND_MIN_DATA_RATE_GRACE: Duration = Duration::from_secs(30);

/// Port used for a nameserver given as a bare IP address.
pub const DNS_PORT: u16 = 53;

/// `[[dkim]] headers`: the fields a DKIM signature covers unless the key says otherwise. RFC
/// 6376 5.4.1 recommends these (the ones a recipient sees and acts on), plus the list
/// unsubscribe fields of RFC 2369 / RFC 8058 (which RFC 8058 3.2 says must be signed). The
/// signer adds one more `From` to `h=` (over-signing, RFC 6376 8.15) so that a second From:
/// added later breaks the signature.
pub const DKIM_HEADERS: [&str; 14] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];
/// `[[dkim]] subdomains`: a key signs its own domain only.
pub const DKIM_SUBDOMAINS: bool = false;

pub const LOG_LEVEL: &str = "info";
pub const LOG_FORMAT: LogFormat = LogFormat::Text;

// Checked at compile time: the defaults must agree with each other and with the RFC minimums.
const _: () = assert!(MAX_HEADER_SIZE <= MAX_MESSAGE_SIZE);
const _: () = assert!(MAX_RECIPIENTS >= 100, "RFC 5321 4.5.3.1.8");
const _: () = assert!(COMMAND_TIMEOUT.as_secs() >= 300, "RFC 5321 4.5.3.2.7");
const _: () = assert!(DATA_TIMEOUT.as_secs() >= 600, "RFC 5321 4.5.3.2.6");

/// The system hostname if it is a valid domain name, else "localhost".
pub fn hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| normalize_domain(h.trim()))
        .filter(|h| is_domain(h))
        .unwrap_or_else(|| FALLBACK_HOSTNAME.to_string())
}

/// "localhost" and our hostname, without duplicates.
pub fn local_domains(hostname: &str) -> Vec<String> {
    let mut domains = vec![FALLBACK_HOSTNAME.to_string()];
    let own = normalize_domain(hostname);
    if !domains.contains(&own) {
        domains.push(own);
    }
    domains
}

/// Catch-all is on when no users are configured, so a fresh install accepts mail for any local address.
pub fn catch_all(users_configured: bool) -> bool {
    !users_configured
}

/// Loopback, IPv4 and IPv6.
pub fn trusted_networks() -> Vec<IpNet> {
    vec![
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
    ]
}

/// The ranges an MX-resolved address is never in (`outbound.allow_networks` may exempt parts of
/// them, explicit `[routes]` are not checked): loopback (RFC 1122 3.2.1.3, RFC 4291 2.5.3),
/// link-local (RFC 3927, RFC 4291 2.5.6), and the unspecified address and "this network"
/// (RFC 1122 3.2.1.3, RFC 4291 2.5.2), which Linux connects to the local host. A DNS record
/// pointing there is a parked domain or an attempt to reach services on tern's own host or
/// network (cloud metadata at 169.254.169.254). IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`)
/// are checked as the IPv4 address they carry.
pub fn always_refused_networks() -> [(&'static str, IpNet); 6] {
    [
        (
            "loopback",
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
        ),
        (
            "loopback",
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)),
        ),
        (
            "link-local",
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)),
        ),
        (
            "link-local",
            IpNet::V6(Ipv6Net::new_assert(
                Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
                10,
            )),
        ),
        (
            "unspecified",
            IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 8)),
        ),
        (
            "unspecified",
            IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128)),
        ),
    ]
}

pub fn smtp() -> ListenerConfig {
    ListenerConfig {
        listen: vec![SMTP_LISTEN],
        require_tls_for_auth: REQUIRE_TLS_FOR_AUTH,
        enforce_sender: ENFORCE_SENDER,
        bare_line_endings: BARE_LINE_ENDINGS,
    }
}

pub fn submission() -> ListenerConfig {
    ListenerConfig {
        listen: Vec::new(),
        require_tls_for_auth: REQUIRE_TLS_FOR_AUTH,
        enforce_sender: ENFORCE_SENDER,
        bare_line_endings: BARE_LINE_ENDINGS,
    }
}

pub fn limits() -> Limits {
    Limits {
        max_message_size: MAX_MESSAGE_SIZE,
        max_recipients: MAX_RECIPIENTS,
        max_connections: MAX_CONNECTIONS,
        max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
        max_messages_per_ip_per_minute: MAX_MESSAGES_PER_IP_PER_MINUTE,
        max_errors: MAX_ERRORS,
        max_header_size: MAX_HEADER_SIZE,
        max_data_memory: MAX_DATA_MEMORY,
        max_auth_failures: MAX_AUTH_FAILURES,
        command_timeout: COMMAND_TIMEOUT,
        data_timeout: DATA_TIMEOUT,
        max_auth_checks: max_auth_checks(),
        max_auth_failures_per_user: MAX_AUTH_FAILURES_PER_USER,
        max_junk_commands: MAX_JUNK_COMMANDS,
        max_session_time: MAX_SESSION_TIME,
        ipv6_prefix_length: IPV6_PREFIX_LENGTH,
        stress_threshold: STRESS_THRESHOLD,
        stress_command_timeout: STRESS_COMMAND_TIMEOUT,
        stress_data_timeout: STRESS_DATA_TIMEOUT,
        min_free_space: MIN_FREE_SPACE,
        max_new_mailboxes_per_message: MAX_NEW_MAILBOXES_PER_MESSAGE,
        max_new_mailboxes_per_minute: MAX_NEW_MAILBOXES_PER_MINUTE,
    }
}

pub fn queue() -> QueueConfig {
    QueueConfig {
        max_age: QUEUE_MAX_AGE,
        retry_schedule: RETRY_SCHEDULE.to_vec(),
        max_received_headers: MAX_RECEIVED_HEADERS,
        delay_warning: DELAY_WARNING,
        backend: crate::backend::QueueBackend::Fs,
    }
}

pub fn outbound(hostname: &str) -> OutboundConfig {
    OutboundConfig {
        mx_port: MX_PORT,
        concurrency: OUTBOUND_CONCURRENCY,
        concurrency_per_host: OUTBOUND_CONCURRENCY_PER_HOST,
        tls: OUTBOUND_TLS,
        helo_name: hostname.to_string(),
        connect_timeout: CONNECT_TIMEOUT,
        command_timeout: OUTBOUND_COMMAND_TIMEOUT,
        data_timeout: OUTBOUND_DATA_TIMEOUT,
        attempt_timeout: OUTBOUND_ATTEMPT_TIMEOUT,
        deny_networks: Vec::new(),
        allow_networks: Vec::new(),
        min_data_rate: std::num::NonZeroU64::new(OUTBOUND_MIN_DATA_RATE).map(|bytes_per_sec| {
            MinDataRate {
                bytes_per_sec,
                grace: OUTBOUND_MIN_DATA_RATE_GRACE,
            }
        }),
        mta_sts: MTA_STS,
        mta_sts_ca_file: None,
        mta_sts_port: MTA_STS_PORT,
        dane: DANE,
    }
}

pub fn log() -> LogConfig {
    LogConfig {
        level: LOG_LEVEL.to_string(),
        format: LOG_FORMAT,
    }
}

/// `[checks]`: everything is verified; a DMARC `p=reject` failure is refused (the domain owner
/// asked for it, RFC 7489 6.3), an SPF fail is only marked (forwarders break SPF; DMARC decides).
pub const CHECKS: ChecksConfig = ChecksConfig {
    spf: true,
    dkim: true,
    dmarc: true,
    arc: true,
    dmarc_reject: true,
    spf_fail_reject: false,
};

pub(crate) fn checks() -> ChecksConfig {
    CHECKS
}

/// `milters[].timeout`: 30 seconds per reply, as the example; Postfix waits 30s to
/// connect and 60s per command, rspamd answers in milliseconds when it is well.
pub const MILTER_TIMEOUT: Duration = Duration::from_secs(30);
/// `milters[].message_timeout`: 5 minutes for the whole end of message, Postfix's
/// `milter_content_timeout` (300s).
pub const MILTER_MESSAGE_TIMEOUT: Duration = Duration::from_secs(300);

/// `srs.max_age`: 21 days, as libsrs2 and postsrsd: long past any queue's lifetime (RFC 5321
/// 4.5.4.1 suggests 4-5 days), so a bounce that arrives at all still finds its way back.
pub const SRS_MAX_AGE_DAYS: u16 = 21;

/// `tls_rpt.interval`: one report per UTC day (RFC 8460 4.1: reports cover whole UTC days).
pub const TLS_RPT_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// `[tls_rpt]`: off (an operator turns it on: reports go to third parties), one report per day,
/// `outbound.helo_name` as the organization, `postmaster@<helo_name>` as contact and sender.
pub fn tls_rpt(helo_name: &str) -> crate::TlsRptConfig {
    crate::TlsRptConfig {
        enabled: false,
        interval: TLS_RPT_INTERVAL,
        organization: helo_name.to_string(),
        contact: format!("postmaster@{helo_name}"),
        from: format!("postmaster@{helo_name}"),
    }
}

/// The configuration used when no file is given: see `Config::defaults`.
pub(crate) fn config() -> Config {
    let hostname = hostname();
    Config {
        data_dir: PathBuf::from(DATA_DIR),
        smtp: smtp(),
        submission: submission(),
        submissions: submission(),
        tls: None,
        limits: limits(),
        local: LocalConfig {
            domains: local_domains(&hostname),
            qualify_domain: hostname.clone(),
            catch_all: catch_all(false),
            vrfy: VRFY,
            expn: EXPN,
            delivery: LocalDelivery::Maildir,
            per_domain: Default::default(),
        },
        users: Vec::new(),
        aliases: Default::default(),
        relay: RelayConfig {
            trusted_networks: trusted_networks(),
        },
        routes: Default::default(),
        dns: DnsConfig {
            nameservers: Vec::new(),
            dnssec_trust_anchor: None,
        },
        queue: queue(),
        outbound: outbound(&hostname),
        log: log(),
        dkim: Vec::new(),
        checks: checks(),
        srs: None,
        milters: Vec::new(),
        admin: None,
        tls_rpt: tls_rpt(&hostname),
        source: None,
        hostname,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn hostname_is_a_domain() {
        assert!(is_domain(&hostname()));
    }

    #[test]
    fn local_domains_dedupe() {
        assert_eq!(local_domains("localhost"), vec!["localhost"]);
        assert_eq!(
            local_domains("MX.Example.test."),
            vec!["localhost", "mx.example.test"]
        );
    }

    #[test]
    fn default_trusted_networks_are_loopback() {
        let nets = trusted_networks();
        assert!(nets
            .iter()
            .any(|n| n.contains(&IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9)))));
        assert!(nets
            .iter()
            .any(|n| n.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST))));
    }
}
