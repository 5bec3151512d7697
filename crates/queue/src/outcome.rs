//! Typed delivery outcomes, as stored in the envelope: the reply that decided a recipient's
//! fate ([`StoredReply`]: code, enhanced code, text, and which remote host gave it at which
//! stage, if any), the TLS outcome of an attempt ([`TlsOutcome`]), and the one per-recipient
//! result of an attempt ([`RcptOutcome`]) that the relay and `tern send` share.
//!
//! Bounces (RFC 3464) are built from these fields; nothing re-parses a reply's text, except
//! once, when an envelope written by an older tern (replies as plain strings) is read.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tern_proto::EnhancedCode;

/// Stored reply texts are cut to this many bytes when built (a remote can send a long
/// multi-line reply; the envelope is rewritten at every attempt and must stay small).
pub const MAX_REPLY_TEXT: usize = 2048;

/// The protocol phase a remote reply answered (RFC 5321 command names, lower case on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Connect,
    Banner,
    Ehlo,
    Helo,
    Starttls,
    /// The TLS handshake itself.
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
            Stage::Starttls => "STARTTLS",
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

/// A reply code and enhanced status code with text: one a remote server sent, or one tern
/// decided on itself (then `remote_host` is `None`). Built only through the constructors, so
/// the code is always a 2xx-5xx reply code and the text is capped at [`MAX_REPLY_TEXT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: String,
    remote: Option<Remote>,
}

/// Where a remote reply came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The host NAME (MX or route host) that gave the reply: RFC 3464 Remote-MTA.
    pub host: String,
    pub addr: Option<IpAddr>,
    pub stage: Option<Stage>,
}

impl StoredReply {
    /// A reply tern decided on itself. `code` outside 200..=599 is recorded as 451 (temporary,
    /// so a caller's mistake is retried rather than bounced).
    pub fn local(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        let code = if (200..=599).contains(&code) {
            code
        } else {
            451
        };
        Self {
            code,
            enhanced,
            text: cap(text.into()),
            remote: None,
        }
    }

    /// A reply the remote `host` gave (at `stage`, when known).
    pub fn remote(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<String>,
        remote: Remote,
    ) -> Self {
        Self {
            remote: Some(remote),
            ..Self::local(code, enhanced, text)
        }
    }

