//! The JSON API. Every answer is JSON (`{"error": "..."}` on failure with the right status:
//! 400 bad filter, 404 no such entry/mailbox/message, 405 wrong method, 409 entry busy (being
//! delivered), 422 a reload with errors, 500 spool I/O). The shapes are documented in
//! docs/operations.md and are the same objects `tern queue ... --json` prints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use tern_ops::mailboxes::{self, MailboxError};
use tern_ops::queue::{detail_json, entry_json, Action, EntryStatus, Filter, OpError, Queue};

use crate::AdminState;

/// Most entries one list answer holds (the console pages with `limit`).
pub const MAX_LIST: usize = 5000;

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/queue", get(list).delete(bulk_delete))
        // GET: one entry; POST: a bulk action named by the segment (flush, hold, ...).
        .route("/api/queue/{id}", get(show).post(bulk).delete(delete_one))
        .route("/api/queue/{id}/{action}", post(act))
        .route("/api/mailboxes", get(mailbox_list))
        .route("/api/mailboxes/{addr}/messages", get(message_list))
        .route("/api/mailboxes/{addr}/messages/{id}", get(message))
        .route("/api/mailboxes/{addr}/messages/{id}/raw", get(raw_message))
        .route("/api/reload", post(reload))
}

pub fn error(status: StatusCode, message: impl Into<String>) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "error": message.into() })))
}

pub async fn not_found() -> impl IntoResponse {
    error(
        StatusCode::NOT_FOUND,
        "no such page: the API is under /api/ (see docs/operations.md)",
    )
}

fn op_error(e: OpError) -> Response {
    let status = match &e {
        OpError::NoSuchEntry(_) => StatusCode::NOT_FOUND,
        OpError::Busy(_) => StatusCode::CONFLICT,
        OpError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string()).into_response()
}

fn gone() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
}

fn queue(state: &AdminState) -> Queue {
    Queue::with_store(state.config.current(), state.store.clone())
}

async fn health(State(state): State<Arc<AdminState>>) -> Response {
    let cfg = state.config.current();
    let q = queue(&state);
    let count = state.blocking(move || q.count()).await;
    let (status, messages) = match count {
        Some(Ok(n)) => ("ok", Some(n)),
        Some(Err(_)) => ("degraded", None),
        None => return gone(),
    };
    Json(json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": cfg.hostname,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "queue_messages": messages,
        "config": cfg.source.as_ref().map(|p| p.display().to_string()),
    }))
    .into_response()
}

/// `status`, `domain`, `sender` (and `all=true` for bulk actions) from the query string.
fn filter(params: &HashMap<String, String>) -> Result<Filter, Box<Response>> {
    let status = match params.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(EntryStatus::parse(s).ok_or_else(|| {
            Box::new(
                error(
                    StatusCode::BAD_REQUEST,
                    format!("status={s}: use pending, deferred or held"),
                )
                .into_response(),
            )
        })?),
    };
    let text = |k: &str| {
        params
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() || k == "sender")
    };
    Ok(Filter {
        status,
        domain: text("domain").map(|d| d.trim_end_matches('.').to_ascii_lowercase()),
        sender: text("sender"),
    })
}

async fn list(
    State(state): State<Arc<AdminState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let f = match filter(&params) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(MAX_LIST)
        .min(MAX_LIST);
    let q = queue(&state);
    let Some(result) = state.blocking(move || q.list(&f)).await else {
        return gone();
    };
    match result {
        Ok((entries, problems)) => {
            let now = SystemTime::now();
            let shown: Vec<Value> = entries
                .iter()
                .take(limit)
                .map(|e| entry_json(e, now))
                .collect();
            Json(json!({"total": entries.len(), "entries": shown, "problems": problems}))
                .into_response()
        }
        Err(e) => op_error(e),
    }
}

async fn show(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let q = queue(&state);
    let Some(result) = state
        .blocking(move || {
            let env = q.load(&id)?;
            let headers = q.headers(&id)?;
            Ok::<_, OpError>(detail_json(&env, &headers, SystemTime::now()))
        })
        .await
    else {
        return gone();
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => op_error(e),
    }
}

async fn act(
    State(state): State<Arc<AdminState>>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(action) = Action::parse(&action).filter(|a| *a != Action::Delete) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}: use flush, hold, release or bounce (DELETE /api/queue/{{id}} deletes)"),
        )
        .into_response();
    };
    one(state, action, id).await
}

