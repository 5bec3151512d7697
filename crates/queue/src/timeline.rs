//! A message's own history, kept in its envelope: how it was received, and what an operator or
//! tern itself did to it apart from delivery attempts (those are in
//! [`crate::Envelope::attempts_log`]). The admin console and `tern queue show` draw the
//! message's timeline from both.
//!
//! Events are written only together with an envelope update the queue makes anyway (the
//! commit, a hold, a round's results), so the timeline costs no extra fsync. The list is
//! bounded ([`MAX_EVENTS`]): a message held and released a thousand times keeps its first
//! event (how it arrived) and the latest ones.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How many events an envelope keeps.
pub const MAX_EVENTS: usize = 32;

/// One event. Stored as `{"event": "held", "at": ...}`; unknown events from a newer tern are
/// skipped when read (see [`Timeline`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The SMTP session that handed the message over (RFC 5321 4.4 puts the same facts in the
    /// Received field; here they are typed).
    Received {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        /// `smtp`, `submission`, `submissions`, or `local` (sendmail, a notification).
        listener: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        helo: Option<String>,
        /// The TLS version and cipher of the session, `None` for cleartext.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<String>,
        /// The authenticated user (RFC 4954), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<String>,
        /// SPF/DKIM/DMARC/ARC results in Authentication-Results style (`spf=pass dkim=pass`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checks: Option<String>,
    },
    /// Held by an operator (or a content filter's quarantine).
    Held {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        by: String,
    },
    Released {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        by: String,
    },
    /// Deferred recipients made due now by an operator.
    Flushed {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        recipients: usize,
    },
    /// A delivery status notification about this message was queued for its sender
    /// (RFC 3464): a bounce for `failed` recipients or a delay notice.
    Notified {
        #[serde(with = "crate::time_format")]
        at: SystemTime,
        kind: NoticeKind,
        recipients: Vec<String>,
        /// The queue id of the notification itself.
        dsn_id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Bounce,
    Delay,
    /// Delivered or relayed, as NOTIFY=SUCCESS asked (RFC 3461).
    Success,
}

impl Event {
    pub fn at(&self) -> SystemTime {
        match self {
            Event::Received { at, .. }
            | Event::Held { at, .. }
            | Event::Released { at, .. }
            | Event::Flushed { at, .. }
            | Event::Notified { at, .. } => *at,
        }
    }
}

/// The events of one envelope, oldest first, at most [`MAX_EVENTS`]. Reading skips an event
/// it does not know (written by a newer tern) instead of failing the whole envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Timeline(Vec<Event>);

impl Timeline {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn events(&self) -> &[Event] {
        &self.0
    }

    /// Appends `event`; past [`MAX_EVENTS`] the oldest after the first (the reception) go.
    pub fn push(&mut self, event: Event) {
        self.0.push(event);
        if self.0.len() > MAX_EVENTS {
            let excess = self.0.len() - MAX_EVENTS;
            self.0.drain(1..1 + excess);
        }
    }
}

impl<'de> Deserialize<'de> for Timeline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<serde_json::Value> = Vec::deserialize(d)?;
        Ok(Timeline(
            raw.into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .take(MAX_EVENTS)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn held(n: u64) -> Event {
        Event::Held {
            at: UNIX_EPOCH + Duration::from_secs(n),
            by: "admin".into(),
        }
    }

    #[test]
    fn bounded_and_keeps_the_reception() {
        let mut t = Timeline::default();
        t.push(Event::Received {
            at: UNIX_EPOCH,
            listener: "smtp".into(),
            client_ip: None,
            helo: None,
            tls: None,
            auth: None,
            checks: None,
        });
        for n in 1..=100 {
            t.push(held(n));
        }
        assert_eq!(t.events().len(), MAX_EVENTS);
        assert!(matches!(t.events()[0], Event::Received { .. }));
        assert_eq!(t.events()[MAX_EVENTS - 1], held(100));
        assert_eq!(t.events()[1], held(100 - (MAX_EVENTS as u64 - 2)));
    }

    #[test]
    fn unknown_events_are_skipped_not_fatal() {
        let json = r#"[{"event":"teleported","at":"2024-01-01T00:00:00Z"},
            {"event":"held","at":"2024-01-01T00:00:00Z","by":"cli"}]"#;
        let t: Timeline = serde_json::from_str(json).unwrap();
        assert_eq!(t.events().len(), 1);
        let back = serde_json::to_string(&t).unwrap();
        assert!(back.contains(r#""event":"held""#), "{back}");
    }
}
