//! `tern queue`: look at and manage the spool while the server runs (or while it is stopped).
//!
//! Every change takes the entry's lock first, the same lock the relay holds while delivering,
//! so a command never edits an entry in the middle of its delivery: a busy entry is reported
//! (exit 75) and the operator tries again. The queue tells a running server about every change
//! (see `tern_queue::fs_store` control notices), so holds, releases and flushes take effect at
//! once.
//!
//! Exit codes (sysexits.h): 0 ok, 66 no such entry, 75 entry busy, 78 config error,
//! 74 spool I/O error.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use tern_config::{Config, LogConfig};
use tern_proto::HeaderSection;
use tern_queue::time_format;
use tern_queue::{
    Envelope, FsStore, QueueId, QueueLock, QueueStore, Recipient, RecipientStatus, StoredReply,
};
use tern_relay::notify::Notifier;
use tern_relay::status;

use crate::logging;

const EX_NOINPUT: u8 = 66;
const EX_IOERR: u8 = 74;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

/// Header sections longer than this are cut in `show` (the server's default limit is 1 MiB).
const MAX_SHOWN_HEADER: usize = 1 << 20;

#[derive(Args)]
pub struct QueueArgs {
    /// Config file (default: $TERN_CONFIG, else /etc/tern/tern.toml if present, else built-in defaults).
    #[arg(long, short = 'c', env = "TERN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: QueueAction,
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages with each recipient's state and last reply.
    List {
        /// One JSON array of entries instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry: envelope, recipients, attempts with replies, message headers.
    Show {
        id: String,
        /// A JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Retry deferred recipients now: one entry, one destination domain, or (no argument) all.
    /// Held entries are left alone.
    Flush {
        id: Option<String>,
        /// Only recipients in this domain, in every entry.
        #[arg(long, conflicts_with = "id")]
        domain: Option<String>,
    },
    /// Remove an entry without telling the sender.
    Delete { id: String },
    /// Stop delivery attempts for an entry until it is released.
    Hold { id: String },
    /// Let a held entry be delivered again.
    Release { id: String },
    /// Fail every unfinished recipient, send the sender a bounce (DSN), remove the entry.
    Bounce { id: String },
}

/// Why a command failed; each maps to an exit code.
enum Fail {
    NoSuchEntry(String),
    Busy(QueueId),
    Io(String),
}

impl Fail {
    fn report(self) -> ExitCode {
        match self {
            Fail::NoSuchEntry(id) => {
                eprintln!("tern queue: no such queue entry: {id}");
                ExitCode::from(EX_NOINPUT)
            }
            Fail::Busy(id) => {
                eprintln!(
                    "tern queue: entry {id} is being delivered right now (locked); try again in a moment"
                );
                ExitCode::from(EX_TEMPFAIL)
            }
            Fail::Io(msg) => {
                eprintln!("tern queue: {msg}");
                ExitCode::from(EX_IOERR)
            }
        }
    }
}

fn io_fail(e: io::Error) -> Fail {
    Fail::Io(e.to_string())
}

pub fn run(args: QueueArgs) -> ExitCode {
    let cfg = match Config::discover(args.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tern queue: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // Warnings (e.g. a bounce that cannot be delivered) go to stderr; RUST_LOG shows more.
    logging::init(&LogConfig {
        level: "warn".into(),
        format: cfg.log.format,
    });
    let result = match args.action {
        QueueAction::List { json } => list(&cfg, json),
        QueueAction::Show { id, json } => show(&cfg, &id, json),
        QueueAction::Flush { id, domain } => flush(&cfg, id.as_deref(), domain.as_deref()),
        QueueAction::Delete { id } => delete(&cfg, &id),
        QueueAction::Hold { id } => set_held(&cfg, &id, true),
        QueueAction::Release { id } => set_held(&cfg, &id, false),
        QueueAction::Bounce { id } => bounce_entry(&cfg, &id),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

/// The spool, or `None` when it was never created (a fresh install: the queue is empty). Not
/// created here: `tern queue` run as another user (root) must not leave directories behind that
/// the server cannot write.
fn open_store(cfg: &Config) -> Result<Option<Arc<dyn QueueStore>>, Fail> {
    let root = cfg.data_dir.join("queue");
    match root.try_exists() {
        Ok(true) => FsStore::open(&cfg.data_dir)
            .map(|s| Some(Arc::new(s) as Arc<dyn QueueStore>))
            .map_err(io_fail),
        Ok(false) => Ok(None),
        Err(e) => Err(Fail::Io(format!("{}: {e}", root.display()))),
    }
}

fn need_store(cfg: &Config, id: &str) -> Result<Arc<dyn QueueStore>, Fail> {
    open_store(cfg)?.ok_or_else(|| Fail::NoSuchEntry(id.to_string()))
}

fn parse_id(id: &str) -> Result<QueueId, Fail> {
    id.parse()
        .map_err(|_| Fail::NoSuchEntry(format!("{id} (queue ids are 32 lower-case hex digits)")))
}

/// Takes the entry's lock and loads its envelope under it.
fn lock_entry(store: &dyn QueueStore, id: &QueueId) -> Result<(QueueLock, Envelope), Fail> {
    let lock = match store.lock(id) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(Fail::Busy(id.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Fail::NoSuchEntry(id.to_string()))
        }
        Err(e) => return Err(io_fail(e)),
    };
    let env = load(store, id)?;
    Ok((lock, env))
}

fn load(store: &dyn QueueStore, id: &QueueId) -> Result<Envelope, Fail> {
    store.load(id).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Fail::NoSuchEntry(id.to_string())
        } else {
            io_fail(e)
        }
    })
}

/// Every entry's envelope, oldest first. Entries removed while listing (delivered) are skipped;
/// unreadable ones are reported on stderr and skipped.
fn load_all(store: &dyn QueueStore) -> Result<Vec<Envelope>, Fail> {
    let mut out = Vec::new();
    for id in store.list().map_err(io_fail)? {
        match store.load(&id) {
            Ok(env) => out.push(env),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("tern queue: skipping {id}: {e}"),
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ list / show

fn list(cfg: &Config, json: bool) -> Result<(), Fail> {
    let entries = match open_store(cfg)? {
        Some(store) => load_all(store.as_ref())?,
        None => Vec::new(),
    };
    let now = SystemTime::now();
    if json {
        let arr: Vec<Value> = entries.iter().map(|e| entry_json(e, now)).collect();
        println!("{}", Value::Array(arr));
        return Ok(());
    }
    if entries.is_empty() {
        println!("queue is empty");
        return Ok(());
    }
    let mut out = String::new();
    for env in &entries {
        let _ = write!(
            out,
            "{}  {:>6}  {:>7}  <{}>",
            env.id,
            age(now, env.received_at),
            size(env.size),
            env.sender.as_deref().unwrap_or("")
        );
        if env.held {
            out.push_str("  HELD");
        }
        out.push('\n');
        for r in &env.recipients {
            let _ = writeln!(out, "    {}", recipient_line(env, r, now));
        }
    }
    let rcpts: usize = entries.iter().map(|e| e.unfinished().count()).sum();
    let _ = writeln!(
        out,
        "-- {} {}, {} unfinished {}",
        entries.len(),
        plural(entries.len(), "entry", "entries"),
        rcpts,
        plural(rcpts, "recipient", "recipients")
    );
    print!("{}", terminal_safe(&out));
    Ok(())
}

fn show(cfg: &Config, id: &str, json: bool) -> Result<(), Fail> {
    let store = need_store(cfg, id)?;
    let qid = parse_id(id)?;
    let env = load(store.as_ref(), &qid)?;
    let headers = read_header_section(store.as_ref(), &qid)?;
    let headers = String::from_utf8_lossy(&headers).into_owned();
    let now = SystemTime::now();
    if json {
        let mut obj = entry_json(&env, now);
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
                    "tls": a.tls,
                })
            })
            .collect();
        obj["attempts"] = Value::Array(attempts);
        obj["headers"] = Value::String(headers);
        println!("{obj}");
        return Ok(());
    }

