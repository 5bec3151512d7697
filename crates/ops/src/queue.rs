//! Queue management, one implementation for `tern queue` and the admin API.
//!
//! Every change takes the entry's lock first, the same lock the relay holds while delivering,
//! so an operator never edits an entry in the middle of its delivery: a busy entry is reported
//! ([`OpError::Busy`]) and the operator tries again. Changes go through the [`QueueStore`], which
//! tells the scheduler (in the server's own process directly, from `tern queue` by the spool's
//! control notices), so holds, releases and flushes take effect at once. What was done is also
//! written into the entry's timeline, in the same envelope update.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};

use tern_config::Config;
use tern_proto::HeaderSection;
use tern_queue::time_format;
use tern_queue::{
    Envelope, Event, NoticeKind, QueueId, QueueLock, QueueStore, RecipientStatus, StoredReply,
};
use tern_relay::notify::Notifier;
use tern_relay::status;

use crate::plain::plain_words;

/// Header sections longer than this are cut when shown (the server's default limit is 1 MiB).
pub const MAX_SHOWN_HEADER: usize = 1 << 20;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no such queue entry: {0}")]
    NoSuchEntry(String),
    #[error("entry {0} is being delivered right now (locked); try again in a moment")]
    Busy(QueueId),
    #[error("{0}")]
    Io(String),
}

fn io_fail(e: io::Error) -> OpError {
    OpError::Io(e.to_string())
}

/// Where an entry stands as a whole, for lists and filters: held wins, then any recipient not
/// tried yet, else deferred (an entry whose recipients are all final is being removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    Pending,
    Deferred,
    Held,
}

impl EntryStatus {
    pub fn of(env: &Envelope) -> EntryStatus {
        if env.held {
            EntryStatus::Held
        } else if env
            .recipients
            .iter()
            .any(|r| matches!(r.status, RecipientStatus::Pending))
        {
            EntryStatus::Pending
        } else {
            EntryStatus::Deferred
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryStatus::Pending => "pending",
            EntryStatus::Deferred => "deferred",
            EntryStatus::Held => "held",
        }
    }

    pub fn parse(s: &str) -> Option<EntryStatus> {
        match s.to_ascii_lowercase().as_str() {
            "pending" => Some(EntryStatus::Pending),
            "deferred" => Some(EntryStatus::Deferred),
            "held" => Some(EntryStatus::Held),
            _ => None,
        }
    }
}

/// Which entries a list or a bulk action covers. Empty: all of them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<EntryStatus>,
    /// An unfinished recipient is in this domain (case-insensitive, trailing dot ignored).
    pub domain: Option<String>,
    /// The reverse-path, case-insensitive; `""` is the null sender (bounces).
    pub sender: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.domain.is_none() && self.sender.is_none()
    }

    pub fn matches(&self, env: &Envelope) -> bool {
        if let Some(s) = self.status {
            if EntryStatus::of(env) != s {
                return false;
            }
        }
        if let Some(d) = &self.domain {
            if !env.unfinished().any(|r| in_domain(&r.address, d)) {
                return false;
            }
        }
        if let Some(s) = &self.sender {
            if !env.sender.as_deref().unwrap_or("").eq_ignore_ascii_case(s) {
                return false;
            }
        }
        true
    }
}

fn in_domain(address: &str, domain: &str) -> bool {
    let rd = address.rsplit_once('@').map_or("", |(_, d)| d);
    rd.trim_end_matches('.')
        .eq_ignore_ascii_case(domain.trim_end_matches('.'))
}

/// A bulk or single change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Flush,
    Hold,
    Release,
    Bounce,
    Delete,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "flush" => Some(Action::Flush),
            "hold" => Some(Action::Hold),
            "release" => Some(Action::Release),
            "bounce" => Some(Action::Bounce),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// What one change did: `result` is a word for programs (`flushed`, `held`, `released`,
/// `bounced`, `deleted`, `unchanged`), `message` a sentence for people.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    pub id: String,
    pub result: &'static str,
    pub message: String,
}

