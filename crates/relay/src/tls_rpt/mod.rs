//! SMTP TLS Reporting (RFC 8460) of MX deliveries, with `[tls_rpt] enabled = true`
//! (docs/tls-rpt.md).
//!
//! The connector tells the process-wide [`TlsReporter`] how each new SMTP session to an MX host
//! went: [`TlsReporter::success`] or [`TlsReporter::failure`], under the policy that applied
//! ([`Policy`]: MTA-STS, DANE's TLSA records, or none found). The reporter keeps per-period
//! counters per recipient domain in memory ([`store`], bounded), written to
//! `<data_dir>/tls-rpt/` at most every [`FLUSH_EVERY`] and at shutdown, and read back at start.
//! After each period ends, [`spawn`]'s task looks up `_smtp._tls.<domain>` ([`record`]), builds
//! the RFC 8460 JSON report ([`report`]), gzips it and sends it ([`send`]): `mailto:` as a
//! message queued like tern's own notifications, `https:` as a POST.
//!
//! Routes (static next hops) and LMTP are never reported; nor is the delivery of a report
//! itself ([`is_report`], [`scope`]).

pub mod record;
pub mod report;
pub mod send;
pub mod store;

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use tern_client::{ClientError, Session, TlsFailure};
use tern_config::Config;
use tern_queue::QueueStore;

use crate::route::{Destination, DestinationKind, Hop};

pub use store::{Store, MAX_DETAILS, MAX_DOMAINS, MAX_POLICIES};

/// How often the counters are written to disk (when they changed): a `kill -9` loses at most
/// this much.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// Data not sent for this long (the period's end) is dropped.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// RFC 8460 4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    #[serde(rename = "sts")]
    Sts,
    #[serde(rename = "tlsa")]
    Tlsa,
    #[serde(rename = "no-policy-found")]
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a session was made under, as a report names it (RFC 8460 4.4 `policy`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    pub kind: PolicyType,
    /// `policy-string`: the MTA-STS policy's lines, or the TLSA records; empty for none.
    pub strings: Vec<String>,
    /// `mx-host`: the MTA-STS policy's `mx` patterns.
    pub mx_hosts: Vec<String>,
}

impl Policy {
    /// No MTA-STS or DANE policy applied.
    pub fn none() -> Self {
        Self {
            kind: PolicyType::NoPolicyFound,
            strings: Vec::new(),
            mx_hosts: Vec::new(),
        }
    }

    /// An MTA-STS policy (enforce or testing).
    pub fn sts(p: &crate::mta_sts::Policy) -> Self {
        Self {
            kind: PolicyType::Sts,
            strings: crate::mta_sts::policy_lines(p),
            mx_hosts: p.mx.clone(),
        }
    }

    /// An MTA-STS policy that could not be had (its fetch failed, or it did not parse).
    pub fn sts_unknown() -> Self {
        Self {
            kind: PolicyType::Sts,
            strings: Vec::new(),
            mx_hosts: Vec::new(),
        }
    }

    /// DANE: the TLSA records that applied, each in presentation form (`3 1 1 ab12...`).
    pub fn tlsa(records: Vec<String>) -> Self {
        Self {
            kind: PolicyType::Tlsa,
            strings: records,
            mx_hosts: Vec::new(),
        }
    }
}

/// RFC 8460 4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// A certificate that did not verify, in rustls's words (`invalid peer certificate:
    /// UnknownIssuer`, `certificate not valid for name ...`, `certificate expired: ...`).
    pub fn of_certificate(reason: &str) -> ResultType {
        let r = reason.to_ascii_lowercase();
        if r.contains("notvalidforname") || r.contains("not valid for name") {
            ResultType::CertificateHostMismatch
        } else if r.contains("expired") {
            ResultType::CertificateExpired
        } else if r.contains("unknownissuer")
            || r.contains("unknown issuer")
            || r.contains("selfsigned")
            || r.contains("self-signed")
            || r.contains("badsignature")
            // A self-signed certificate that is its own CA (openssl req -x509's default).
            || r.contains("causedasendentity")
            || r.contains("revoked")
        {
            ResultType::CertificateNotTrusted
        } else {
            ResultType::ValidationFailure
        }
    }
}

