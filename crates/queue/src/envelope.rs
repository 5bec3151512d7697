//! The envelope of a queued message: who sent it, to whom, and where each recipient stands.
//! Stored as JSON next to the message (docs/spool-format.md); unknown fields are ignored so an
//! older tern can read a newer spool.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::id::QueueId;
use crate::outcome::{StoredReply, TlsOutcome};
use crate::timeline::Timeline;

/// How many delivery attempts an envelope remembers; older ones are dropped first, so a message
/// retried for days does not grow its envelope without bound.
pub const MAX_ATTEMPTS_LOG: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// The MAIL FROM reverse-path; `None` is the null reverse-path `<>` (RFC 5321 4.5.5:
    /// bounces and other notifications, which must never be answered with a bounce).
    pub sender: Option<String>,
    pub recipients: Vec<Recipient>,
    #[serde(with = "crate::time_format")]
    pub received_at: SystemTime,
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
    #[serde(default)]
    pub helo: Option<String>,
    /// Size of the message in bytes: `prefix` plus what the message file holds.
    pub size: u64,
    /// Header fields tern put in front of the message file's bytes (its `Received:`, the
    /// DKIM-Signature fields of our own mail): the message is `prefix` followed by the file.
    /// A body streamed to disk during DATA becomes the message file by a rename, so what tern
    /// adds at the end of DATA is kept here; a message stored from memory has it in the file,
    /// and this is empty (as in every entry written before tern streamed bodies).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// RFC 6531: the client asked for SMTPUTF8; relaying must not downgrade it silently.
    #[serde(default)]
    pub smtputf8: bool,
    /// RFC 6152: BODY=8BITMIME was given.
    #[serde(default)]
    pub eight_bit: bool,
    /// Held by the admin: the scheduler does not try it until released.
    #[serde(default)]
    pub held: bool,
    /// A "delayed" notification (queue.delay_warning) was sent; it is sent once per message.
    #[serde(default)]
    pub delay_warned: bool,
    /// The latest attempts, oldest first, at most [`MAX_ATTEMPTS_LOG`] (see [`Envelope::log_attempt`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts_log: Vec<Attempt>,
    /// How it arrived and what was done to it besides attempts (docs/operations.md, timeline).
    #[serde(default, skip_serializing_if = "Timeline::is_empty")]
    pub events: Timeline,
    /// The sender's DSN wishes for the whole message (RFC 3461 RET, ENVID).
    #[serde(default, skip_serializing_if = "MessageDsn::is_empty")]
    pub dsn: MessageDsn,
    /// RFC 8689 REQUIRETLS: every hop must be verified TLS, or the message is not sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
}

/// RFC 3461 4.3 and 4.4, as the client gave them at MAIL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDsn {
    /// What a failure DSN returns: the whole message (`full`) or its headers (`hdrs`);
    /// `None`: tern's choice (the headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<DsnRet>,
    /// The sender's transaction id, returned as Original-Envelope-Id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

impl MessageDsn {
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsnRet {
    Full,
    Hdrs,
}

/// RFC 3461 4.1 and 4.2 for one recipient, as the client gave them at RCPT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptDsn {
    /// When to notify; `None`: not said (failures and delays, RFC 3461 4.1's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyOn>,
    /// `addr-type;address` (decoded), returned as Original-Recipient and passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

impl RcptDsn {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// Whether a DSN of this kind goes to the sender for this recipient.
    pub fn wants(&self, kind: Notice) -> bool {
        match (self.notify, kind) {
            (None, Notice::Success) => false,
            (None, Notice::Failure | Notice::Delay) => true,
            (Some(n), Notice::Success) => n.success,
            (Some(n), Notice::Failure) => n.failure,
            (Some(n), Notice::Delay) => n.delay,
        }
    }
}

/// NOTIFY's flags; `NEVER` is all false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyOn {
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub failure: bool,
    #[serde(default)]
    pub delay: bool,
}