/// What a bulk change did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BulkReport {
    /// Entries the filter selected.
    pub matched: usize,
    /// Entries changed.
    pub done: usize,
    /// Entries being delivered right now, left alone.
    pub busy: usize,
    /// Entries selected but not changed because there was nothing to do (e.g. a held entry
    /// is not flushed, a released one not released again).
    pub unchanged: usize,
    /// Flush only: recipients made due, and held entries left alone.
    pub recipients: usize,
    pub held: usize,
    pub errors: Vec<String>,
}

/// Who asked, for the timeline (`tern queue` or the admin API).
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    Cli,
    Api,
}

impl Actor {
    fn name(self) -> &'static str {
        match self {
            Actor::Cli => "tern queue",
            Actor::Api => "admin API",
        }
    }
}

/// The queue as an operator sees it.
pub struct Queue {
    cfg: Arc<Config>,
    /// `None`: the spool was never created (a fresh install): the queue is empty.
    store: Option<Arc<dyn QueueStore>>,
    actor: Actor,
}

impl Queue {
    /// The queue of `cfg` from outside the server (`tern queue`): the spool (not created when
    /// missing, see [`crate::store::open_for_command`]) or the PostgreSQL database.
    pub fn open(cfg: Arc<Config>) -> Result<Queue, OpError> {
        let store = crate::store::open_for_command(&cfg).map_err(io_fail)?;
        Ok(Queue {
            cfg,
            store,
            actor: Actor::Cli,
        })
    }

    /// The server's own store (the admin API): its changes reach the scheduler directly.
    pub fn with_store(cfg: Arc<Config>, store: Arc<dyn QueueStore>) -> Queue {
        Queue {
            cfg,
            store: Some(store),
            actor: Actor::Api,
        }
    }

    fn need_store(&self, id: &str) -> Result<&Arc<dyn QueueStore>, OpError> {
        self.store
            .as_ref()
            .ok_or_else(|| OpError::NoSuchEntry(id.to_string()))
    }