    let mut out = String::new();
    let _ = writeln!(out, "id:         {}", env.id);
    let _ = writeln!(
        out,
        "received:   {} ({} ago)",
        time_format::format(env.received_at),
        age(now, env.received_at)
    );
    let _ = writeln!(out, "sender:     <{}>", env.sender.as_deref().unwrap_or(""));
    let _ = writeln!(out, "size:       {} bytes", env.size);
    if env.client_ip.is_some() || env.helo.is_some() {
        let _ = writeln!(
            out,
            "client:     {} (helo {})",
            env.client_ip
                .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            env.helo.as_deref().unwrap_or("-")
        );
    }
    let mut flags = Vec::new();
    if env.held {
        flags.push("HELD");
    }
    if env.smtputf8 {
        flags.push("SMTPUTF8");
    }
    if env.eight_bit {
        flags.push("8BITMIME");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "flags:      {}", flags.join(" "));
    }
    out.push_str("recipients:\n");
    for r in &env.recipients {
        let _ = writeln!(out, "  {}", recipient_line(&env, r, now));
    }
    if !env.attempts_log.is_empty() {
        out.push_str("attempts:\n");
        for a in &env.attempts_log {
            let _ = writeln!(
                out,
                "  {}  {}  {}  tls={}  {}",
                time_format::format(a.at),
                a.recipient,
                a.host.as_deref().unwrap_or("-"),
                a.tls
                    .as_ref()
                    .map_or_else(|| "-".to_string(), ToString::to_string),
                a.reply
            );
        }
    }
    out.push_str("headers:\n");
    for line in headers.lines() {
        let _ = writeln!(out, "  {line}");
    }
    print!("{}", terminal_safe(&out));
    Ok(())
}