impl std::fmt::Display for NotifyOn {
    /// As the parameter is written (RFC 3461 4.1): `NEVER`, or the chosen ones by commas.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chosen: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if chosen.is_empty() {
            f.write_str("NEVER")
        } else {
            f.write_str(&chosen.join(","))
        }
    }
}

/// The notifications NOTIFY chooses between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Success,
    Failure,
    Delay,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Where to deliver (after alias expansion).
    pub address: String,
    /// The RCPT TO address as the client gave it, when an alias rewrote it (for DSNs, RFC 3464
    /// Original-Recipient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    pub status: RecipientStatus,
    /// NOTIFY and ORCPT (RFC 3461).
    #[serde(default, skip_serializing_if = "RcptDsn::is_empty")]
    pub dsn: RcptDsn,
}

/// Where one recipient stands. Stored as `{"state": "deferred", ...}`; a reply is a
/// [`StoredReply`] object, or a plain string in an entry written by an older tern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Never tried yet.
    Pending,
    /// Tried and got a temporary failure (4xx, timeout, DNS SERVFAIL); try again later.
    Deferred {
        attempts: u32,
        last_reply: StoredReply,
        #[serde(with = "crate::time_format")]
        next_attempt: SystemTime,
    },
    /// Accepted by the next hop or stored in the mailbox.
    Delivered {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        reply: StoredReply,
    },
    /// Permanent failure (5xx, or gave up after the maximum queue lifetime).
    Failed {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        reply: StoredReply,
    },
}

impl RecipientStatus {
    /// The state's name as stored (`"state"` in the JSON), logged and printed by `tern queue`.
    pub fn name(&self) -> &'static str {
        match self {
            RecipientStatus::Pending => "pending",
            RecipientStatus::Deferred { .. } => "deferred",
            RecipientStatus::Delivered { .. } => "delivered",
            RecipientStatus::Failed { .. } => "failed",
        }
    }

    /// Pending, or deferred with its retry time reached: a delivery round should try it now.
    pub fn is_due(&self, now: SystemTime) -> bool {
        match self {
            RecipientStatus::Pending => true,
            RecipientStatus::Deferred { next_attempt, .. } => *next_attempt <= now,
            _ => false,
        }
    }

    /// Delivered or failed: nothing more will be tried for this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientStatus::Delivered { .. } | RecipientStatus::Failed { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    #[serde(with = "crate::time_format")]
    pub at: SystemTime,
    pub recipient: String,
    /// The MX host tried, if any (none for local delivery or a DNS failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub reply: StoredReply,
    /// How the connection of this attempt was protected; `None` when no session was set up
    /// (DNS failure, connection refused, local decision) or in an entry from an older tern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsOutcome>,
}

impl Envelope {
    /// A new entry of `size` bytes as it is first committed: nothing tried, no flags, no
    /// client facts (set them with struct update syntax where there are some).
    pub fn new(
        id: QueueId,
        sender: Option<String>,
        recipients: Vec<Recipient>,
        received_at: SystemTime,
        size: u64,
    ) -> Envelope {
        Envelope {
            id,
            sender,
            recipients,
            received_at,
            client_ip: None,
            helo: None,
            size,
            prefix: String::new(),
            smtputf8: false,
            eight_bit: false,
            held: false,
            delay_warned: false,
            attempts_log: Vec::new(),
            events: Timeline::default(),
            dsn: MessageDsn::default(),
            requiretls: false,
        }
    }

