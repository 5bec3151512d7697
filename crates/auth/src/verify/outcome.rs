//! What verification decided, as owned types the SMTP session and the CLI consume: per-method
//! results (RFC 8601 2.7 result names), the SMTP reply to send when mail is refused, and the
//! disposition of a message.

use std::fmt;

/// A result keyword of RFC 8601 2.7 (the union of what SPF, DKIM, DMARC and ARC report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for AuthResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<mail_auth::SpfResult> for AuthResult {
    fn from(r: mail_auth::SpfResult) -> Self {
        use mail_auth::SpfResult as S;
        match r {
            S::Pass => AuthResult::Pass,
            S::Fail => AuthResult::Fail,
            S::SoftFail => AuthResult::SoftFail,
            S::Neutral => AuthResult::Neutral,
            S::TempError => AuthResult::TempError,
            S::PermError => AuthResult::PermError,
            S::None => AuthResult::None,
        }
    }
}

impl From<&mail_auth::DkimResult> for AuthResult {
    fn from(r: &mail_auth::DkimResult) -> Self {
        use mail_auth::DkimResult as D;
        match r {
            D::Pass => AuthResult::Pass,
            D::Neutral(_) => AuthResult::Neutral,
            D::Fail(_) => AuthResult::Fail,
            D::PermError(_) => AuthResult::PermError,
            D::TempError(_) => AuthResult::TempError,
            D::None => AuthResult::None,
        }
    }
}

impl From<&mail_auth::DmarcResult> for AuthResult {
    fn from(r: &mail_auth::DmarcResult) -> Self {
        use mail_auth::DmarcResult as D;
        match r {
            D::Pass => AuthResult::Pass,
            D::Fail(_) => AuthResult::Fail,
            D::TempError(_) => AuthResult::TempError,
            D::PermError(_) => AuthResult::PermError,
            D::None => AuthResult::None,
        }
    }
}

/// An SMTP reply refusing mail: code, enhanced status (RFC 3463, RFC 7372) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// 550 (permanent) or 451 (temporary).
    pub code: u16,
    /// e.g. "5.7.1", "5.7.23", "4.7.1".
    pub status: &'static str,
    pub text: String,
}

impl SmtpReply {
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// Which identity SPF checked (RFC 7208 2.3, 2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfIdentity {
    /// The MAIL FROM address.
    MailFrom(String),
    /// The HELO/EHLO name: checked when MAIL FROM is the null sender `<>` (RFC 7208 2.4).
    Helo(String),
}

/// What to do at MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfVerdict {
    Accept,
    /// `[checks] spf_fail_reject = true` and SPF said `fail`: 550 5.7.23 (RFC 7372 3.2).
    Reject(SmtpReply),
}

/// The SPF result of one transaction, computed at MAIL FROM and carried to the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: AuthResult,
    pub identity: SpfIdentity,
    /// The domain whose record was evaluated.
    pub domain: String,
    /// Why, for people: the `exp=` text of a fail, or what went wrong.
    pub explanation: Option<String>,
    pub verdict: SpfVerdict,
    /// mail-auth's own result, kept for the DMARC evaluation and the header.
    pub(crate) output: mail_auth::SpfOutput,
}

/// One DKIM-Signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSignatureResult {
    pub result: AuthResult,
    /// `d=` and `s=`; empty when the signature could not even be parsed.
    pub domain: String,
    pub selector: String,
    /// Why it did not pass.
    pub reason: Option<String>,
}

/// The DMARC evaluation (RFC 7489).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcSummary {
    pub result: AuthResult,
    /// The RFC 5322.From domain.
    pub domain: String,
    /// The policy that applies (p= or sp=), before pct sampling.
    pub policy: DmarcPolicy,
    /// The policy applied after `pct=` sampling (RFC 7489 6.6.4); equal to `policy` when the
    /// message passed or pct is 100.
    pub applied: DmarcPolicy,
    /// `pct=` of the record (100 when absent).
    pub pct: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }

    /// RFC 7489 6.6.4: the message not selected by `pct=` gets the next less strict policy.
    pub fn relaxed(self) -> Self {
        match self {
            DmarcPolicy::Reject => DmarcPolicy::Quarantine,
            DmarcPolicy::Quarantine | DmarcPolicy::None => DmarcPolicy::None,
        }
    }
}

/// What happens to the message at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Deliver,
    /// DMARC `p=quarantine` failure (or `p=reject` with `dmarc_reject = false`): deliver with
    /// the header; local mailboxes file it into the Maildir++ folder `.Junk/`.
    Quarantine,
    /// DMARC `p=reject` failure with `dmarc_reject = true`: 550 5.7.1.
    Reject(SmtpReply),
    /// The policy would reject but DNS failed (or the deadline passed): 451 4.7.1, never a
    /// permanent refusal for a DNS problem.
    TempFail(SmtpReply),
}

/// Everything `check_message` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    /// `None` when SPF is not checked.
    pub spf: Option<SpfOutcome>,
    /// One entry per DKIM-Signature; `None` when DKIM is not checked, empty when unsigned.
    pub dkim: Option<Vec<DkimSignatureResult>>,
    /// `None` when ARC is not checked; `none` when the message has no ARC set.
    pub arc: Option<AuthResult>,
    /// `None` when DMARC is not checked.
    pub dmarc: Option<DmarcSummary>,
    pub disposition: Disposition,
    /// The whole `Authentication-Results:` field (RFC 8601), folded, ending in CRLF; prepend
    /// it to the message after [`crate::strip_our_authentication_results`].
    pub authentication_results: String,
    /// The ARC set for forwarded copies: `None` when no sealer was given (or the message is
    /// refused, or could not be parsed), else the set or why there is none.
    pub arc_seal: Option<Result<crate::arc::ArcSeal, crate::arc::NotSealed>>,
}

/// The short results for the per-transaction log line (`spf=`, `dkim=`, `dmarc=`, `arc=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFields {
    pub spf: &'static str,
    pub dkim: &'static str,
    pub dmarc: &'static str,
    pub arc: &'static str,
}

impl MessageVerdict {
    /// `off` for a check not made; for DKIM, `pass` if any signature passed, else the first
    /// signature's result, `none` when unsigned.
    pub fn log_fields(&self) -> LogFields {
        let dkim = match &self.dkim {
            None => "off",
            Some(sigs) => sigs
                .iter()
                .find(|s| s.result == AuthResult::Pass)
                .or_else(|| sigs.first())
                .map_or("none", |s| s.result.as_str()),
        };
        LogFields {
            spf: self.spf.as_ref().map_or("off", |s| s.result.as_str()),
            dkim,
            dmarc: self.dmarc.as_ref().map_or("off", |d| d.result.as_str()),
            arc: self.arc.map_or("off", AuthResult::as_str),
        }
    }
}

impl fmt::Display for LogFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spf={} dkim={} dmarc={} arc={}",
            self.spf, self.dkim, self.dmarc, self.arc
        )
    }
}