/// One failed session's particulars (RFC 8460 4.4 `failure-details`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FailureDetails {
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    /// `failure-reason-code`: tern's short reason (e.g. rustls's error).
    pub failure_reason_code: Option<String>,
    /// `additional-information`: a URI with more, when there is one.
    pub additional_information: Option<String>,
}

impl FailureDetails {
    pub fn at(mx: &str, ip: Option<IpAddr>, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        if reason.len() > 200 {
            let mut cut = 200;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self {
            sending_mta_ip: None,
            receiving_mx_hostname: Some(mx.to_ascii_lowercase()),
            receiving_ip: ip,
            failure_reason_code: Some(reason),
            additional_information: None,
        }
    }
}

/// The process's TLS-RPT counters. A no-op until [`TlsReporter::enable`].
pub struct TlsReporter {
    enabled: AtomicBool,
    interval: Mutex<Duration>,
    store: Mutex<Store>,
    dirty: AtomicBool,
}

impl Default for TlsReporter {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: LazyLock<TlsReporter> = LazyLock::new(TlsReporter::new);

/// The process-wide reporter the connector records into (it survives a reload, which rebuilds
/// the connector).
pub fn reporter() -> &'static TlsReporter {
    &GLOBAL
}

impl TlsReporter {
    pub fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            interval: Mutex::new(tern_config::defaults::TLS_RPT_INTERVAL),
            store: Mutex::new(Store::default()),
            dirty: AtomicBool::new(false),
        }
    }

    /// Starts recording, into periods of `interval`.
    pub fn enable(&self, interval: Duration) {
        *lock(&self.interval) = interval.max(Duration::from_secs(1));
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The current period: (start, end), Unix seconds, aligned to the epoch (a 24h interval
    /// is the UTC day).
    fn period_now(&self) -> (u64, u64) {
        let secs = lock(&self.interval).as_secs().max(1);
        let now = unix_now();
        let start = now - now % secs;
        (start, start + secs)
    }

    /// A session to `mx` for `domain` under `policy` was set up as the policy asks.
    pub fn success(&self, domain: &str, policy: &Policy, _mx: &str) {
        if !self.records() {
            return;
        }
        let (start, end) = self.period_now();
        lock(&self.store).success(start, end, &domain.to_ascii_lowercase(), policy);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// A session for `domain` under `policy` failed (or, under MTA-STS testing, would have).
    pub fn failure(
        &self,
        domain: &str,
        policy: &Policy,
        result: ResultType,
        details: FailureDetails,
    ) {
        if !self.records() {
            return;
        }
        tracing::debug!(domain = %domain, policy = policy.kind.as_str(), result = result.as_str(),
            mx = details.receiving_mx_hostname.as_deref().unwrap_or(""), "tls-rpt: failure recorded");
        let (start, end) = self.period_now();
        lock(&self.store).failure(
            start,
            end,
            &domain.to_ascii_lowercase(),
            policy,
            result,
            details,
        );
        self.dirty.store(true, Ordering::Relaxed);
    }

    fn records(&self) -> bool {
        self.is_enabled() && !QUIET.try_with(|q| *q).unwrap_or(false)
    }

    /// A copy of the counters (tests, reports).
    pub fn snapshot(&self) -> Store {
        lock(&self.store).clone()
    }

    fn peek<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut lock(&self.store));
        self.dirty.store(true, Ordering::Relaxed);
        out
    }
}

tokio::task_local! {
    static QUIET: bool;
}

/// Runs `f` with recording off when `quiet` (the delivery of a report: reports are never about
/// their own delivery).
pub async fn scope<F: Future>(quiet: bool, f: F) -> F::Output {
    QUIET.scope(quiet, f).await
}

/// True when the message whose header section is `head` is a TLS report tern made (it carries
/// the RFC 8460 5.3 `TLS-Report-Submitter` header).
pub fn is_report(head: &[u8]) -> bool {
    let head = match head.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &head[..end + 2],
        None => head,
    };
    head.split(|&b| b == b'\n')
        .any(|line| line.len() >= 21 && line[..21].eq_ignore_ascii_case(b"TLS-Report-Submitter:"))
}

