//! The slowest a server may take a message body. RFC 5321 4.5.3.2.5 only bounds each TCP send
//! of the data (3 minutes), so a server that takes one byte just inside every such timeout can
//! hold a delivery for as long as it likes; a minimum average rate after a grace period bounds
//! the whole transfer by its size instead (issue 10, like Postfix's `smtp_min_data_rate`).

use std::num::NonZeroU64;
use std::time::Duration;

use tokio::time::Instant;

/// After `grace`, the body must keep up with `bytes_per_sec`: the first N bytes (dot-stuffed,
/// as written) must be written by `start + grace + N / bytes_per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinDataRate {
    pub bytes_per_sec: NonZeroU64,
    pub grace: Duration,
}

impl MinDataRate {
    /// The latest time the first `bytes` of a body started at `start` may finish being
    /// written; `None` when that is beyond any time the clock can represent (no bound).
    pub fn deadline(&self, start: Instant, bytes: u64) -> Option<Instant> {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec.get());
        let allowed = Duration::from_nanos(u64::try_from(nanos).ok()?);
        start.checked_add(self.grace)?.checked_add(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::envelope::Envelope;
    use crate::error::ClientError;
    use crate::outcome::Outcome;
    use crate::scripted::{session, spawn_buffered, Step, Step::*};

    fn rate(bytes_per_sec: u64, grace: u64) -> MinDataRate {
        MinDataRate {
            bytes_per_sec: NonZeroU64::new(bytes_per_sec).unwrap(),
            grace: Duration::from_secs(grace),
        }
    }

    #[test]
    fn the_deadline_grows_with_the_bytes_after_the_grace() {
        let start = Instant::now();
        let r = rate(1024, 30);
        assert_eq!(r.deadline(start, 0), Some(start + Duration::from_secs(30)));
        assert_eq!(
            r.deadline(start, 10 * 1024),
            Some(start + Duration::from_secs(40))
        );
        assert_eq!(
            r.deadline(start, 512),
            Some(start + Duration::from_millis(30_500))
        );
        // Far beyond the clock: no bound rather than a panic.
        assert_eq!(rate(1, 0).deadline(start, u64::MAX), None);
    }

    /// A server that answers everything at once and then takes the body through `body`.
    fn server(body: Step) -> Vec<Step> {
        vec![
            Send("220 mx.test ESMTP\r\n"),
            Expect("EHLO client.test"),
            Send("250-mx.test\r\n250 8BITMIME\r\n"),
            Expect("MAIL FROM:<from@a.test>"),
            Send("250 ok\r\n"),
            Expect("RCPT TO:<a@b.test>"),
            Send("250 ok\r\n"),
            Expect("DATA"),
            Send("354 go\r\n"),
            body,
            Send("250 2.0.0 queued\r\n"),
            Hang,
        ]
    }

    /// 256 KiB of body lines.
    fn big_message() -> Vec<u8> {
        let mut m = b"Subject: big\r\n\r\n".to_vec();
        while m.len() < 256 * 1024 {
            m.extend_from_slice(
                b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq\r\n",
            );
        }
        m
    }

    async fn deliver(body: Step, min: Option<MinDataRate>) -> (Outcome, bool) {
        // A 4 KiB connection buffer: the client waits for the server's reads, as on a full TCP
        // window.
        let (io, _server) = spawn_buffered(4096, server(body));
        let mut s = session(io);
        s.opts.min_data_rate = min;
        s.banner().await.unwrap();
        s.ehlo().await.unwrap();
        let env = Envelope::parse("from@a.test", ["a@b.test"]).unwrap();
        let mut d = s.send_message(&env, &big_message()).await;
        let (_, outcome) = d.per_recipient.remove(0);
        (outcome, s.is_usable())
    }

    // 1 KiB every 100 ms: 10 KiB/s, under the paused clock so no test waits for real.
    const TRICKLE: Step = Trickle {
        bytes: 1024,
        every: Duration::from_millis(100),
    };

    #[tokio::test(start_paused = true)]
    async fn a_trickling_server_is_abandoned_as_temporary() {
        let started = Instant::now();
        let (outcome, usable) = deliver(TRICKLE, Some(rate(64 * 1024, 1))).await;
        let Outcome::TemporaryFailure(f) = &outcome else {
            panic!("expected a temporary failure, got {outcome:?}");
        };
        let crate::outcome::Failure::Error(ClientError::TooSlow { sent, after, min }) = f else {
            panic!("expected TooSlow, got {f:?}");
        };
        assert_eq!(min.get(), 64 * 1024);
        // Given up at the first block that missed its deadline: 1 s grace + 1 s for the
        // first 64 KiB, long before the 3-minute data-block timeout.
        assert!(*sent < 256 * 1024, "{sent}");
        assert!(*after < Duration::from_secs(10), "{after:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            f.to_string()
                .contains("slower than the minimum of 65536 bytes/s"),
            "{f}"
        );
        // Mid-body there is no way back to a clean state: the connection is dropped.
        assert!(!usable);
        assert_eq!(ClientError::TooSlow { sent: 1, after: Duration::from_secs(1), min: *min }.to_string(),
            "the server took 1 bytes of the message in 1s, slower than the minimum of 65536 bytes/s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_server_is_waited_for_without_a_minimum() {
        let (outcome, usable) = deliver(TRICKLE, None).await;
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        assert!(usable);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_keeping_up_delivers() {
        let fast = Trickle {
            bytes: 4096,
            every: Duration::from_millis(1),
        };
        let (outcome, _) = deliver(fast, Some(rate(64 * 1024, 1))).await;
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_covers_a_slow_start() {
        // 10 KiB/s takes about 26 s for the whole body: all of it inside a 60 s grace, so the
        // 64 KiB/s floor that cut it off above never applies.
        let (outcome, _) = deliver(TRICKLE, Some(rate(64 * 1024, 60))).await;
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
}