    /// Parses the plain string an older tern stored (`"451 4.4.2 host … (…)"`): code,
    /// enhanced code, the rest as text; where it came from is unknown. A string with no
    /// leading reply code is kept whole under 451.
    pub fn from_legacy(s: &str) -> Self {
        let s = s.trim();
        let b = s.as_bytes();
        let has_code = b.len() >= 3
            && b[..3].iter().all(u8::is_ascii_digit)
            && matches!(b[0], b'2'..=b'5')
            && (b.len() == 3 || b[3] == b' ' || b[3] == b'-');
        if !has_code {
            return Self::local(451, None, s);
        }
        let code: u16 = s[..3].parse().unwrap_or(451);
        let rest = s.get(4..).unwrap_or("");
        match EnhancedCode::parse_prefix(rest) {
            Some((e, text)) if e.class as u16 == code / 100 => Self::local(code, Some(e), text),
            _ => Self::local(code, None, rest),
        }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The remote host that gave the reply; `None` when tern decided.
    pub fn origin(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    pub fn remote_host(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.host.as_str())
    }

    /// The same code and origin with another text (a status that wraps another one keeps
    /// who said it: "gave up after 5d in the queue; last error: ...").
    pub fn with_text(self, text: impl Into<String>) -> Self {
        Self {
            text: cap(text.into()),
            ..self
        }
    }

    /// The RFC 3463 status of this reply: its enhanced code when its class agrees with the
    /// reply code, else the generic code of the reply's class (4.0.0, 5.0.0; 2.0.0).
    pub fn status(&self) -> EnhancedCode {
        let class = (self.code / 100) as u8;
        match self.enhanced {
            Some(e) if e.class == class => e,
            _ => EnhancedCode::new(class, 0, 0),
        }
    }
}

fn cap(mut text: String) -> String {
    if text.len() > MAX_REPLY_TEXT {
        let mut end = MAX_REPLY_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `550 5.1.1 no such user`: what logs, `tern queue list` and `--json`'s `last_reply` show.
impl fmt::Display for StoredReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// The stored object form (docs/spool-format.md).
#[derive(Serialize, Deserialize)]
struct ReplyObject {
    code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enhanced: Option<String>,
    #[serde(default)]
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote_addr: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stage: Option<Stage>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ReplyForm {
    Legacy(String),
    Object(ReplyObject),
}

impl Serialize for StoredReply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ReplyObject {
            code: self.code,
            enhanced: self.enhanced.map(|e| e.to_string()),
            text: self.text.clone(),
            remote_host: self.remote.as_ref().map(|r| r.host.clone()),
            remote_addr: self.remote.as_ref().and_then(|r| r.addr),
            stage: self.remote.as_ref().and_then(|r| r.stage),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoredReply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match ReplyForm::deserialize(d)? {
            ReplyForm::Legacy(s) => StoredReply::from_legacy(&s),
            ReplyForm::Object(o) => {
                let enhanced = o
                    .enhanced
                    .as_deref()
                    .and_then(|e| EnhancedCode::parse_prefix(e).map(|(e, _)| e));
                let reply = StoredReply::local(o.code, enhanced, o.text);
                match o.remote_host {
                    Some(host) => StoredReply {
                        remote: Some(Remote {
                            host,
                            addr: o.remote_addr,
                            stage: o.stage,
                        }),
                        ..reply
                    },
                    None => reply,
                }
            }
        })
    }
}

/// What an attempt's connection was protected by (issue: every attempt records it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TlsOutcome {
    /// No TLS: not offered, not wanted, or a failed opportunistic handshake fell back.
    Cleartext,
    /// TLS with this protocol version and cipher suite (rustls names, e.g. `TLSv1_3`,
    /// `TLS13_AES_256_GCM_SHA384`); `verified`: the certificate chain and name were checked.
    Tls {
        version: String,
        cipher: String,
        verified: bool,
    },
}

/// `cleartext`, or `TLSv1_3/TLS13_AES_256_GCM_SHA384/verified` (one token for a log field).
impl fmt::Display for TlsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsOutcome::Cleartext => f.write_str("cleartext"),
            TlsOutcome::Tls {
                version,
                cipher,
                verified,
            } => write!(
                f,
                "{version}/{cipher}/{}",
                if *verified { "verified" } else { "unverified" }
            ),
        }
    }
}

/// The class of a recipient's outcome in one attempt, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RcptClass {
    /// Accepted by the next hop.
    Delivered,
    /// Temporary failure: try again later.
    Deferred,
    /// Permanent failure: bounce.
    Failed,
}

/// What happened to one recipient in one attempt, and the reply that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    pub class: RcptClass,
    pub reply: StoredReply,
}

impl RcptOutcome {
    pub fn delivered(reply: StoredReply) -> Self {
        Self {
            class: RcptClass::Delivered,
            reply,
        }
    }

    pub fn deferred(reply: StoredReply) -> Self {
        Self {
            class: RcptClass::Deferred,
            reply,
        }
    }

