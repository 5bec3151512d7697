//! Invariant checks for the tern-config fuzz target `config`, shared by
//! `fuzz/fuzz_targets/config.rs` and the corpus replay in `crates/config/tests/fuzz_corpus.rs`:
//! arbitrary bytes as a TOML config file. Panics on a violation; docs/fuzzing.md lists the
//! invariants and the one documented exception (device paths).
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tern_config::{caps, Config};

/// Paths the loader would open (it reads the files a config names: `tls.cert`, DKIM keys, ...),
/// where a read never ends or has effects: an input naming one is skipped, as is one with a
/// TOML unicode escape, which could spell such a path.
const SKIPPED: [&str; 5] = ["/dev", "/proc", "/sys", "\\u", "\\U"];

/// `Config::from_toml_str` never panics; an error renders to a non-empty message; a config that
/// loads holds what the validator promises (every duration within its cap and usable as an
/// offset from now, ports non-zero, limits that must be positive are).
pub fn config(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    if SKIPPED.iter().any(|s| text.contains(s)) {
        return;
    }
    match Config::from_toml_str(&text, Path::new("fuzz.toml")) {
        Err(e) => assert!(!e.to_string().is_empty(), "an empty error message"),
        Ok(c) => loaded(&c),
    }
}

fn capped(key: &str, d: Duration, cap: Duration) {
    assert!(d <= cap, "{key} = {d:?} is over its cap {cap:?}");
    assert!(
        Instant::now().checked_add(d).is_some(),
        "{key} overflows Instant"
    );
    assert!(
        SystemTime::now().checked_add(d).is_some(),
        "{key} overflows SystemTime"
    );
}

fn loaded(c: &Config) {
    let l = &c.limits;
    capped(
        "limits.command_timeout",
        l.command_timeout,
        caps::COMMAND_TIMEOUT,
    );
    capped("limits.data_timeout", l.data_timeout, caps::DATA_TIMEOUT);
    capped(
        "limits.max_session_time",
        l.max_session_time,
        caps::MAX_SESSION_TIME,
    );
    capped(
        "limits.stress_command_timeout",
        l.stress_command_timeout,
        caps::STRESS_COMMAND_TIMEOUT,
    );
    capped(
        "limits.stress_data_timeout",
        l.stress_data_timeout,
        caps::STRESS_DATA_TIMEOUT,
    );
    let q = &c.queue;
    capped("queue.max_age", q.max_age, caps::QUEUE_MAX_AGE);
    assert!(!q.retry_schedule.is_empty(), "empty queue.retry_schedule");
    for (i, d) in q.retry_schedule.iter().enumerate() {
        capped(&format!("queue.retry_schedule[{i}]"), *d, caps::RETRY_DELAY);
    }
    if let Some(d) = q.delay_warning {
        capped("queue.delay_warning", d, caps::DELAY_WARNING);
    }
    let o = &c.outbound;
    capped(
        "outbound.connect_timeout",
        o.connect_timeout,
        caps::CONNECT_TIMEOUT,
    );
    capped(
        "outbound.command_timeout",
        o.command_timeout,
        caps::OUTBOUND_COMMAND_TIMEOUT,
    );
    capped(
        "outbound.data_timeout",
        o.data_timeout,
        caps::OUTBOUND_DATA_TIMEOUT,
    );
    capped(
        "outbound.attempt_timeout",
        o.attempt_timeout,
        caps::OUTBOUND_ATTEMPT_TIMEOUT,
    );
    assert_ne!(o.mx_port, 0, "outbound.mx_port 0");
    for (dest, r) in &c.routes {
        assert_ne!(r.port, 0, "routes.{dest}.port 0");
        assert!(!r.host.is_empty(), "routes.{dest}.host empty");
    }
    assert!(l.max_message_size > 0, "limits.max_message_size 0");
    assert!(l.max_auth_checks >= 1, "limits.max_auth_checks 0");
    assert!(
        !c.hostname.is_empty() && c.hostname.len() <= 255,
        "hostname {:?}",
        c.hostname
    );
}