    /// Every entry's envelope matching `filter`, oldest first. Entries removed while listing
    /// (delivered) are skipped; unreadable ones are returned in the second list.
    pub fn list(&self, filter: &Filter) -> Result<(Vec<Envelope>, Vec<String>), OpError> {
        let Some(store) = &self.store else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (id, env) in store.load_all().map_err(io_fail)? {
            match env {
                Ok(env) if filter.matches(&env) => out.push(env),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("skipping {id}: {e}")),
            }
        }
        Ok((out, problems))
    }

    /// Number of entries (for health), without reading envelopes.
    pub fn count(&self) -> Result<usize, OpError> {
        match &self.store {
            Some(s) => Ok(s.list().map_err(io_fail)?.len()),
            None => Ok(0),
        }
    }

    pub fn load(&self, id: &str) -> Result<Envelope, OpError> {
        let store = self.need_store(id)?;
        let qid = parse_id(id)?;
        load(store.as_ref(), &qid)
    }

    /// The message's header fields (up to the empty line), without loading the body.
    pub fn headers(&self, id: &str) -> Result<Vec<u8>, OpError> {
        let store = self.need_store(id)?;
        let qid = parse_id(id)?;
        read_header_section(store.as_ref(), &qid)
    }

    /// One change to one entry.
    pub fn act(&self, action: Action, id: &str) -> Result<Done, OpError> {
        let store = self.need_store(id)?;
        let qid = parse_id(id)?;
        let (lock, env) = lock_entry(store.as_ref(), &qid)?;
        self.apply(store, action, lock, env)
    }

    fn apply(
        &self,
        store: &Arc<dyn QueueStore>,
        action: Action,
        lock: QueueLock,
        mut env: Envelope,
    ) -> Result<Done, OpError> {
        let qid = env.id.clone();
        let now = SystemTime::now();
        let done = |result: &'static str, message: String| Done {
            id: qid.to_string(),
            result,
            message,
        };
        match action {
            Action::Flush => {
                if env.held {
                    return Ok(done(
                        "unchanged",
                        format!(
                            "{qid} is held: not flushed (release it with `tern queue release {qid}`)"
                        ),
                    ));
                }
                let n = flush_recipients(&mut env, None, now);
                if n > 0 {
                    env.events.push(Event::Flushed {
                        at: now,
                        recipients: n,
                    });
                    store.update(&lock, &env).map_err(io_fail)?;
                }
                Ok(done(
                    if n > 0 { "flushed" } else { "unchanged" },
                    format!(
                        "{qid}: {n} deferred {} due now",
                        plural(n, "recipient", "recipients")
                    ),
                ))
            }
            Action::Hold | Action::Release => {
                let held = action == Action::Hold;
                if env.held == held {
                    return Ok(done(
                        "unchanged",
                        format!("{qid}: already {}", if held { "held" } else { "not held" }),
                    ));
                }
                env.held = held;
                let by = self.actor.name().to_string();
                env.events.push(if held {
                    Event::Held { at: now, by }
                } else {
                    Event::Released { at: now, by }
                });
                store.update(&lock, &env).map_err(io_fail)?;
                let word = if held { "held" } else { "released" };
                Ok(done(word, format!("{qid}: {word}")))
            }
            Action::Delete => {
                store.remove(lock).map_err(io_fail)?;
                Ok(done("deleted", format!("{qid}: deleted")))
            }
            Action::Bounce => self.bounce(store, lock, env),
        }
    }

    /// Fails the unfinished recipients and sends the DSN (one step, shared with delivery
    /// rounds: the DSN is durable before anything is recorded), then removes the entry. A
    /// crash after the DSN leaves the entry as it was, to be bounced again: at worst a second
    /// bounce, never none. If the DSN cannot be sent, nothing changes.
    fn bounce(
        &self,
        store: &Arc<dyn QueueStore>,
        lock: QueueLock,
        mut env: Envelope,
    ) -> Result<Done, OpError> {
        let qid = env.id.clone();
        let failures: Vec<(String, StoredReply)> = env
            .unfinished()
            .map(|r| (r.address.clone(), status::admin_bounce()))
            .collect();
        if failures.is_empty() {
            store.remove(lock).map_err(io_fail)?;
            return Ok(Done {
                id: qid.to_string(),
                result: "deleted",
                message: format!("{qid}: no unfinished recipients; entry removed without a bounce"),
            });
        }
        let headers = read_header_section(store.as_ref(), &qid)?;
        let notifier = Notifier::new(self.cfg.clone(), store.clone());
        if let Err(e) = notifier.fail(&mut env, &failures, &headers) {
            return Err(OpError::Io(format!(
                "cannot send the bounce for {qid}: {e}; entry left unchanged"
            )));
        }
        store.remove(lock).map_err(io_fail)?;
        Ok(Done {
            id: qid.to_string(),
            result: "bounced",
            message: format!(
                "{qid}: {} {} bounced to <{}>, entry removed",
                failures.len(),
                plural(failures.len(), "recipient", "recipients"),
                env.sender.as_deref().unwrap_or("")
            ),
        })
    }

    /// `action` on every entry matching `filter`; `progress(done_so_far, total)` after each.
    /// Flush with a domain filter flushes only that domain's recipients.
    pub fn bulk(
        &self,
        action: Action,
        filter: &Filter,
        progress: &dyn Fn(usize, usize),
    ) -> Result<BulkReport, OpError> {
        let mut report = BulkReport::default();
        let Some(store) = &self.store else {
            return Ok(report);
        };
        let ids = store.list().map_err(io_fail)?;
        let total = ids.len();
        let now = SystemTime::now();
        for (n, id) in ids.into_iter().enumerate() {
            progress(n, total);
            // Cheap look first: most entries do not match and need no lock.
            let Ok(peek) = store.load(&id) else { continue };
            if !filter.matches(&peek) {
                continue;
            }
            report.matched += 1;
            let (lock, mut env) = match lock_entry(store.as_ref(), &id) {
                Ok(x) => x,
                Err(OpError::Busy(_)) => {
                    report.busy += 1;
                    continue;
                }
                Err(OpError::NoSuchEntry(_)) => continue,
                Err(e) => {
                    report.errors.push(format!("{id}: {e}"));
                    continue;
                }
            };
            // Rechecked under the lock: a delivery may have changed it since the peek.
            if !filter.matches(&env) {
                report.matched -= 1;
                continue;
            }
            let result = if action == Action::Flush {
                if env.held {
                    // Reported only when it had something to flush.
                    if flush_recipients(&mut env, filter.domain.as_deref(), now) > 0 {
                        report.held += 1;
                    }
                    report.unchanged += 1;
                    continue;
                }
                let n = flush_recipients(&mut env, filter.domain.as_deref(), now);
                if n == 0 {
                    report.unchanged += 1;
                    continue;
                }
                report.recipients += n;
                env.events.push(Event::Flushed {
                    at: now,
                    recipients: n,
                });
                store
                    .update(&lock, &env)
                    .map_err(io_fail)
                    .map(|()| "flushed")
            } else {
                self.apply(store, action, lock, env).map(|d| d.result)
            };
            match result {
                Ok("unchanged") => report.unchanged += 1,
                Ok(_) => report.done += 1,
                Err(e) => report.errors.push(format!("{id}: {e}")),
            }
        }
        progress(total, total);
        Ok(report)
    }
}

