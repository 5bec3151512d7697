//! The web console: one page and its script and style, compiled into the binary (no CDN, no
//! files to install: it works offline and matches the server's version). It holds no data;
//! everything it shows comes from the API, with the token the operator types in.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AdminState;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// The page may load only its own script, and frames only from `srcdoc` (the sandboxed message
/// view, which inherits this policy); nothing from the network. Inline styles are allowed so a
/// message's own `<style>` renders in its frame: the console itself sets no markup from data,
/// and a style can fetch nothing (`img-src`, `font-src` and `default-src` allow no remote URL).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-src 'self' about:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