    /// Every recipient has a final status: the entry can be removed (after any bounce was queued).
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_final())
    }

    /// Recipients still to be tried (pending or deferred).
    pub fn unfinished(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(|r| !r.status.is_final())
    }

    /// When the entry next needs a delivery round, if ever: `None` when it is held or every
    /// recipient is final; the Unix epoch for a recipient never tried (due at once).
    pub fn next_due(&self) -> Option<SystemTime> {
        if self.held {
            return None;
        }
        self.recipients
            .iter()
            .filter_map(|r| match &r.status {
                RecipientStatus::Pending => Some(SystemTime::UNIX_EPOCH),
                RecipientStatus::Deferred { next_attempt, .. } => Some(*next_attempt),
                _ => None,
            })
            .min()
    }

    /// Records an attempt, dropping the oldest ones beyond [`MAX_ATTEMPTS_LOG`].
    pub fn log_attempt(&mut self, attempt: Attempt) {
        self.attempts_log.push(attempt);
        if self.attempts_log.len() > MAX_ATTEMPTS_LOG {
            let excess = self.attempts_log.len() - MAX_ATTEMPTS_LOG;
            self.attempts_log.drain(..excess);
        }
    }

    /// The JSON stored on disk (one line, newline-terminated).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec(self)?;
        out.push(b'\n');
        Ok(out)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn sample(id: QueueId) -> Envelope {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        Envelope {
            id,
            sender: Some("alice@example.org".into()),
            recipients: vec![
                Recipient {
                    dsn: RcptDsn {
                        notify: Some(NotifyOn {
                            success: true,
                            failure: true,
                            delay: false,
                        }),
                        orcpt: Some("rfc822;Bob@Example.NET".into()),
                    },
                    address: "bob@example.net".into(),
                    original: Some("Bob@Example.NET".into()),
                    status: RecipientStatus::Pending,
                },
                Recipient {
                    dsn: Default::default(),
                    address: "carol@example.com".into(),
                    original: None,
                    status: RecipientStatus::Deferred {
                        attempts: 2,
                        last_reply: StoredReply::from_legacy("451 4.7.1 greylisted"),
                        next_attempt: t + Duration::from_secs(600),
                    },
                },
                Recipient {
                    dsn: Default::default(),
                    address: "dave@example.com".into(),
                    original: None,
                    status: RecipientStatus::Delivered {
                        at: t,
                        reply: StoredReply::from_legacy("250 2.0.0 ok"),
                    },
                },
                Recipient {
                    dsn: Default::default(),
                    address: "eve@example.com".into(),
                    original: None,
                    status: RecipientStatus::Failed {
                        at: t,
                        reply: StoredReply::from_legacy("550 5.1.1 no such user"),
                    },
                },
            ],
            received_at: t,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            helo: Some("client.example.org".into()),
            size: 1234,
            prefix: String::new(),
            smtputf8: true,
            eight_bit: false,
            held: false,
            delay_warned: false,
            dsn: MessageDsn {
                ret: Some(DsnRet::Full),
                envid: Some("QQ314159".into()),
            },
            requiretls: true,
            attempts_log: vec![Attempt {
                at: t,
                recipient: "carol@example.com".into(),
                host: Some("mx.example.com".into()),
                reply: StoredReply::from_legacy("451 4.7.1 greylisted"),
                tls: Some(TlsOutcome::Cleartext),
            }],
            events: Timeline::default(),
        }
    }

    #[test]
    fn json_round_trips_exactly() {
        let env = sample(QueueId::generate());
        let json = env.to_json().unwrap();
        assert_eq!(*json.last().unwrap(), b'\n');
        assert_eq!(Envelope::from_json(&json).unwrap(), env);
    }

    #[test]
    fn json_is_readable_for_operators() {
        let env = sample("0123456789abcdef0123456789abcdef".parse().unwrap());
        let text = String::from_utf8(env.to_json().unwrap()).unwrap();
        assert!(
            text.contains(r#""received_at":"2023-11-14T22:13:20.000000005Z""#),
            "{text}"
        );
        assert!(text.contains(r#""status":{"state":"pending"}"#), "{text}");
        assert!(
            text.contains(r#""state":"deferred","attempts":2"#),
            "{text}"
        );
        assert!(text.contains(r#""client_ip":"192.0.2.7""#), "{text}");
    }

    #[test]
    fn null_sender_and_minimal_json_load() {
        let json = br#"{"id":"0123456789abcdef0123456789abcdef","sender":null,
            "recipients":[{"address":"a@b","status":{"state":"pending"}}],
            "received_at":"2024-01-01T00:00:00Z","size":3,"from_a_newer_version":1}"#;
        let env = Envelope::from_json(json).unwrap();
        assert_eq!(env.sender, None);
        assert!(!env.held && env.attempts_log.is_empty() && env.client_ip.is_none());
        assert!(!env.is_finished());
    }

    /// An envelope exactly as tern wrote it before replies were typed: plain strings.
    #[test]
    fn an_envelope_with_string_replies_still_loads() {
        let json = br#"{"id":"0123456789abcdef0123456789abcdef","sender":"a@b.test","recipients":[
            {"address":"c@d.test","status":{"state":"deferred","attempts":2,
             "last_reply":"451 4.4.1 host mx.d.test[192.0.2.1]: connect: Connection refused",
             "next_attempt":"2024-01-01T00:10:00.000000000Z"}},
            {"address":"e@d.test","status":{"state":"failed","at":"2024-01-01T00:05:00Z",
             "reply":"550 5.1.1 no such user (host mx.d.test[192.0.2.1], in reply to RCPT TO)"}},
            {"address":"f@d.test","status":{"state":"delivered","at":"2024-01-01T00:05:00Z",
             "reply":"250 2.0.0 ok (host mx.d.test[192.0.2.1])"}}],
            "received_at":"2024-01-01T00:00:00Z","size":3,
            "attempts_log":[{"at":"2024-01-01T00:05:00Z","recipient":"e@d.test","host":"mx.d.test",
             "reply":"550 5.1.1 no such user (host mx.d.test[192.0.2.1], in reply to RCPT TO)"}]}"#;
        let env = Envelope::from_json(json).unwrap();
        let RecipientStatus::Deferred { last_reply, .. } = &env.recipients[0].status else {
            panic!("{:?}", env.recipients[0]);
        };
        assert_eq!(last_reply.code(), 451);
        assert_eq!(
            last_reply.enhanced().map(|e| e.to_string()).as_deref(),
            Some("4.4.1")
        );
        assert_eq!(
            last_reply.to_string(),
            "451 4.4.1 host mx.d.test[192.0.2.1]: connect: Connection refused"
        );
        let RecipientStatus::Failed { reply, .. } = &env.recipients[1].status else {
            panic!("{:?}", env.recipients[1]);
        };
        assert_eq!(reply.code(), 550);
        assert_eq!(
            reply.origin(),
            None,
            "where an old reply came from is unknown"
        );
        assert_eq!(env.attempts_log[0].reply, *reply);
        assert_eq!(env.attempts_log[0].tls, None);
        // Written back in the new form, it reads the same.
        assert_eq!(Envelope::from_json(&env.to_json().unwrap()).unwrap(), env);
    }

    #[test]
    fn a_bad_id_in_the_json_is_rejected() {
        let json = br#"{"id":"../../etc","sender":null,"recipients":[],"received_at":"2024-01-01T00:00:00Z","size":0}"#;
        assert!(Envelope::from_json(json).is_err());
    }

    #[test]
    fn attempts_log_is_capped_keeping_the_latest() {
        let mut env = sample(QueueId::generate());
        for i in 0..100 {
            env.log_attempt(Attempt {
                at: UNIX_EPOCH,
                recipient: format!("r{i}"),
                host: None,
                reply: StoredReply::from_legacy(""),
                tls: None,
            });
        }
        assert_eq!(env.attempts_log.len(), MAX_ATTEMPTS_LOG);
        assert_eq!(env.attempts_log.last().unwrap().recipient, "r99");
        assert_eq!(
            env.attempts_log[0].recipient,
            format!("r{}", 100 - MAX_ATTEMPTS_LOG)
        );
    }

    #[test]
    fn finished_only_when_every_recipient_is_final() {
        let mut env = sample(QueueId::generate());
        assert_eq!(env.unfinished().count(), 2);
        for r in &mut env.recipients {
            if !r.status.is_final() {
                r.status = RecipientStatus::Failed {
                    at: UNIX_EPOCH,
                    reply: StoredReply::from_legacy("gave up"),
                };
            }
        }
        assert!(env.is_finished());
    }
}