fn parse_id(id: &str) -> Result<QueueId, OpError> {
    id.parse()
        .map_err(|_| OpError::NoSuchEntry(format!("{id} (queue ids are 32 lower-case hex digits)")))
}

/// Takes the entry's lock and loads its envelope under it.
fn lock_entry(store: &dyn QueueStore, id: &QueueId) -> Result<(QueueLock, Envelope), OpError> {
    let lock = match store.lock(id) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(OpError::Busy(id.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OpError::NoSuchEntry(id.to_string()))
        }
        Err(e) => return Err(io_fail(e)),
    };
    let env = load(store, id)?;
    Ok((lock, env))
}

fn load(store: &dyn QueueStore, id: &QueueId) -> Result<Envelope, OpError> {
    store.load(id).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            OpError::NoSuchEntry(id.to_string())
        } else {
            io_fail(e)
        }
    })
}

fn read_header_section(store: &dyn QueueStore, id: &QueueId) -> Result<Vec<u8>, OpError> {
    let head = store.read_prefix(id, MAX_SHOWN_HEADER).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            OpError::NoSuchEntry(id.to_string())
        } else {
            io_fail(e)
        }
    })?;
    Ok(HeaderSection::find(&head).fields().to_vec())
}

/// Makes the deferred recipients (of `domain`, if given) due at `now`; returns how many.
pub fn flush_recipients(env: &mut Envelope, domain: Option<&str>, now: SystemTime) -> usize {
    let mut n = 0;
    for r in &mut env.recipients {
        if let Some(d) = domain {
            if !in_domain(&r.address, d) {
                continue;
            }
        }
        if let RecipientStatus::Deferred { next_attempt, .. } = &mut r.status {
            if *next_attempt > now {
                *next_attempt = now;
                n += 1;
            }
        }
    }
    n
}

pub fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

// ------------------------------------------------------------------ JSON views

