//! `tern queue`: look at and manage the spool while the server runs (or while it is stopped).
//!
//! The work is done by `tern_ops::queue`, the same code the admin API runs: every change takes
//! the entry's lock first, the lock the relay holds while delivering, so a command never edits
//! an entry in the middle of its delivery: a busy entry is reported (exit 75) and the operator
//! tries again. The running server hears of every change (spool control notices), so holds,
//! releases and flushes take effect at once.
//!
//! Exit codes (sysexits.h): 0 ok, 66 no such entry, 75 entry busy, 78 config error,
//! 74 spool I/O error, 64 usage error.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::Value;

use tern_config::{Config, LogConfig};
use tern_ops::queue::{
    detail_json, entry_json, plural, timeline, Action, EntryStatus, Filter, OpError, Queue,
};
use tern_queue::time_format;
use tern_queue::{DsnRet, Envelope, Recipient, RecipientStatus};

use crate::logging;

const EX_USAGE: u8 = 64;
const EX_NOINPUT: u8 = 66;
const EX_IOERR: u8 = 74;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

#[derive(Args)]
pub struct QueueArgs {
    /// Config file (default: $TERN_CONFIG, else /etc/tern/tern.toml if present, else built-in defaults).
    #[arg(long, short = 'c', env = "TERN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: QueueAction,
}

/// Which entries a bulk command covers (with no id).
#[derive(Args, Clone, Default)]
struct Select {
    /// Entries with an unfinished recipient in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Entries in this state: pending, deferred or held.
    #[arg(long, value_parser = parse_status)]
    status: Option<EntryStatus>,
    /// Entries from this sender ("" for bounces).
    #[arg(long)]
    sender: Option<String>,
    /// Every entry (needed when no other filter is given).
    #[arg(long)]
    all: bool,
}

fn parse_status(s: &str) -> Result<EntryStatus, String> {
    EntryStatus::parse(s).ok_or_else(|| format!("{s:?}: use pending, deferred or held"))
}

