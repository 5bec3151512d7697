//! When to try a deferred recipient again: the configured schedule with jitter, never past the
//! message's expiry (so the bounce after `queue.max_age` is not late by a whole retry interval).

use std::time::{Duration, SystemTime};

use rand::Rng;

/// ±10 %: enough that messages deferred together (a greylisting host, an outage) do not all come
/// back in the same second.
const JITTER: f64 = 0.10;

/// The delay before the attempt after attempt number `attempts` (1 = the first attempt failed):
/// entry `attempts - 1` of `schedule`, the last entry repeating.
pub fn delay(schedule: &[Duration], attempts: u32, rng: &mut impl Rng) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(300));
    let factor = 1.0 + rng.random_range(-JITTER..=JITTER);
    base.mul_f64(factor)
}

/// The next attempt time, capped at `expires` (received + max_age).
pub fn next_attempt(
    now: SystemTime,
    expires: SystemTime,
    schedule: &[Duration],
    attempts: u32,
    rng: &mut impl Rng,
) -> SystemTime {
    let at = now + delay(schedule, attempts, rng);
    at.min(expires.max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn minutes(m: &[u64]) -> Vec<Duration> {
        m.iter().map(|m| Duration::from_secs(m * 60)).collect()
    }

    #[test]
    fn follows_the_schedule_and_repeats_the_last_step() {
        let s = minutes(&[5, 10, 20, 40, 60]);
        let mut rng = StdRng::seed_from_u64(7);
        for (attempts, base) in [
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 60),
            (9, 60),
            (1000, 60),
        ] {
            let d = delay(&s, attempts, &mut rng).as_secs_f64();
            let b = (base * 60) as f64;
            assert!(
                d >= b * 0.9 && d <= b * 1.1,
                "attempt {attempts}: {d} vs {b}"
            );
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let s = minutes(&[10]);
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| delay(&s, 1, &mut rng).as_millis() as u64)
            .collect();
        assert!(delays.len() > 40);
    }

    #[test]
    fn never_later_than_the_expiry() {
        let s = minutes(&[60]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = now + Duration::from_secs(30);
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(next_attempt(now, expires, &s, 1, &mut rng), expires);
        // Already expired: retry now (the attempt will then bounce).
        let past = now - Duration::from_secs(5);
        assert_eq!(next_attempt(now, past, &s, 1, &mut rng), now);
    }

    #[test]
    fn an_empty_schedule_still_backs_off() {
        let mut rng = StdRng::seed_from_u64(3);
        assert!(delay(&[], 1, &mut rng) >= Duration::from_secs(270));
    }
}
