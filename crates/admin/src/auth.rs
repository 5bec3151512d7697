//! The bearer token (RFC 6750): `Authorization: Bearer <token>` on every `/api/*` and
//! `/metrics` request when `[admin] token_file` is set. Missing → 401 with
//! `WWW-Authenticate: Bearer`, wrong → 403. The token is read from the running config, so a
//! reload that changes the token file takes effect at once.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error;
use crate::AdminState;

pub async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let cfg = state.config.current();
    let Some(token) = cfg.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        // Loopback without a token file: whoever can reach 127.0.0.1 is trusted (as with
        // `tern queue`, which needs only file access).
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match given {
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this API needs a bearer token: send `Authorization: Bearer <token>` (the token is in [admin] token_file)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Some(t) if same(t.as_bytes(), token.as_str().as_bytes()) => next.run(request).await,
        Some(_) => error(StatusCode::FORBIDDEN, "wrong token").into_response(),
    }
}

/// Compares in time independent of where the first difference is (a remote attacker must not
/// learn the token a byte at a time from response times).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_compares_whole_strings() {
        assert!(super::same(b"abcdef", b"abcdef"));
        assert!(!super::same(b"abcdef", b"abcdeg"));
        assert!(!super::same(b"abc", b"abcdef"));
    }
}