    pub fn failed(reply: StoredReply) -> Self {
        Self {
            class: RcptClass::Failed,
            reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_strings_are_parsed_once() {
        let r = StoredReply::from_legacy(
            "451 4.4.2 host mx.x.test[192.0.2.1]: timed out after 2s waiting for greeting",
        );
        assert_eq!(r.code(), 451);
        assert_eq!(r.enhanced(), Some(EnhancedCode::new(4, 4, 2)));
        assert_eq!(
            r.text(),
            "host mx.x.test[192.0.2.1]: timed out after 2s waiting for greeting"
        );
        assert_eq!(r.origin(), None);
        let plain = StoredReply::from_legacy("550 no such user");
        assert_eq!((plain.code(), plain.enhanced()), (550, None));
        assert_eq!(plain.text(), "no such user");
        assert_eq!(plain.status(), EnhancedCode::new(5, 0, 0));
        let junk = StoredReply::from_legacy("gave up");
        assert_eq!((junk.code(), junk.text()), (451, "gave up"));
        // An enhanced code of another class is text, not a status.
        let odd = StoredReply::from_legacy("550 4.1.1 confused");
        assert_eq!((odd.enhanced(), odd.text()), (None, "4.1.1 confused"));
        assert_eq!(StoredReply::from_legacy("250").to_string(), "250");
    }

    #[test]
    fn display_is_code_enhanced_text() {
        let r = StoredReply::remote(
            550,
            Some(EnhancedCode::new(5, 1, 1)),
            "no such user",
            Remote {
                host: "mx.x.test".into(),
                addr: Some("192.0.2.1".parse().unwrap()),
                stage: Some(Stage::Rcpt),
            },
        );
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        assert_eq!(r.remote_host(), Some("mx.x.test"));
    }

    #[test]
    fn serde_writes_objects_and_reads_both_forms() {
        let r = StoredReply::remote(
            451,
            Some(EnhancedCode::new(4, 7, 1)),
            "greylisted",
            Remote {
                host: "mx.x.test".into(),
                addr: Some("192.0.2.1".parse().unwrap()),
                stage: Some(Stage::DataEnd),
            },
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"code":451,"enhanced":"4.7.1","text":"greylisted","remote_host":"mx.x.test","remote_addr":"192.0.2.1","stage":"data-end"}"#
        );
        assert_eq!(serde_json::from_str::<StoredReply>(&json).unwrap(), r);
        let local = StoredReply::local(554, Some(EnhancedCode::new(5, 4, 6)), "mail loop");
        let json = serde_json::to_string(&local).unwrap();
        assert_eq!(
            json,
            r#"{"code":554,"enhanced":"5.4.6","text":"mail loop"}"#
        );
        assert_eq!(serde_json::from_str::<StoredReply>(&json).unwrap(), local);
        let old: StoredReply = serde_json::from_str(r#""550 5.1.1 no such user""#).unwrap();
        assert_eq!(old.to_string(), "550 5.1.1 no such user");
        assert!(serde_json::from_str::<StoredReply>("42").is_err());
    }

    #[test]
    fn text_is_capped_on_a_char_boundary() {
        let long = "é".repeat(MAX_REPLY_TEXT);
        let r = StoredReply::local(550, None, long);
        assert!(r.text().len() <= MAX_REPLY_TEXT && r.text().len() >= MAX_REPLY_TEXT - 1);
        let json = format!(r#"{{"code":550,"text":"{}"}}"#, "a".repeat(10_000));
        let r: StoredReply = serde_json::from_str(&json).unwrap();
        assert_eq!(r.text().len(), MAX_REPLY_TEXT);
        assert_eq!(StoredReply::local(99, None, "x").code(), 451);
    }

    #[test]
    fn tls_outcome_forms() {
        let t = TlsOutcome::Tls {
            version: "TLSv1_3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            verified: false,
        };
        assert_eq!(t.to_string(), "TLSv1_3/TLS13_AES_256_GCM_SHA384/unverified");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            json,
            r#"{"mode":"tls","version":"TLSv1_3","cipher":"TLS13_AES_256_GCM_SHA384","verified":false}"#
        );
        assert_eq!(serde_json::from_str::<TlsOutcome>(&json).unwrap(), t);
        assert_eq!(
            serde_json::to_string(&TlsOutcome::Cleartext).unwrap(),
            r#"{"mode":"cleartext"}"#
        );
    }
}
