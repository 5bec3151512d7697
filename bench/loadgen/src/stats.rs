//! Latency samples -> percentiles, and the one-line report the benchmark script parses.

use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of `sorted` samples; `None` when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest sample with at least p% of samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied()
}

/// Milliseconds with microsecond precision, for reports.
pub fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3}", d.as_secs_f64() * 1000.0),
        None => "-".to_string(),
    }
}

/// Summary of a throughput run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub accepted: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
}

impl Summary {
    pub fn new(mut latencies: Vec<Duration>, failed: u64, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        Summary {
            accepted: latencies.len() as u64,
            failed,
            elapsed,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied(),
        }
    }

    pub fn msgs_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.accepted as f64 / secs
        } else {
            0.0
        }
    }

    /// `key=value` pairs on one line starting with `RESULT`, for bench/run.sh.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT accepted={} failed={} secs={:.3} msgs_per_s={:.1} p50_ms={} p99_ms={} max_ms={}",
            self.accepted,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.msgs_per_sec(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 50.0), Some(d(50)));
        assert_eq!(percentile(&v, 99.0), Some(d(99)));
        assert_eq!(percentile(&v, 100.0), Some(d(100)));
        assert_eq!(percentile(&v, 0.0), Some(d(1)));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[d(7)], 99.0), Some(d(7)));
    }

    #[test]
    fn summary_sorts_and_reports() {
        let s = Summary::new(vec![d(3), d(1), d(2), d(4)], 1, Duration::from_secs(2));
        assert_eq!(s.accepted, 4);
        assert_eq!(s.p50, Some(d(2)));
        assert_eq!(s.max, Some(d(4)));
        assert!((s.msgs_per_sec() - 2.0).abs() < 1e-9);
        let line = s.result_line();
        assert!(
            line.starts_with("RESULT accepted=4 failed=1 secs=2.000 msgs_per_s=2.0 p50_ms=2.000"),
            "{line}"
        );
    }
}
