//! The verifier: one mail-auth authenticator (hickory underneath) with tern's bounded caches,
//! the `[checks]` switches, our authserv-id and the deadline one message's checks may take.
//! The checks themselves are in `spf` (at MAIL FROM) and `message` (at the end of DATA).

use std::net::SocketAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::config::ResolverOpts;
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::MessageAuthenticator;
use tern_config::ChecksConfig;

use super::cache::{CacheSizes, DnsCaches, MAX_TTL};

/// How long a negative answer (NXDOMAIN, no records) stays in hickory's cache at most.
pub const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(300);
/// Entries in hickory's own response cache (answers and negative answers).
pub const RESOLVER_CACHE_SIZE: u64 = 2048;
/// Per DNS query.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// All DNS work for one message (SPF at MAIL, or DKIM + ARC + DMARC at the end of DATA). Past
/// it, what is unfinished is `temperror`. Well below the 10 minutes a client waits for the
/// reply to the final dot (RFC 5321 4.5.3.2.6).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// Where and how to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// `[dns] nameservers`; empty = the system resolver (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    pub query_timeout: Duration,
    pub deadline: Duration,
    pub cache_sizes: CacheSizes,
}

impl ResolverSettings {
    pub fn new(nameservers: Vec<SocketAddr>) -> Self {
        ResolverSettings {
            nameservers,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            cache_sizes: CacheSizes::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("cannot read the system resolver configuration (/etc/resolv.conf): {0}; set [dns] nameservers")]
    SystemConf(String),
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(String),
}

/// Inbound verification (SPF, DKIM, DMARC, ARC) for one server. Cheap to share behind an
/// `Arc`; the caches are shared by all sessions.
pub struct Verifier {
    pub(crate) auth: MessageAuthenticator,
    pub(crate) caches: DnsCaches,
    pub(crate) checks: ChecksConfig,
    pub(crate) authserv_id: String,
    pub(crate) deadline: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("checks", &self.checks)
            .field("authserv_id", &self.authserv_id)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Must be called inside a tokio runtime (hickory's builder needs one). `authserv_id` is
    /// our hostname: the name in our Authentication-Results fields (RFC 8601 2.5).
    pub fn new(
        settings: &ResolverSettings,
        checks: ChecksConfig,
        authserv_id: &str,
    ) -> Result<Verifier, VerifierError> {
        let (config, mut opts) = if settings.nameservers.is_empty() {
            read_system_conf().map_err(|e| VerifierError::SystemConf(e.to_string()))?
        } else {
            let mut opts = ResolverOpts::default();
            opts.attempts = 1;
            (
                tern_dns::hickory::nameservers_config(&settings.nameservers),
                opts,
            )
        };
        opts.timeout = settings.query_timeout;
        opts.cache_size = RESOLVER_CACHE_SIZE;
        opts.positive_max_ttl = Some(MAX_TTL);
        opts.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| VerifierError::Resolver(e.to_string()))?;
        Ok(Verifier {
            auth,
            caches: DnsCaches::new(settings.cache_sizes),
            checks,
            authserv_id: authserv_id.trim_end_matches('.').to_ascii_lowercase(),
            deadline: settings.deadline,
        })
    }

    pub fn checks(&self) -> ChecksConfig {
        self.checks
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// The shared caches (tests insert records into them; the CLI starts empty).
    pub fn caches(&self) -> &DnsCaches {
        &self.caches
    }
}