/// What one MX delivery reports into: its recipient domain and the policy that applied. `None`
/// for routes, literals, and when reporting is off.
#[derive(Debug, Clone)]
pub struct Target {
    pub domain: String,
    pub policy: Policy,
    /// MTA-STS testing: failures are reported, delivery goes on.
    sts: Option<crate::mta_sts::Policy>,
}

impl Target {
    pub fn new(dest: &Destination, sts: Option<&crate::mta_sts::Applied>) -> Option<Target> {
        let r = reporter();
        if !r.records() {
            return None;
        }
        let DestinationKind::Mx { domain } = &dest.kind else {
            return None;
        };
        if domain.starts_with('[') || domain.is_empty() {
            return None;
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        Some(match sts {
            Some(s) => Target {
                domain,
                policy: Policy::sts(&s.policy),
                sts: Some(s.policy.clone()),
            },
            None => Target {
                domain,
                policy: Policy::none(),
                sts: None,
            },
        })
    }

    pub fn failure(&self, result: ResultType, details: FailureDetails) {
        reporter().failure(&self.domain, &self.policy, result, details);
    }

    /// Under MTA-STS `enforce`, no MX host matched the policy: no session at all.
    pub fn no_matching_mx(&self, names: &[&str]) {
        let mx = names.first().copied().unwrap_or("");
        self.failure(
            ResultType::ValidationFailure,
            FailureDetails::at(mx, None, "mx-not-in-policy"),
        );
    }

    /// A session was set up with `hop` (`tls_off`: `outbound.tls = "none"`, nothing to report).
    pub fn session<S>(&self, hop: &Hop, session: &Session<S>, tls_off: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        if tls_off && self.policy.kind == PolicyType::NoPolicyFound {
            return;
        }
        let ip = Some(hop.addr.ip());
        let failure = match session.tls() {
            None => Some(match session.tls_fallback() {
                Some(reason) => (
                    ResultType::ValidationFailure,
                    format!("tls-handshake: {reason}"),
                ),
                None => (
                    ResultType::StarttlsNotSupported,
                    "starttls-not-supported".to_string(),
                ),
            }),
            // Under DANE (`tlsa`), the policy is DANE's, whatever MTA-STS says.
            Some(t) => match self
                .sts
                .as_ref()
                .filter(|_| self.policy.kind == PolicyType::Sts)
            {
                // MTA-STS testing: the certificate must verify, the host match.
                Some(p) if !p.allows(&hop.name) => Some((
                    ResultType::ValidationFailure,
                    "mx-not-in-policy".to_string(),
                )),
                Some(_) => t
                    .certificate
                    .unverified_reason()
                    .map(|r| (ResultType::of_certificate(r), r.to_string())),
                None => None,
            },
        };
        match failure {
            None => reporter().success(&self.domain, &self.policy, &hop.name),
            Some((result, reason)) => {
                self.failure(result, FailureDetails::at(&hop.name, ip, reason))
            }
        }
    }

    /// Connecting to `hop` failed with `e`: a TLS failure is reported, other errors (refused,
    /// timed out, a reply) are not about TLS.
    pub fn connect_error(&self, hop: &Hop, e: &ClientError) {
        let ip = Some(hop.addr.ip());
        let (result, reason) = match e {
            ClientError::TlsUnavailable | ClientError::NeedsRequireTls => (
                ResultType::StarttlsNotSupported,
                "starttls-not-supported".to_string(),
            ),
            ClientError::Tls(TlsFailure::Certificate(r)) => {
                (ResultType::of_certificate(r), r.clone())
            }
            ClientError::Tls(TlsFailure::Handshake(r)) => {
                (ResultType::ValidationFailure, format!("tls-handshake: {r}"))
            }
            ClientError::Tls(other) => (ResultType::ValidationFailure, other.to_string()),
            _ => return,
        };
        self.failure(result, FailureDetails::at(&hop.name, ip, reason));
    }
}

/// MTA-STS: the policy for `domain` was announced (TXT) but could not be had and none is cached.
pub fn sts_unavailable(domain: &str, error: &str) {
    let result = sts_result_type(error);
    let details = FailureDetails {
        failure_reason_code: Some(error.chars().take(200).collect()),
        ..Default::default()
    };
    reporter().failure(domain, &Policy::sts_unknown(), result, details);
}

/// The RFC 8460 result type of an MTA-STS policy fetch error (in `mta_sts::fetch`'s words):
/// the HTTPS certificate, the fetch itself, or the policy (Content-Type, syntax).
fn sts_result_type(error: &str) -> ResultType {
    let e = error.to_ascii_lowercase();
    if e.contains("tls with") && e.contains("certificate") {
        ResultType::StsWebpkiInvalid
    } else if e.contains("answered http ")
        || e.contains("cannot resolve")
        || e.contains("cannot connect")
        || e.contains("tls with")
        || e.contains("http with")
        || e.contains("http request")
        || e.contains("took longer")
        || e.contains("reading the policy")
        || e.contains("no address")
        || e.contains("is refused")
    {
        ResultType::StsPolicyFetchError
    } else {
        ResultType::StsPolicyInvalid
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reporting task: stop it (after the relay's workers, so the last sessions count) with
/// [`Task::stop`], which writes the counters a last time.
pub struct Task {
    handle: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Task {
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// With `[tls_rpt] enabled`: loads the saved counters, turns recording on, and starts the task
/// that writes them and sends the reports. Disabled: nothing runs.
pub fn spawn(cfg: Arc<Config>, queue: Arc<dyn QueueStore>) -> Task {
    let stop = CancellationToken::new();
    if !cfg.tls_rpt.enabled {
        return Task { handle: None, stop };
    }
    let dir = cfg.data_dir.join("tls-rpt");
    let r = reporter();
    match store::load(&dir) {
        Ok(Some(saved)) => {
            tracing::info!(periods = saved.len(), "tls-rpt: counters loaded");
            r.with_store(|s| s.merge(saved));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, dir = %dir.display(),
            "tls-rpt: cannot read the saved counters; starting from zero"),
    }
    r.enable(cfg.tls_rpt.interval);
    let token = stop.clone();
    let handle = tokio::spawn(run(cfg, queue, dir, token));
    Task {
        handle: Some(handle),
        stop,
    }
}

async fn run(
    cfg: Arc<Config>,
    queue: Arc<dyn QueueStore>,
    dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    let r = reporter();
    let interval = cfg.tls_rpt.interval.max(Duration::from_secs(1));
    let sender = send::Sender::new(cfg.clone(), queue);
    let mut last_flush = tokio::time::Instant::now();
    let mut last_dropped = r.peek(|s| s.dropped);
    let secs = interval.as_secs().max(1);
    // Reports left from an earlier run (ended periods) go out at once; then each period's
    // end (plus a second, so the period is over everywhere) is the time to send, and to retry
    // what could not be sent.
    let mut next_check = unix_now();
    loop {
        // Wake to send, or to write the counters, whichever comes first.
        let now = unix_now();
        let until_report = Duration::from_secs(next_check.saturating_sub(now));
        let until_flush = FLUSH_EVERY.saturating_sub(last_flush.elapsed());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(until_report.min(until_flush).max(Duration::from_millis(200))) => {}
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            if r.dirty.load(Ordering::Relaxed) {
                flush(r, &dir).await;
            }
            last_flush = tokio::time::Instant::now();
        }
        let now = unix_now();
        if now < next_check {
            continue;
        }
        next_check = now - now % secs + secs + 1;
        let (due, dropped) = r.peek(|s| (s.due(now), s.dropped));
        if dropped > last_dropped {
            tracing::warn!(
                sessions = dropped - last_dropped,
                max_domains = MAX_DOMAINS,
                max_policies = MAX_POLICIES,
                "tls-rpt: sessions not recorded: too many domains or policies at once"
            );
            last_dropped = dropped;
        }
        let gone = r.with_store(|s| s.expire(now.saturating_sub(MAX_AGE.as_secs())));
        if gone > 0 {
            tracing::warn!(
                reports = gone,
                max_age_days = MAX_AGE.as_secs() / 86400,
                "tls-rpt: reports that could not be sent for too long were dropped"
            );
        }
        let mut changed = false;
        for (start, domain) in due {
            if stop.is_cancelled() {
                break;
            }
            let Some((end, data)) = r.peek(|s| s.get(start, &domain)) else {
                continue;
            };
            let period = report::Period { start, end };
            // Shutdown does not wait for a slow DNS server or HTTPS peer: the data stays.
            let outcome = tokio::select! {
                _ = stop.cancelled() => break,
                o = sender.send(&domain, period, &data) => o,
            };
            match outcome {
                send::Outcome::Sent | send::Outcome::NotWanted => {
                    r.with_store(|s| s.remove(start, &domain));
                    changed = true;
                }
                send::Outcome::Retry => {}
            }
        }
        if changed {
            // What was sent must not come back after a restart.
            flush(r, &dir).await;
            last_flush = tokio::time::Instant::now();
        }
    }
    flush(r, &dir).await;
}

async fn flush(r: &'static TlsReporter, dir: &std::path::Path) {
    r.dirty.store(false, Ordering::Relaxed);
    let snapshot = r.snapshot();
    let dir = dir.to_path_buf();
    let res = tokio::task::spawn_blocking(move || store::save(&dir, &snapshot)).await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            r.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "tls-rpt: cannot write the counters");
        }
        Err(e) => {
            r.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "tls-rpt: the task writing the counters failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_reasons_map_to_result_types() {
        for (reason, want) in [
            ("invalid peer certificate: NotValidForName", ResultType::CertificateHostMismatch),
            (
                "invalid peer certificate: certificate not valid for name \"mx.a.test\"; certificate is only valid for b.test",
                ResultType::CertificateHostMismatch,
            ),
            ("invalid peer certificate: certificate expired: verification time 2", ResultType::CertificateExpired),
            ("invalid peer certificate: Expired", ResultType::CertificateExpired),
            ("invalid peer certificate: UnknownIssuer", ResultType::CertificateNotTrusted),
            ("invalid peer certificate: BadSignature", ResultType::CertificateNotTrusted),
            (
                "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
                ResultType::CertificateNotTrusted,
            ),
            ("something else", ResultType::ValidationFailure),
        ] {
            assert_eq!(ResultType::of_certificate(reason), want, "{reason}");
        }
        let names: Vec<&str> = ResultType::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names.contains(&"sts-webpki-invalid") && names.contains(&"dane-required"));
        // The serde names are the RFC's too (the saved counters use them).
        assert_eq!(
            serde_json::to_string(&ResultType::StarttlsNotSupported).unwrap(),
            "\"starttls-not-supported\""
        );
    }

    #[test]
    fn a_disabled_reporter_records_nothing_and_quiet_scopes_are_not_recorded() {
        let r = TlsReporter::new();
        r.success("a.test", &Policy::none(), "mx.a.test");
        assert!(r.snapshot().is_empty());
        r.enable(Duration::from_secs(86400));
        r.success("A.test", &Policy::none(), "mx.a.test");
        r.failure(
            "a.test",
            &Policy::tlsa(vec!["3 1 1 ab".into()]),
            ResultType::TlsaInvalid,
            FailureDetails::at("mx.a.test", None, "no match"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(scope(true, async {
            r.success("a.test", &Policy::none(), "mx.a.test");
        }));
        let s = r.snapshot();
        assert_eq!(s.len(), 1);
        let (start, _) = s.due(u64::MAX)[0].clone();
        let (_, d) = s.get(start, "a.test").unwrap();
        assert_eq!(d.policies[0].successes, 1);
        assert_eq!(d.policies[1].policy.kind, PolicyType::Tlsa);
        assert_eq!(d.policies[1].failures, 1);
    }

    #[test]
    fn sts_fetch_errors_are_typed() {
        for (e, want) in [
            ("TLS with mta-sts.a.test[127.0.0.1:443] failed: invalid peer certificate: UnknownIssuer", ResultType::StsWebpkiInvalid),
            ("cannot resolve mta-sts.a.test: NXDOMAIN", ResultType::StsPolicyFetchError),
            ("https://mta-sts.a.test/.well-known/mta-sts.txt answered HTTP 404 (only 200 counts; redirects are not followed)", ResultType::StsPolicyFetchError),
            ("fetching the policy took longer than 10s", ResultType::StsPolicyFetchError),
            ("the policy's Content-Type is \"text/html\", not text/plain", ResultType::StsPolicyInvalid),
            ("no mx field", ResultType::StsPolicyInvalid),
        ] {
            assert_eq!(sts_result_type(e), want, "{e}");
        }
    }
}
