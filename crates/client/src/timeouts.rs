//! Per-phase timeouts. Defaults are the minimums of RFC 5321 4.5.3.2; the connect timeout is not
//! in the RFC and defaults to one minute.

use std::time::Duration;

const MIN: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (and the TLS handshake).
    pub connect: Duration,
    /// RFC 5321 4.5.3.2.1: initial 220 message, 5 minutes.
    pub banner: Duration,
    /// EHLO/HELO reply; not named in the RFC, treated like MAIL: 5 minutes.
    pub ehlo: Duration,
    /// RFC 5321 4.5.3.2.2: MAIL reply, 5 minutes.
    pub mail: Duration,
    /// RFC 5321 4.5.3.2.3: RCPT reply, 5 minutes.
    pub rcpt: Duration,
    /// RFC 5321 4.5.3.2.4: DATA initiation (the 354), 2 minutes.
    pub data: Duration,
    /// RFC 5321 4.5.3.2.5: each TCP send of the message data, 3 minutes.
    pub data_block: Duration,
    /// RFC 5321 4.5.3.2.6: reply to the final dot, 10 minutes.
    pub data_end: Duration,
    /// STARTTLS, AUTH, RSET and QUIT replies: 5 minutes.
    pub command: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(MIN),
            banner: Duration::from_secs(5 * MIN),
            ehlo: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_end: Duration::from_secs(10 * MIN),
            command: Duration::from_secs(5 * MIN),
        }
    }
}

impl Timeouts {
    /// Every phase capped at `limit` (the `--timeout` flag of `tern send`).
    pub fn capped(limit: Duration) -> Self {
        let d = Self::default();
        Self {
            connect: d.connect.min(limit),
            banner: d.banner.min(limit),
            ehlo: d.ehlo.min(limit),
            mail: d.mail.min(limit),
            rcpt: d.rcpt.min(limit),
            data: d.data.min(limit),
            data_block: d.data_block.min(limit),
            data_end: d.data_end.min(limit),
            command: d.command.min(limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_defaults_and_cap() {
        let t = Timeouts::default();
        assert_eq!(t.data, Duration::from_secs(120));
        assert_eq!(t.data_end, Duration::from_secs(600));
        let c = Timeouts::capped(Duration::from_secs(3));
        assert_eq!(c.data_end, Duration::from_secs(3));
        assert_eq!(c.connect, Duration::from_secs(3));
    }
}
