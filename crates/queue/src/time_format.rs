//! SystemTime as RFC 3339 UTC text in spool files (readable with `cat` and `jq`), exact to the
//! nanosecond so that load(store(x)) == x.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serializer};

/// 9999-12-31T23:59:59.999999999Z, the last instant RFC 3339 can write.
const MAX_SECS: u64 = 253_402_300_799;

/// Clamps into what RFC 3339 can express: a time before 1970 or after 9999 (e.g. a far-future
/// retry computed with saturating arithmetic) must never make formatting fail or panic.
fn clamp(t: SystemTime) -> SystemTime {
    let max = UNIX_EPOCH + Duration::new(MAX_SECS, 999_999_999);
    if t < UNIX_EPOCH {
        UNIX_EPOCH
    } else if t > max {
        max
    } else {
        t
    }
}

/// The spool's text form of a time (for `tern queue` output too).
pub fn format(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(clamp(t)).to_string()
}

pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_nanos(clamp(*t)))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s)
        .map_err(|e| serde::de::Error::custom(format_args!("bad timestamp {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_nanoseconds_and_parses_back_exactly() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(format(t), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(humantime::parse_rfc3339_weak(&format(t)).unwrap(), t);
    }

    #[test]
    fn out_of_range_times_are_clamped_not_panicking() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(format(far), "9999-12-31T23:59:59.999999999Z");
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(format(before), "1970-01-01T00:00:00.000000000Z");
    }
}
