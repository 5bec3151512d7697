//! The largest value each duration key accepts (docs/configuration.md lists them with the keys).
//!
//! Durations end up added to `Instant::now()` or `SystemTime::now()` (deadlines, retry times,
//! expiry), which panics on overflow: humantime happily parses `"100000000years"`. Each cap is
//! far above any sane setting for its key, and small enough that every sum tern forms stays
//! representable; beyond it the file is refused with a config error instead of a panic later.

use std::time::Duration;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// `limits.command_timeout`: RFC 5321 4.5.3.2.7 asks for at least 5 minutes; an hour is
/// already a connection held by an idle client.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(HOUR);
/// `limits.data_timeout`: the deadline for a whole message, so a full-size message on a very
/// slow link may need hours.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(DAY);
/// `queue.max_age`: RFC 5321 4.5.4.1 suggests 4-5 days.
pub const QUEUE_MAX_AGE: Duration = Duration::from_secs(30 * DAY);
/// Each entry of `queue.retry_schedule`.
pub const RETRY_DELAY: Duration = Duration::from_secs(DAY);
/// `queue.delay_warning`.
pub const DELAY_WARNING: Duration = Duration::from_secs(30 * DAY);
/// `outbound.connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10 * MINUTE);
/// `outbound.command_timeout`: RFC 5321 4.5.3.2 suggests 5 minutes per reply.
pub const OUTBOUND_COMMAND_TIMEOUT: Duration = Duration::from_secs(HOUR);
/// `outbound.data_timeout`: RFC 5321 4.5.3.2.6 suggests 10 minutes for the reply to the dot.
pub const OUTBOUND_DATA_TIMEOUT: Duration = Duration::from_secs(HOUR);
/// `limits.max_session_time`: a whole session; a day is far beyond any real transaction.
pub const MAX_SESSION_TIME: Duration = Duration::from_secs(DAY);
/// `limits.stress_command_timeout`: the shortened command deadline under stress.
pub const STRESS_COMMAND_TIMEOUT: Duration = Duration::from_secs(HOUR);
/// `limits.stress_data_timeout`: the shortened DATA deadline under stress.
pub const STRESS_DATA_TIMEOUT: Duration = Duration::from_secs(DAY);
/// `outbound.attempt_timeout`: one whole attempt; a day is far beyond any real transfer.
pub const OUTBOUND_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(DAY);
/// `outbound.min_data_rate_grace`: longer than this and the rate would hardly be a bound.
pub const OUTBOUND_MIN_DATA_RATE_GRACE: Duration = Duration::from_secs(HOUR);
/// `tls_rpt.interval`: one report period; a week is already far longer than RFC 8460's day.
pub const TLS_RPT_INTERVAL: Duration = Duration::from_secs(7 * DAY);
/// `milters[].timeout`: one reply of a content filter.
pub const MILTER_TIMEOUT: Duration = Duration::from_secs(HOUR);
/// `milters[].message_timeout`: a filter's whole end-of-message exchange.
pub const MILTER_MESSAGE_TIMEOUT: Duration = Duration::from_secs(DAY);
