//! Client errors. Each is classified temporary or permanent here (architecture habit 3), so a bare
//! I/O error never decides between retry and bounce by accident.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tern_proto::{Reply, ReplyError};

use crate::fingerprint::CertFingerprint;

/// The protocol phase an error or reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Banner,
    Ehlo,
    Helo,
    StartTls,
    Tls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// Sending the message body.
    DataBody,
    /// The reply to the final dot.
    DataEnd,
    Rset,
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Banner => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::Tls => "TLS handshake",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataBody => "message transfer",
            Stage::DataEnd => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("{stage}: {source}")]
    Io {
        stage: Stage,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("timed out after {}s waiting for {stage}", after.as_secs_f64())]
    Timeout { stage: Stage, after: Duration },
    #[error("connection closed by the server during {stage}")]
    Closed { stage: Stage },
    #[error("invalid reply during {stage}: {error}")]
    Protocol { stage: Stage, error: ReplyError },
    #[error("{stage} rejected: {reply}")]
    Rejected { stage: Stage, reply: Reply },
    #[error("TLS: {0}")]
    Tls(TlsFailure),
    #[error("TLS is required but the server does not offer STARTTLS")]
    TlsUnavailable,
    #[error("refusing to send credentials over an unencrypted connection")]
    PlaintextAuth,
    #[error("the server offers no supported AUTH mechanism (PLAIN, LOGIN)")]
    AuthUnavailable,
    #[error("the message contains 8-bit data but the server does not support 8BITMIME")]
    Needs8BitMime,
    #[error("non-ASCII addresses need SMTPUTF8 but the server does not support it")]
    NeedsSmtpUtf8,
    /// RFC 8689 4.2.1: the message asked for REQUIRETLS, and this session is not TLS or the
    /// server does not offer REQUIRETLS.
    #[error("the message requires TLS all the way (REQUIRETLS) but the server does not offer REQUIRETLS over TLS")]
    NeedsRequireTls,
    #[error("message size {size} exceeds the server's limit of {limit} (SIZE)")]
    TooBig { size: u64, limit: u64 },
    #[error("the connection is no longer usable")]
    Unusable,
    /// The message could not be read from where it is kept (the spool file); temporary.
    #[error("reading the message: {0}")]
    Source(Arc<io::Error>),
    /// The server took the message body slower than [`crate::MinDataRate`] allows: `sent`
    /// bytes (dot-stuffed, whole blocks written) in `after`.
    #[error("the server took {sent} bytes of the message in {}s, slower than the minimum of {min} bytes/s", after.as_secs())]
    TooSlow {
        sent: u64,
        after: Duration,
        min: std::num::NonZeroU64,
    },
}

/// What went wrong with TLS. Every kind is temporary (the relay's `451 4.7.5`, `tern send`'s 75:
/// a certificate gets renewed, a pin gets updated); they differ in what the caller may do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The handshake could not be completed (no common version or suite, an alert, the
    /// connection dropped), or was not attempted (bytes injected after the STARTTLS reply).
    /// Only this kind lets opportunistic TLS retry in cleartext (RFC 7435).
    #[error("{0}")]
    Handshake(String),
    /// The certificate failed verification (chain, name or dates) where it had to pass; in
    /// rustls's words (`invalid peer certificate: UnknownIssuer`).
    #[error("{0}")]
    Certificate(String),
    /// The certificate is not the pinned one.
    #[error("the server certificate's SHA-256 fingerprint is {seen}, not the pinned {expected}")]
    FingerprintMismatch {
        expected: CertFingerprint,
        seen: CertFingerprint,
    },
    /// Credentials were to be sent over TLS whose certificate did not verify (RFC 7435 allows
    /// encrypting without authenticating, never handing a password to whoever answered).
    #[error("the server certificate is not verified ({reason}): refusing to send credentials")]
    UnverifiedCredentials { reason: String },
}

impl From<String> for TlsFailure {
    fn from(s: String) -> Self {
        TlsFailure::Handshake(s)
    }
}

impl From<&str> for TlsFailure {
    fn from(s: &str) -> Self {
        TlsFailure::Handshake(s.to_string())
    }
}

impl TlsFailure {
    /// True when the server's certificate (not the handshake) is the problem: trusting its CA
    /// or pinning it is the fix.
    pub fn is_certificate(&self) -> bool {
        !matches!(self, TlsFailure::Handshake(_))
    }
}

impl ClientError {
    pub(crate) fn io(stage: Stage, e: io::Error) -> Self {
        ClientError::Io {
            stage,
            source: Arc::new(e),
        }
    }

    /// Temporary (retry later, exit 75) or permanent (bounce, exit 69).
    /// Network trouble, timeouts, garbage and missing TLS/AUTH support are temporary, as
    /// Postfix defers them; a 5xx reply and a message the server can never take are permanent.
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::Rejected { reply, .. } => reply.code() < 500,
            ClientError::PlaintextAuth
            | ClientError::Needs8BitMime
            | ClientError::NeedsSmtpUtf8
            | ClientError::NeedsRequireTls
            | ClientError::TooBig { .. } => false,
            _ => true,
        }
    }

    /// The server reply this error quotes, if any.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let r = |c| ClientError::Rejected {
            stage: Stage::Auth,
            reply: Reply::new(c, None, "x"),
        };
        assert!(r(454).is_temporary());
        assert!(!r(535).is_temporary());
        assert!(ClientError::Closed { stage: Stage::Mail }.is_temporary());
        assert!(!ClientError::TooBig { size: 2, limit: 1 }.is_temporary());
        let t = ClientError::Timeout {
            stage: Stage::Banner,
            after: Duration::from_secs(3),
        };
        assert_eq!(t.to_string(), "timed out after 3s waiting for greeting");
    }
}