/// The object of `tern queue list --json` and of each entry of `GET /api/queue`; field names
/// are an interface (docs/queue.md, docs/operations.md).
pub fn entry_json(env: &Envelope, now: SystemTime) -> Value {
    let recipients: Vec<Value> = env
        .recipients
        .iter()
        .map(|r| {
            let tried = env
                .attempts_log
                .iter()
                .filter(|a| a.recipient == r.address)
                .count() as u64;
            let (attempts, last_reply, next) = match &r.status {
                RecipientStatus::Pending => (tried, None, None),
                RecipientStatus::Deferred {
                    attempts,
                    last_reply,
                    next_attempt,
                } => (
                    u64::from(*attempts),
                    Some(last_reply),
                    Some(time_format::format(*next_attempt)),
                ),
                RecipientStatus::Delivered { reply, .. }
                | RecipientStatus::Failed { reply, .. } => (tried.max(1), Some(reply), None),
            };
            json!({
                "address": r.address,
                "original": r.original,
                "state": r.status.name(),
                "attempts": attempts,
                "last_reply": last_reply.map(ToString::to_string),
                "reply_detail": last_reply,
                "plain": last_reply.and_then(plain_words),
                "next_attempt": next,
            })
        })
        .collect();
    json!({
        "id": env.id.to_string(),
        "received_at": time_format::format(env.received_at),
        "age_secs": now.duration_since(env.received_at).unwrap_or_default().as_secs(),
        "size": env.size,
        "sender": env.sender.clone().unwrap_or_default(),
        "held": env.held,
        "status": EntryStatus::of(env).name(),
        "next_attempt": env.next_due().map(|t| time_format::format(t.max(env.received_at))),
        "recipients": recipients,
    })
}

/// One entry in full (`tern queue show --json`, `GET /api/queue/{id}`): [`entry_json`] plus
/// the attempts, the header section and the timeline.
pub fn detail_json(env: &Envelope, headers: &[u8], now: SystemTime) -> Value {
    let mut obj = entry_json(env, now);
    let attempts: Vec<Value> = env
        .attempts_log
        .iter()
        .map(|a| {
            json!({
                "at": time_format::format(a.at),
                "recipient": a.recipient,
                "host": a.host,
                "reply": a.reply.to_string(),
                "reply_detail": a.reply,
                "plain": plain_words(&a.reply),
                "tls": a.tls,
            })
        })
        .collect();
    obj["attempts"] = Value::Array(attempts);
    obj["headers"] = Value::String(String::from_utf8_lossy(headers).into_owned());
    obj["client_ip"] = json!(env.client_ip);
    obj["helo"] = json!(env.helo);
    // The sender's requests (RFC 3461 RET/ENVID, RFC 8689 REQUIRETLS) and each recipient's.
    obj["dsn"] = json!(env.dsn);
    obj["requiretls"] = json!(env.requiretls);
    if let Some(Value::Array(rcpts)) = obj.get_mut("recipients") {
        for (shown, r) in rcpts.iter_mut().zip(&env.recipients) {
            shown["dsn"] = json!(r.dsn);
        }
    }
    obj["timeline"] = Value::Array(timeline(env).into_iter().map(|s| s.json).collect());
    obj
}

/// One step of a message's history, as shown.
pub struct Step {
    pub at: SystemTime,
    pub text: String,
    pub json: Value,
}

