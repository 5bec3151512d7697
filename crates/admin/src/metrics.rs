//! `GET /metrics`: the Prometheus text exposition of everything recorded through the
//! `metrics` facade (names in `tern_metrics`), plus the gauges that describe state rather than
//! events, read at scrape time: the queue by state and its oldest entry, and the free space of
//! the spool's file system.
//!
//! Reading the queue's state means reading every envelope, so it is done at most once per
//! [`QUEUE_GAUGE_TTL`] however often Prometheus scrapes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tern_metrics as names;
use tern_ops::queue::{EntryStatus, Filter, Queue};

use crate::api::error;
use crate::AdminState;

/// The queue gauges are recomputed at most this often.
pub const QUEUE_GAUGE_TTL: Duration = Duration::from_secs(5);

/// The installed recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    queue_gauges: Arc<Mutex<Option<Instant>>>,
}

impl Metrics {
    /// Installs the process-wide recorder (once, before anything is recorded: `tern serve`
    /// calls it only when `[admin] listen` is set, so a server without it records nothing).
    pub fn install() -> Result<Metrics, String> {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in names::buckets() {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .map_err(|e| format!("metrics buckets for {name}: {e}"))?;
        }
        let handle = builder
            .install_recorder()
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        names::describe();
        // Series that exist from the start, so dashboards and alerts see 0 rather than nothing.
        metrics::gauge!(names::SMTP_SESSIONS_ACTIVE).increment(0.0);
        metrics::counter!(names::BOUNCES).increment(0);
        metrics::counter!(names::AUTH_FAILURES).increment(0);
        Ok(Metrics {
            handle,
            queue_gauges: Arc::new(Mutex::new(None)),
        })
    }

    /// Sets the scrape-time gauges (if due) and renders everything.
    fn render(&self, queue: &Queue, data_dir: &Path) -> String {
        let due = {
            let mut last = self.queue_gauges.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= QUEUE_GAUGE_TTL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            set_queue_gauges(queue);
        }
        if let Ok(s) = rustix::fs::statvfs(data_dir.join("queue")) {
            let unit = if s.f_frsize > 0 {
                s.f_frsize
            } else {
                s.f_bsize
            };
            metrics::gauge!(names::STORAGE_FREE).set(s.f_bavail.saturating_mul(unit) as f64);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn set_queue_gauges(queue: &Queue) {
    let Ok((entries, _)) = queue.list(&Filter::default()) else {
        return;
    };
    let now = SystemTime::now();
    let (mut pending, mut deferred, mut held) = (0u64, 0u64, 0u64);
    let mut oldest = now;
    for env in &entries {
        match EntryStatus::of(env) {
            EntryStatus::Pending => pending += 1,
            EntryStatus::Deferred => deferred += 1,
            EntryStatus::Held => held += 1,
        }
        oldest = oldest.min(env.received_at);
    }
    metrics::gauge!(names::QUEUE_MESSAGES, "state" => "pending").set(pending as f64);
    metrics::gauge!(names::QUEUE_MESSAGES, "state" => "deferred").set(deferred as f64);
    metrics::gauge!(names::QUEUE_MESSAGES, "state" => "held").set(held as f64);
    metrics::gauge!(names::QUEUE_OLDEST)
        .set(now.duration_since(oldest).unwrap_or_default().as_secs_f64());
}

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<Arc<AdminState>>) -> Response {
    let Some(m) = state.metrics.clone() else {
        return error(StatusCode::NOT_FOUND, "metrics are not enabled").into_response();
    };
    let cfg = state.config.current();
    let queue = Queue::with_store(cfg.clone(), state.store.clone());
    let data_dir = cfg.data_dir.clone();
    match state.blocking(move || m.render(&queue, &data_dir)).await {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response(),
    }
}