/// `address (original ...)  state  details: last reply`, one line.
fn recipient_line(env: &Envelope, r: &Recipient, now: SystemTime) -> String {
    let mut s = r.address.clone();
    if let Some(o) = &r.original {
        let _ = write!(s, " (to {o})");
    }
    let _ = write!(s, "  {}", r.status.name());
    match &r.status {
        RecipientStatus::Pending => {
            if env.held {
                s.push_str(", held");
            }
        }
        RecipientStatus::Deferred {
            attempts,
            last_reply,
            next_attempt,
        } => {
            let _ = write!(
                s,
                ", {attempts} {}",
                plural(*attempts as usize, "attempt", "attempts")
            );
            if env.held {
                s.push_str(", held");
            } else {
                match next_attempt.duration_since(now) {
                    Ok(d) if d >= Duration::from_secs(1) => {
                        let _ = write!(s, ", next in {}", human_duration(d));
                    }
                    _ => s.push_str(", due now"),
                }
            }
            let _ = write!(s, ": {last_reply}");
        }
        RecipientStatus::Delivered { reply, .. } | RecipientStatus::Failed { reply, .. } => {
            let _ = write!(s, ": {reply}");
        }
    }
    s
}

/// The object of `list --json` (and the base of `show --json`); field names are an interface
/// (docs/queue.md).
fn entry_json(env: &Envelope, now: SystemTime) -> Value {
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
        "recipients": recipients,
    })
}

/// The message's header fields (up to the empty line), without loading the body; cut at
/// MAX_SHOWN_HEADER.
fn read_header_section(store: &dyn QueueStore, id: &QueueId) -> Result<Vec<u8>, Fail> {
    let head = store.read_prefix(id, MAX_SHOWN_HEADER).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Fail::NoSuchEntry(id.to_string())
        } else {
            io_fail(e)
        }
    })?;
    Ok(HeaderSection::find(&head).fields().to_vec())
}

// ------------------------------------------------------------------ changes