impl Select {
    fn filter(&self) -> Filter {
        Filter {
            status: self.status,
            domain: self
                .domain
                .as_ref()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase()),
            sender: self.sender.clone(),
        }
    }
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages with each recipient's state and last reply.
    List {
        /// One JSON array of entries instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Show one entry: envelope, recipients, attempts with replies, timeline, message headers.
    Show {
        id: String,
        /// A JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Retry deferred recipients now: one entry, or the entries selected (no argument: all).
    /// Held entries are left alone; with --domain only that domain's recipients are flushed.
    Flush {
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Remove an entry (or the selected entries) without telling the sender.
    Delete {
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Stop delivery attempts for an entry (or the selected entries) until released.
    Hold {
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Let a held entry (or the selected entries) be delivered again.
    Release {
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Fail every unfinished recipient, send the sender a bounce (DSN), remove the entry.
    Bounce {
        id: Option<String>,
        #[command(flatten)]
        select: Select,
    },
    /// Create or upgrade the queue's schema in PostgreSQL (`[queue] backend = "postgres"`);
    /// `tern serve` does the same at start-up. Safe to run on several nodes at once.
    Migrate,
}

fn migrate(cfg: &Config) -> ExitCode {
    let Some(pg) = tern_ops::store::postgres(cfg) else {
        eprintln!(
            "tern queue migrate: queue.backend is \"fs\": the filesystem spool has no schema to migrate (set queue.backend = \"postgres\" and queue.postgres_url_file)"
        );
        return ExitCode::from(EX_CONFIG);
    };
    match tern_pgqueue::PgStore::migrate(pg.url.as_str()) {
        Ok((before, after)) if before == after => {
            println!("queue schema is at version {after}: nothing to do");
            ExitCode::SUCCESS
        }
        Ok((before, after)) => {
            println!("queue schema migrated from version {before} to {after}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern queue migrate: {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn report(e: OpError) -> ExitCode {
    eprintln!("tern queue: {e}");
    ExitCode::from(match e {
        OpError::NoSuchEntry(_) => EX_NOINPUT,
        OpError::Busy(_) => EX_TEMPFAIL,
        OpError::Io(_) => EX_IOERR,
    })
}

pub fn run(args: QueueArgs) -> ExitCode {
    let cfg = match Config::discover(args.config.as_deref()) {
        Ok(cfg) => Arc::new(cfg),
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
    if let QueueAction::Migrate = args.action {
        return migrate(&cfg);
    }
    let queue = match Queue::open(cfg) {
        Ok(q) => q,
        Err(e) => return report(e),
    };
    let (action, id, select) = match args.action {
        QueueAction::List { json, select } => return done(list(&queue, json, &select.filter())),
        QueueAction::Show { id, json } => return done(show(&queue, &id, json)),
        QueueAction::Flush { id, select } => (Action::Flush, id, select),
        QueueAction::Delete { id, select } => (Action::Delete, id, select),
        QueueAction::Hold { id, select } => (Action::Hold, id, select),
        QueueAction::Release { id, select } => (Action::Release, id, select),
        QueueAction::Bounce { id, select } => (Action::Bounce, id, select),
        QueueAction::Migrate => return ExitCode::SUCCESS,
    };
    match id {
        Some(id) => {
            if !select.filter().is_empty() || select.all {
                eprintln!("tern queue: give either a queue id or filters (--domain, --status, --sender, --all), not both");
                return ExitCode::from(EX_USAGE);
            }
            done(queue.act(action, &id).map(|d| println!("{}", d.message)))
        }
        None => {
            let filter = select.filter();
            // Flush has always meant "everything due now" with no argument; the destructive
            // actions need the operator to say --all.
            if filter.is_empty() && !select.all && action != Action::Flush {
                eprintln!(
                    "tern queue: give a queue id, a filter (--domain, --status, --sender) or --all"
                );
                return ExitCode::from(EX_USAGE);
            }
            done(bulk(&queue, action, &filter))
        }
    }
}

fn done(r: Result<(), OpError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

/// A bulk action with a progress bar on a terminal (none when stderr is redirected).
fn bulk(queue: &Queue, action: Action, filter: &Filter) -> Result<(), OpError> {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = queue.bulk(action, filter, &|n, total| {
        bar.set_length(total as u64);
        bar.set_position(n as u64);
    })?;
    bar.finish_and_clear();
    let verb = match action {
        Action::Flush => "flushed",
        Action::Hold => "held",
        Action::Release => "released",
        Action::Bounce => "bounced",
        Action::Delete => "deleted",
    };
    let mut msg = if action == Action::Flush {
        let mut m = format!(
            "{} deferred {} in {} {} due now",
            report.recipients,
            plural(report.recipients, "recipient", "recipients"),
            report.done,
            plural(report.done, "entry", "entries")
        );
        if report.held > 0 {
            let _ = write!(
                m,
                "; {} held {} left alone",
                report.held,
                plural(report.held, "entry", "entries")
            );
        }
        m
    } else {
        let mut m = format!(
            "{} {} matched, {} {verb}",
            report.matched,
            plural(report.matched, "entry", "entries"),
            report.done
        );
        if report.unchanged > 0 {
            let _ = write!(m, ", {} unchanged", report.unchanged);
        }
        m
    };
    if report.busy > 0 {
        let _ = write!(
            msg,
            "; {} {} being delivered right now",
            report.busy,
            plural(report.busy, "entry", "entries")
        );
    }
    println!("{msg}");
    for e in &report.errors {
        eprintln!("tern queue: {e}");
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(OpError::Io(format!(
            "{} {} could not be changed",
            report.errors.len(),
            plural(report.errors.len(), "entry", "entries")
        )))
    }
}

// ------------------------------------------------------------------ list / show

fn list(queue: &Queue, json: bool, filter: &Filter) -> Result<(), OpError> {
    let (entries, problems) = queue.list(filter)?;
    for p in problems {
        eprintln!("tern queue: {p}");
    }
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

fn show(queue: &Queue, id: &str, json: bool) -> Result<(), OpError> {
    let env = queue.load(id)?;
    let headers = queue.headers(id)?;
    let now = SystemTime::now();
    if json {
        println!("{}", detail_json(&env, &headers, now));
        return Ok(());
    }
    let headers = String::from_utf8_lossy(&headers).into_owned();

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
    if env.requiretls {
        flags.push("REQUIRETLS");
    }
    if !flags.is_empty() {
        let _ = writeln!(out, "flags:      {}", flags.join(" "));
    }
    if !env.dsn.is_empty() {
        let mut dsn = Vec::new();
        match env.dsn.ret {
            Some(DsnRet::Full) => dsn.push("RET=FULL".to_string()),
            Some(DsnRet::Hdrs) => dsn.push("RET=HDRS".to_string()),
            None => {}
        }
        if let Some(envid) = &env.dsn.envid {
            dsn.push(format!("ENVID={envid}"));
        }
        let _ = writeln!(out, "dsn:        {}", dsn.join(" "));
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
    out.push_str("timeline:\n");
    for step in timeline(&env) {
        let _ = writeln!(out, "  {}  {}", time_format::format(step.at), step.text);
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
    if let Some(n) = r.dsn.notify {
        let _ = write!(s, " NOTIFY={n}");
    }
    if let Some(o) = &r.dsn.orcpt {
        let _ = write!(s, " ORCPT={o}");
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
            if let Some(p) = tern_ops::plain::plain_words(last_reply) {
                let _ = write!(s, " ({p})");
            }
        }
        RecipientStatus::Delivered { reply, .. } | RecipientStatus::Failed { reply, .. } => {
            let _ = write!(s, ": {reply}");
        }
    }
    s
}

// ------------------------------------------------------------------ formatting

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
}