async fn delete_one(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    one(state, Action::Delete, id).await
}

async fn one(state: Arc<AdminState>, action: Action, id: String) -> Response {
    let q = queue(&state);
    match state.blocking(move || q.act(action, &id)).await {
        Some(Ok(done)) => Json(done).into_response(),
        Some(Err(e)) => op_error(e),
        None => gone(),
    }
}

async fn bulk(
    State(state): State<Arc<AdminState>>,
    Path(action): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no bulk action {action:?}: use flush, hold, release, bounce or delete"),
        )
        .into_response();
    };
    run_bulk(state, action, params).await
}

async fn bulk_delete(
    State(state): State<Arc<AdminState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    run_bulk(state, Action::Delete, params).await
}

async fn run_bulk(
    state: Arc<AdminState>,
    action: Action,
    params: HashMap<String, String>,
) -> Response {
    let f = match filter(&params) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let all = params.get("all").is_some_and(|v| v == "true" || v == "1");
    if f.is_empty() && !all {
        return error(
            StatusCode::BAD_REQUEST,
            "a bulk action needs a filter (status, domain, sender) or all=true",
        )
        .into_response();
    }
    let q = queue(&state);
    match state.blocking(move || q.bulk(action, &f, &|_, _| {})).await {
        Some(Ok(report)) => Json(report).into_response(),
        Some(Err(e)) => op_error(e),
        None => gone(),
    }
}

fn mailbox_error(e: MailboxError) -> Response {
    let status = match &e {
        MailboxError::NotFound { .. } => StatusCode::NOT_FOUND,
        MailboxError::BadId { .. } => StatusCode::BAD_REQUEST,
        MailboxError::Io { error, .. } if error.kind() == std::io::ErrorKind::FileTooLarge => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        MailboxError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string()).into_response()
}

async fn mailbox_list(State(state): State<Arc<AdminState>>) -> Response {
    let data_dir = state.config.current().data_dir.clone();
    match state
        .blocking(move || mailboxes::list_mailboxes(&data_dir))
        .await
    {
        Some(Ok(list)) => Json(json!({ "mailboxes": list })).into_response(),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        None => gone(),
    }
}

async fn message_list(
    State(state): State<Arc<AdminState>>,
    Path(addr): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let data_dir = state.config.current().data_dir.clone();
    let num = |k: &str, d: usize| params.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (offset, limit) = (num("offset", 0), num("limit", 100));
    match state
        .blocking(move || mailboxes::list_messages(&data_dir, &addr, offset, limit))
        .await
    {
        Some(Ok(page)) => Json(page).into_response(),
        Some(Err(e)) => mailbox_error(e),
        None => gone(),
    }
}

async fn message(
    State(state): State<Arc<AdminState>>,
    Path((addr, id)): Path<(String, String)>,
) -> Response {
    let data_dir = state.config.current().data_dir.clone();
    match state
        .blocking(move || mailboxes::read_message(&data_dir, &addr, &id))
        .await
    {
        Some(Ok(view)) => Json(view).into_response(),
        Some(Err(e)) => mailbox_error(e),
        None => gone(),
    }
}

/// The stored bytes, as `message/rfc822` and as an attachment: a browser must never render a
/// stranger's message as a page of this origin.
async fn raw_message(
    State(state): State<Arc<AdminState>>,
    Path((addr, id)): Path<(String, String)>,
) -> Response {
    let data_dir = state.config.current().data_dir.clone();
    let read = move || {
        let path = mailboxes::raw_message_path(&data_dir, &addr, &id)?;
        std::fs::read(&path).map_err(MailboxError::from)
    };
    match state.blocking(read).await {
        Some(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "message/rfc822"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"message.eml\"",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        Some(Err(e)) => mailbox_error(e),
        None => gone(),
    }
}

async fn reload(State(state): State<Arc<AdminState>>) -> Response {
    let Some(hook) = state.reload.clone() else {
        return error(StatusCode::NOT_FOUND, "reload is not available").into_response();
    };
    match state.blocking(move || hook()).await {
        Some(Ok(changes)) => Json(json!({"reloaded": true, "changes": changes})).into_response(),
        Some(Err(errors)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"reloaded": false, "errors": errors})),
        )
            .into_response(),
        None => gone(),
    }
}
