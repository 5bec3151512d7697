//! The message the session hands to intake once it passed every check: the envelope, where
//! each recipient's copies go, the trace field, and what intake must still do with it (sign,
//! verify). Both intake and the inbound checks read it; neither owns it.

use std::net::IpAddr;

use tern_auth::SpfOutcome;

use crate::router::Target;

/// A message that passed every check of the session and must be stored before the 250.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub sender: Option<String>,
    pub recipients: Vec<AcceptedRecipient>,
    /// Trace header to prepend to the client's data.
    pub received: String,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub helo: String,
    pub client_ip: IpAddr,
    /// The message is ours to sign (the client authenticated or is in
    /// `relay.trusted_networks`): intake adds the DKIM signatures of its From: domain.
    pub sign: bool,
    /// Whether to verify it (SPF, DKIM, ARC, DMARC) before storing: port-25 mail from
    /// outside only (see [`crate::checks`]).
    pub inbound: Inbound,
    /// The session facts the message's timeline records (tern_queue::Event::Received).
    pub via: Box<Via>,
    /// MAIL's RET and ENVID (RFC 3461).
    pub dsn: tern_queue::MessageDsn,
    /// MAIL's REQUIRETLS (RFC 8689).
    pub requiretls: bool,
}

/// How a message reached tern, for its timeline: never used to decide anything.
#[derive(Debug, Clone, Default)]
pub struct Via {
    /// `smtp`, `submission`, `submissions`.
    pub listener: &'static str,
    /// The session's TLS version and cipher; `None` for cleartext.
    pub tls: Option<String>,
    /// The authenticated user.
    pub auth: Option<String>,
    /// SPF/DKIM/DMARC/ARC results (`spf=pass dkim=pass dmarc=pass`), set by the inbound checks.
    pub checks: Option<String>,
}

impl Via {
    /// The `method=result` pairs of an Authentication-Results field (RFC 8601 2.2), in order,
    /// for the timeline: `spf=pass dkim=fail dmarc=fail`.
    pub fn summarize(authentication_results: &str) -> Option<String> {
        let mut out: Vec<&str> = Vec::new();
        for token in authentication_results.split(|c: char| c.is_whitespace() || c == ';') {
            let Some((method, result)) = token.split_once('=') else {
                continue;
            };
            let known = matches!(
                method.to_ascii_lowercase().as_str(),
                "spf" | "dkim" | "dmarc" | "arc" | "iprev"
            );
            if known && !result.is_empty() && out.len() < 16 {
                out.push(token);
            }
        }
        (!out.is_empty()).then(|| out.join(" "))
    }
}

#[derive(Debug, Clone)]
pub struct AcceptedRecipient {
    /// As the client gave it (after normalizing `<postmaster>`).
    pub address: String,
    /// Where its copies go, as the router decided at RCPT time.
    pub targets: Vec<Target>,
    /// RCPT's NOTIFY and ORCPT (RFC 3461).
    pub dsn: tern_queue::RcptDsn,
}

/// Whether intake verifies a message, decided by the session.
#[derive(Debug, Clone, Default)]
pub enum Inbound {
    /// Not verified, and no Authentication-Results added: our own mail (an authenticated
    /// client, a host in `relay.trusted_networks`) or a listener other than port 25.
    #[default]
    Skip,
    /// Verified at the end of DATA. `spf` is the result of MAIL FROM when SPF ran there
    /// (`checks.spf_fail_reject = true`); `None` has it run now, so it is never looked up twice.
    /// (Boxed: the result is large and most messages get `Skip`.)
    Verify { spf: Option<Box<SpfOutcome>> },
}