fn flush(cfg: &Config, id: Option<&str>, domain: Option<&str>) -> Result<(), Fail> {
    let now = SystemTime::now();
    if let Some(id) = id {
        let store = need_store(cfg, id)?;
        let qid = parse_id(id)?;
        let (lock, mut env) = lock_entry(store.as_ref(), &qid)?;
        if env.held {
            println!("{qid} is held: not flushed (release it with `tern queue release {qid}`)");
            return Ok(());
        }
        let n = flush_recipients(&mut env, None, now);
        if n > 0 {
            store.update(&lock, &env).map_err(io_fail)?;
        }
        println!(
            "{qid}: {n} deferred {} due now",
            plural(n, "recipient", "recipients")
        );
        return Ok(());
    }

    let Some(store) = open_store(cfg)? else {
        println!("queue is empty");
        return Ok(());
    };
    let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    let (mut recipients, mut entries, mut busy, mut held) = (0usize, 0usize, 0usize, 0usize);
    for id in store.list().map_err(io_fail)? {
        // Cheap look first: most entries have nothing to flush and need no lock.
        let Ok(peek) = store.load(&id) else { continue };
        if flush_recipients(&mut peek.clone(), domain.as_deref(), now) == 0 {
            continue;
        }
        if peek.held {
            held += 1;
            continue;
        }
        let (lock, mut env) = match lock_entry(store.as_ref(), &id) {
            Ok(x) => x,
            // Being delivered right now: flushing it would change nothing.
            Err(Fail::Busy(_)) => {
                busy += 1;
                continue;
            }
            Err(Fail::NoSuchEntry(_)) => continue,
            Err(f) => return Err(f),
        };
        if env.held {
            held += 1;
            continue;
        }
        let n = flush_recipients(&mut env, domain.as_deref(), now);
        if n > 0 {
            store.update(&lock, &env).map_err(io_fail)?;
            recipients += n;
            entries += 1;
        }
    }
    let mut msg = format!(
        "{recipients} deferred {} in {entries} {} due now",
        plural(recipients, "recipient", "recipients"),
        plural(entries, "entry", "entries")
    );
    if held > 0 {
        let _ = write!(
            msg,
            "; {held} held {} left alone",
            plural(held, "entry", "entries")
        );
    }
    if busy > 0 {
        let _ = write!(
            msg,
            "; {busy} {} being delivered right now",
            plural(busy, "entry", "entries")
        );
    }
    println!("{msg}");
    Ok(())
}

