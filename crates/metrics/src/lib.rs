//! Every metric tern records, named once: the crates record through the `metrics` facade with
//! these names (a no-op until an exporter is installed: `tern serve` without `[admin]`, the
//! CLI tools and the unit tests pay nothing), and `tern-admin` exports them for Prometheus
//! at `GET /metrics`. The meaning of each is in docs/operations.md.
//!
//! Label values are bounded: listener and outcome names are fixed words, and a recipient
//! domain becomes a label only through [`DomainClasses`] (a configured top list, the rest is
//! `other`), so no client or remote server can grow the number of series.

use std::collections::HashSet;
use std::time::Duration;

pub const SMTP_CONNECTIONS: &str = "tern_smtp_connections_total";
pub const SMTP_SESSIONS_ACTIVE: &str = "tern_smtp_sessions_active";
pub const MESSAGES_RECEIVED: &str = "tern_messages_received_total";
pub const MESSAGE_SIZE: &str = "tern_message_size_bytes";
pub const ACCEPT_LATENCY: &str = "tern_accept_latency_seconds";
pub const QUEUE_MESSAGES: &str = "tern_queue_messages";
pub const QUEUE_OLDEST: &str = "tern_queue_oldest_seconds";
pub const DELIVERY_ATTEMPTS: &str = "tern_delivery_attempts_total";
pub const DELIVERY_LATENCY: &str = "tern_delivery_latency_seconds";
pub const BOUNCES: &str = "tern_bounces_total";
pub const AUTH_FAILURES: &str = "tern_auth_failures_total";
pub const TLS_SESSIONS: &str = "tern_tls_sessions_total";
pub const STORAGE_FREE: &str = "tern_storage_free_bytes";
pub const CONFIG_RELOADS: &str = "tern_config_reloads_total";

/// Histogram buckets (upper bounds) for each histogram, by name: what the exporter needs to
/// render them as Prometheus histograms rather than summaries.
pub fn buckets() -> [(&'static str, &'static [f64]); 3] {
    const SIZE: &[f64] = &[
        1024.0,
        4096.0,
        16384.0,
        65536.0,
        262_144.0,
        1_048_576.0,
        4_194_304.0,
        16_777_216.0,
        67_108_864.0,
    ];
    // The accept latency is the fsync: sub-millisecond on good disks, tens of ms on bad ones.
    const ACCEPT: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];
    // Delivery latency spans a local hop (ms) to retries over days.
    const DELIVERY: &[f64] = &[
        0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 14_400.0, 86_400.0, 432_000.0,
    ];
    [
        (MESSAGE_SIZE, SIZE),
        (ACCEPT_LATENCY, ACCEPT),
        (DELIVERY_LATENCY, DELIVERY),
    ]
}

/// Help texts, registered with the exporter once.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        SMTP_CONNECTIONS,
        "SMTP connections by listener and outcome (accepted, refused: over a connection limit)"
    );
    describe_gauge!(SMTP_SESSIONS_ACTIVE, "SMTP sessions open now");
    describe_counter!(
        MESSAGES_RECEIVED,
        "Messages at the end of DATA by listener and outcome (accepted: 250; rejected: 4xx/5xx)"
    );
    describe_histogram!(MESSAGE_SIZE, Unit::Bytes, "Size of accepted messages");
    describe_histogram!(
        ACCEPT_LATENCY,
        Unit::Seconds,
        "From the client's final dot to tern's 250 (verification, filters, the fsync)"
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        "Queue entries by state (pending: never tried; deferred: waiting to retry; held)"
    );
    describe_gauge!(
        QUEUE_OLDEST,
        Unit::Seconds,
        "Age of the oldest queue entry (0 when the queue is empty)"
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery attempts per recipient by outcome and domain class (a configured top domain, other, local)"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From reception to a recipient's final outcome (delivered or failed)"
    );
    describe_counter!(BOUNCES, "Failure notifications (bounces) sent to senders");
    describe_counter!(AUTH_FAILURES, "Failed SMTP AUTH attempts");
    describe_counter!(
        TLS_SESSIONS,
        "TLS sessions by direction (inbound, outbound) and protocol version"
    );
    describe_gauge!(
        STORAGE_FREE,
        Unit::Bytes,
        "Free space on the file system of the spool"
    );
    describe_counter!(CONFIG_RELOADS, "Config reloads by outcome (ok, failed)");
}

/// Turns a recipient domain into a bounded label value.
#[derive(Debug, Clone)]
pub struct DomainClasses {
    top: HashSet<String>,
}

/// Where most mail goes: the default top list when `[admin] metrics_domains` is not set.
pub const DEFAULT_TOP_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "gmx.de",
    "web.de",
    "proton.me",
    "protonmail.com",
    "yandex.ru",
    "mail.ru",
    "qq.com",
    "163.com",
];

impl DomainClasses {
    pub fn new<S: AsRef<str>>(top: &[S]) -> Self {
        Self {
            top: top
                .iter()
                .map(|d| d.as_ref().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// The label for `domain`: itself when on the top list, else `other`.
    pub fn class(&self, domain: &str) -> String {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if self.top.contains(&d) {
            d
        } else {
            "other".to_string()
        }
    }
}

impl Default for DomainClasses {
    fn default() -> Self {
        Self::new(DEFAULT_TOP_DOMAINS)
    }
}

/// The protocol version part of a TLS description such as `TLSv1_3 TLS13_AES_256_GCM_SHA384`
/// (rustls' names), as a label value; anything else is `unknown`.
pub fn tls_version(description: &str) -> &'static str {
    let v = description.split_whitespace().next().unwrap_or("");
    match v {
        "TLSv1_3" | "TLSv1.3" => "TLSv1_3",
        "TLSv1_2" | "TLSv1.2" => "TLSv1_2",
        _ => "unknown",
    }
}

/// Seconds as the f64 histograms take.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_outside_the_top_list_are_other() {
        let c = DomainClasses::new(&["Gmail.com."]);
        assert_eq!(c.class("GMAIL.COM"), "gmail.com");
        assert_eq!(c.class("attacker-chosen-123.example"), "other");
        assert_eq!(DomainClasses::default().class("outlook.com"), "outlook.com");
    }

    #[test]
    fn tls_versions_are_a_fixed_set() {
        assert_eq!(tls_version("TLSv1_3 TLS13_AES_256_GCM_SHA384"), "TLSv1_3");
        assert_eq!(tls_version("TLSv1.2 ECDHE"), "TLSv1_2");
        assert_eq!(tls_version("\u{1b}[31m"), "unknown");
    }
}
