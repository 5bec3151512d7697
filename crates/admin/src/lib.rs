//! The admin HTTP listener (`[admin] listen`): Prometheus metrics at `/metrics`, the JSON API
//! under `/api/`, and the web console at `/`. Off by default; a listener reachable from other
//! hosts needs a bearer token (`[admin] token_file`, enforced when the config loads).
//!
//! - [`auth`]: the bearer token check (401 without, 403 wrong);
//! - [`metrics`]: the Prometheus recorder and the gauges read at scrape time;
//! - [`api`]: queue, mailboxes, health and reload routes, over `tern_ops` (the code
//!   `tern queue` runs too);
//! - [`console`]: the bundled web page (no CDN: it works offline).
//!
//! At most [`listener::MAX_CONNECTIONS`] connections are open at once. The blocking work of a request (spool and Maildir reads, changes) runs on tokio's blocking
//! pool, at most [`MAX_BLOCKING`] requests at a time, so the admin listener can never take the
//! threads SMTP sessions store their mail with.

pub mod api;
pub mod auth;
pub mod console;
pub mod listener;
pub mod metrics;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use tern_config::LiveConfig;
use tern_queue::QueueStore;

pub use crate::metrics::Metrics;

/// Requests doing blocking work at once.
pub const MAX_BLOCKING: usize = 4;

/// What a reload did: the changes applied, or every problem found (nothing applied).
pub type ReloadOutcome = Result<Vec<String>, Vec<String>>;

/// Re-reads and applies the config (the server's reload, shared with SIGHUP).
pub type ReloadHook = Arc<dyn Fn() -> ReloadOutcome + Send + Sync>;

/// What the routes share.
pub struct AdminState {
    pub config: LiveConfig,
    pub store: Arc<dyn QueueStore>,
    pub metrics: Option<Metrics>,
    pub started: Instant,
    pub reload: Option<ReloadHook>,
    blocking: Semaphore,
}

impl AdminState {
    pub fn new(
        config: LiveConfig,
        store: Arc<dyn QueueStore>,
        metrics: Option<Metrics>,
        reload: Option<ReloadHook>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            store,
            metrics,
            started: Instant::now(),
            reload,
            blocking: Semaphore::new(MAX_BLOCKING),
        })
    }

    /// Runs `f` on the blocking pool under the admin's own limit.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.blocking.acquire().await.ok()?;
        tokio::task::spawn_blocking(f).await.ok()
    }
}

/// Every route: the console without auth (it holds no data), `/api/*` and `/metrics` behind
/// the token.
pub fn router(state: Arc<AdminState>) -> Router {
    let protected =
        api::routes()
            .merge(metrics::routes())
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_token,
            ));
    console::routes()
        .merge(protected)
        .fallback(api::not_found)
        .with_state(state)
}

/// Binds the admin listener (an error names the address, like the SMTP listeners').
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ([admin] listen): {e}"),
        )
    })
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let app = router(state);
    let result = axum::serve(listener::Bounded::new(listener), app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener stopped");
    }
}