/// Makes the deferred recipients (of `domain`, if given) due at `now`; returns how many.
fn flush_recipients(env: &mut Envelope, domain: Option<&str>, now: SystemTime) -> usize {
    let mut n = 0;
    for r in &mut env.recipients {
        if let Some(d) = domain {
            let rd = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            if !rd.trim_end_matches('.').eq_ignore_ascii_case(d) {
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

fn delete(cfg: &Config, id: &str) -> Result<(), Fail> {
    let store = need_store(cfg, id)?;
    let qid = parse_id(id)?;
    let (lock, _env) = lock_entry(store.as_ref(), &qid)?;
    store.remove(lock).map_err(io_fail)?;
    println!("{qid}: deleted");
    Ok(())
}

fn set_held(cfg: &Config, id: &str, held: bool) -> Result<(), Fail> {
    let store = need_store(cfg, id)?;
    let qid = parse_id(id)?;
    let (lock, mut env) = lock_entry(store.as_ref(), &qid)?;
    let word = if held { "held" } else { "released" };
    if env.held == held {
        println!("{qid}: already {}", if held { "held" } else { "not held" });
        return Ok(());
    }
    env.held = held;
    store.update(&lock, &env).map_err(io_fail)?;
    println!("{qid}: {word}");
    Ok(())
}

/// Fails the unfinished recipients and sends the DSN (one step, shared with delivery rounds:
/// the DSN is durable before anything is recorded), then removes the entry. A crash after the
/// DSN leaves the entry as it was, to be bounced again: at worst a second bounce, never none.
/// If the DSN cannot be sent, nothing changes.
fn bounce_entry(cfg: &Config, id: &str) -> Result<(), Fail> {
    let store = need_store(cfg, id)?;
    let qid = parse_id(id)?;
    let (lock, mut env) = lock_entry(store.as_ref(), &qid)?;
    let failures: Vec<(String, StoredReply)> = env
        .unfinished()
        .map(|r| (r.address.clone(), status::admin_bounce()))
        .collect();
    if failures.is_empty() {
        store.remove(lock).map_err(io_fail)?;
        println!("{qid}: no unfinished recipients; entry removed without a bounce");
        return Ok(());
    }
    let headers = read_header_section(store.as_ref(), &qid)?;
    let notifier = Notifier::new(Arc::new(cfg.clone()), store.clone());
    if let Err(e) = notifier.fail(&mut env, &failures, &headers) {
        return Err(Fail::Io(format!(
            "cannot send the bounce for {qid}: {e}; entry left unchanged"
        )));
    }
    store.remove(lock).map_err(io_fail)?;
    println!(
        "{qid}: {} {} bounced to <{}>, entry removed",
        failures.len(),
        plural(failures.len(), "recipient", "recipients"),
        env.sender.as_deref().unwrap_or("")
    );
    Ok(())
}

// ------------------------------------------------------------------ formatting

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn age(now: SystemTime, then: SystemTime) -> String {
    human_duration(now.duration_since(then).unwrap_or_default())
}

/// Two units at most: `45s`, `12m05s`, `3h05m`, `2d04h`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m")
    } else if mins > 0 {
        format!("{mins}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

fn size(bytes: u64) -> String {
    const K: u64 = 1024;
    if bytes < K {
        format!("{bytes}B")
    } else if bytes < K * K {
        format!("{:.1}K", bytes as f64 / K as f64)
    } else {
        format!("{:.1}M", bytes as f64 / (K * K) as f64)
    }
}

/// The text output with every control character that could act on a terminal written as an
/// escape (`\x1b`, `\u{202e}`): headers, replies and addresses in the queue come from remote
/// clients and servers, and an administrator's terminal must not interpret them (escape
/// sequences, a bare CR overwriting a line, bidi overrides reordering it). Newlines between
/// the lines of the output and tabs stay. `--json` output is escaped by JSON itself.
fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() || is_bidi_control(c) => {
                let _ = if (c as u32) < 0x100 {
                    write!(out, "\\x{:02x}", c as u32)
                } else {
                    write!(out, "\\u{{{:x}}}", c as u32)
                };
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode bidirectional formatting characters (they reorder what the terminal shows).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let shown =
            terminal_safe("Subject: \x1b[2J\x1b]0;owned\x07\r\nX: a\u{202e}b\u{9b}\n\tok\n");
        assert_eq!(
            shown,
            "Subject: \\x1b[2J\\x1b]0;owned\\x07\\x0d\nX: a\\u{202e}b\\x9b\n\tok\n"
        );
        assert!(!shown
            .chars()
            .any(|c| c != '\n' && c != '\t' && c.is_control()));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(725)), "12m05s");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600 + 300)), "3h05m");
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2d04h"
        );
        assert_eq!(size(512), "512B");
        assert_eq!(size(1536), "1.5K");
    }

    #[test]
    fn flush_only_touches_deferred_recipients_of_the_domain() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let deferred = |a: &str| Recipient {
            address: a.into(),
            original: None,
            status: RecipientStatus::Deferred {
                attempts: 1,
                last_reply: StoredReply::from_legacy("451 x"),
                next_attempt: later,
            },
        };
        let mut env = Envelope {
            id: QueueId::generate(),
            sender: None,
            recipients: vec![
                deferred("a@One.test"),
                deferred("b@two.test"),
                Recipient {
                    address: "c@one.test".into(),
                    original: None,
                    status: RecipientStatus::Pending,
                },
            ],
            received_at: now,
            client_ip: None,
            helo: None,
            size: 0,
            prefix: String::new(),
            smtputf8: false,
            eight_bit: false,
            held: false,
            delay_warned: false,
            attempts_log: Vec::new(),
        };
        assert_eq!(flush_recipients(&mut env, Some("one.test"), now), 1);
        assert_eq!(flush_recipients(&mut env, Some("one.test"), now), 0);
        assert_eq!(flush_recipients(&mut env, None, now), 1);
        assert!(env.recipients.iter().all(|r| match &r.status {
            RecipientStatus::Deferred { next_attempt, .. } => *next_attempt == now,
            _ => true,
        }));
        assert_eq!(env.recipients[2].status, RecipientStatus::Pending);
    }
}