/// The message's history in time order: how it arrived, that it was queued, each attempt with
/// the host, TLS and reply, each recipient's final state, and what operators and notifications
/// did. Drawn from the envelope alone (its events, attempts and statuses).
pub fn timeline(env: &Envelope) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut step = |at: SystemTime, event: &str, text: String, mut extra: Value| {
        extra["at"] = json!(time_format::format(at));
        extra["event"] = json!(event);
        extra["text"] = json!(text);
        steps.push(Step {
            at,
            text,
            json: extra,
        });
    };
    let has_received = env
        .events
        .events()
        .iter()
        .any(|e| matches!(e, Event::Received { .. }));
    if !has_received {
        // An entry written before timelines (or a notification tern made itself).
        let from = match (env.client_ip, &env.helo) {
            (Some(ip), Some(h)) => format!("from {h} [{ip}]"),
            (Some(ip), None) => format!("from [{ip}]"),
            _ => "from tern itself".to_string(),
        };
        step(
            env.received_at,
            "received",
            format!("Received {from}"),
            json!({}),
        );
    }
    for e in env.events.events() {
        match e {
            Event::Received {
                at,
                listener,
                client_ip,
                helo,
                tls,
                auth,
                checks,
            } => {
                let mut text = format!("Received on {listener}");
                match (client_ip, helo) {
                    (Some(ip), Some(h)) => text.push_str(&format!(" from {h} [{ip}]")),
                    (Some(ip), None) => text.push_str(&format!(" from [{ip}]")),
                    _ => {}
                }
                text.push_str(&match tls {
                    Some(t) => format!(", over TLS ({t})"),
                    None => ", without TLS".to_string(),
                });
                if let Some(a) = auth {
                    text.push_str(&format!(", authenticated as {a}"));
                }
                if let Some(c) = checks {
                    text.push_str(&format!(", {c}"));
                }
                step(
                    *at,
                    "received",
                    text,
                    json!({"listener": listener, "client_ip": client_ip, "helo": helo,
                           "tls": tls, "auth": auth, "checks": checks}),
                );
            }
            Event::Held { at, by } => step(*at, "held", format!("Held by {by}"), json!({})),
            Event::Released { at, by } => {
                step(*at, "released", format!("Released by {by}"), json!({}))
            }
            Event::Flushed { at, recipients } => step(
                *at,
                "flushed",
                format!(
                    "Flushed: {recipients} deferred {} made due now",
                    plural(*recipients, "recipient", "recipients")
                ),
                json!({"recipients": recipients}),
            ),
            Event::Notified {
                at,
                kind,
                recipients,
                dsn_id,
            } => {
                let (event, what) = match kind {
                    NoticeKind::Bounce => ("bounced", "Bounce (failure DSN)"),
                    NoticeKind::Delay => ("delay_notice", "Delay notice (DSN)"),
                    NoticeKind::Success => ("success_notice", "Success notice (DSN)"),
                };
                step(
                    *at,
                    event,
                    format!(
                        "{what} sent to <{}> about {}, as {dsn_id}",
                        env.sender.as_deref().unwrap_or(""),
                        recipients.join(", ")
                    ),
                    json!({"recipients": recipients, "dsn_id": dsn_id}),
                );
            }
        }
    }
    let n = env.recipients.len();
    step(
        env.received_at,
        "queued",
        format!(
            "Queued for {n} remote {}",
            plural(n, "recipient", "recipients")
        ),
        json!({"recipients": n}),
    );
    for a in &env.attempts_log {
        let class = a.reply.code() / 100;
        let outcome = match class {
            2 => "delivered",
            5 => "failed",
            _ => "deferred",
        };
        let plain = plain_words(&a.reply);
        let mut text = format!(
            "Attempt for {} via {}: {}",
            a.recipient,
            a.host.as_deref().unwrap_or("(no host)"),
            a.reply
        );
        if let Some(t) = &a.tls {
            text.push_str(&format!(" [{t}]"));
        }
        if let Some(p) = &plain {
            text.push_str(&format!(" ({p})"));
        }
        step(
            a.at,
            "attempt",
            text,
            json!({"recipient": a.recipient, "host": a.host, "tls": a.tls.as_ref().map(ToString::to_string),
                   "reply": a.reply.to_string(), "plain": plain, "outcome": outcome}),
        );
    }
    for r in &env.recipients {
        match &r.status {
            RecipientStatus::Delivered { at, reply } => step(
                *at,
                "delivered",
                format!("Delivered to {}: {reply}", r.address),
                json!({"recipient": r.address, "reply": reply.to_string()}),
            ),
            RecipientStatus::Failed { at, reply } => step(
                *at,
                "failed",
                format!("Failed for {}: {reply}", r.address),
                json!({"recipient": r.address, "reply": reply.to_string(),
                       "plain": plain_words(reply)}),
            ),
            RecipientStatus::Deferred {
                next_attempt,
                attempts,
                ..
            } if !env.held => step(
                *next_attempt,
                "deferred",
                format!(
                    "Next attempt for {} (after {attempts} {})",
                    r.address,
                    plural(*attempts as usize, "attempt", "attempts")
                ),
                json!({"recipient": r.address, "next_attempt": time_format::format(*next_attempt)}),
            ),
            _ => {}
        }
    }
    // Stable: events at the same instant keep their order (received before queued).
    steps.sort_by_key(|s| s.at);
    steps
}

#[cfg(test)]
mod tests;
