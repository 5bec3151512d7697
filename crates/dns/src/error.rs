//! DNS failures, each classified temporary or permanent where it is produced.

/// Why a lookup gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist. Permanent (RFC 5321 5.1).
    #[error("domain {0} does not exist (NXDOMAIN)")]
    NxDomain(String),
    /// The domain publishes a null MX (RFC 7505): it accepts no mail. Permanent.
    #[error("domain {0} accepts no mail (null MX, RFC 7505)")]
    NullMx(String),
    /// Neither MX nor A/AAAA records exist for a name that does exist. Permanent.
    #[error("no MX and no address records for {0}")]
    NoAddresses(String),
    /// The name is not a valid domain name. Permanent.
    #[error("invalid domain name {0:?}")]
    InvalidName(String),
    /// SERVFAIL, timeout, network trouble: try again later.
    #[error("temporary DNS failure for {name}: {reason}")]
    Temporary { name: String, reason: String },
}

impl DnsError {
    /// RFC 5321 5.1 / 4.5.4.1: only a definite answer makes a failure permanent.
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary { .. })
    }
}
