//! Runs every SMTP transcript in testdata/transcripts (format: testdata/transcripts/README.md)
//! in-process against a `Connection`, with an in-memory store and no sockets. The same files run
//! against the real binary over TCP in tests/e2e/test_transcripts.py.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_config::Config;
use tern_server::connection::Effect;
use tern_server::{ConnInfo, Connection, ListenerKind, Session};

/// The config every transcript starts from; the same as tests/e2e's default server (minus the
/// listen address and data directory, which a connection does not use).
const BASE_CONFIG: &str = "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n";
/// The reply the runner's closing QUIT must get, and nothing else.
const QUIT_REPLY: &str = "221 2.0.0 mx.tern.test closing connection";

fn transcripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/transcripts")
}

#[derive(Debug)]
enum Step {
    /// Bytes the client sends; consecutive sends go out as one write (pipelining).
    Send(Vec<u8>),
    /// The next reply line, exactly.
    Exact(String),
    /// The next reply line, matching a pattern where `*` stands for any run of characters.
    Glob(String),
    /// The server has closed the connection and sent nothing more.
    Closed,
}

struct Transcript {
    name: String,
    config: String,
    /// Each step with its line number in the file.
    steps: Vec<(usize, Step)>,
}

fn parse(name: &str, text: &str) -> Result<Transcript, String> {
    let mut t = Transcript {
        name: name.to_string(),
        config: String::new(),
        steps: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let err = |why: &str| format!("{name}:{n}: {why}: {line:?}");
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(toml) = line.strip_prefix("config:") {
            if !t.steps.is_empty() {
                return Err(err("config lines must come before the exchange"));
            }
            t.config.push_str(toml.trim());
            t.config.push('\n');
            continue;
        }
        let step = if line == "C:" {
            Step::Send(b"\r\n".to_vec())
        } else if let Some(rest) = line.strip_prefix("C: ") {
            let mut bytes = rest.as_bytes().to_vec();
            bytes.extend_from_slice(b"\r\n");
            Step::Send(bytes)
        } else if let Some(rest) = line.strip_prefix("C~ ") {
            Step::Send(unescape(rest).map_err(|e| err(&e))?)
        } else if let Some(rest) = line.strip_prefix("S: ") {
            Step::Exact(rest.to_string())
        } else if let Some(rest) = line.strip_prefix("S~ ") {
            Step::Glob(rest.to_string())
        } else if line.trim_end() == "closed" {
            Step::Closed
        } else {
            return Err(err("not a transcript line"));
        };
        t.steps.push((n, step));
    }
    Ok(t)
}

/// `\r`, `\n`, `\t`, `\\` and `\xHH`; every other character stands for itself.
fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = u8::from_str_radix(&hex, 16).map_err(|_| format!("bad \\x{hex}"))?;
                out.push(byte);
            }
            other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn config(extra: &str) -> Result<Arc<Config>, String> {
    let mut base: toml::Table = BASE_CONFIG.parse().map_err(|e| format!("{e}"))?;
    let over: toml::Table = extra.parse().map_err(|e| format!("config: {e}"))?;
    merge(&mut base, over);
    let text = toml::to_string(&base).map_err(|e| format!("{e}"))?;
    Config::from_toml_str(&text, Path::new("transcript.toml"))
        .map(Arc::new)
        .map_err(|e| format!("config does not load: {e}\n{text}"))
}

/// A client on loopback (trusted by default, like the e2e client) talking to one Connection.
struct Client {
    conn: Connection,
    cfg: Arc<Config>,
    /// Reply lines received and not yet matched.
    lines: VecDeque<String>,
    partial: Vec<u8>,
    closed: bool,
    /// Bytes sent since the last read: they reach the server as one write.
    unsent: Vec<u8>,
    /// Feed the server one byte at a time instead of one write at a time.
    bytewise: bool,
    /// The exchange so far, for the failure report.
    log: Vec<String>,
}

impl Client {
    fn new(cfg: Arc<Config>, bytewise: bool) -> Self {
        let session = Session::new(
            cfg.clone(),
            ConnInfo {
                peer: "127.0.0.1:40000".parse().expect("literal address"),
                local: "127.0.0.1:25".parse().expect("literal address"),
                kind: ListenerKind::Smtp,
                tls: None,
                tls_available: false,
            },
        );
        let conn = Connection::new(session);
        let mut c = Client {
            cfg,
            lines: VecDeque::new(),
            partial: Vec::new(),
            closed: false,
            unsent: Vec::new(),
            bytewise,
            log: Vec::new(),
            conn,
        };
        let greeting = c.conn.greeting();
        c.received(&greeting);
        c
    }

    fn received(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(at) = self.partial.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.partial.drain(..at + 2).collect();
            let text = String::from_utf8_lossy(&line[..at]).into_owned();
            self.lines.push_back(text);
        }
    }

    /// Sends what is unsent and runs the connection until it waits for input or closes.
    fn exchange(&mut self) -> Result<(), String> {
        let bytes = std::mem::take(&mut self.unsent);
        if self.bytewise {
            for byte in bytes.chunks(1) {
                self.feed(byte)?;
            }
        } else if !bytes.is_empty() {
            self.feed(&bytes)?;
        }
        self.run_effects()
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        if !self.closed {
            self.conn.feed(bytes);
        }
        self.run_effects()
    }

    fn run_effects(&mut self) -> Result<(), String> {
        while let Some(effect) = self.conn.poll() {
            match effect {
                Effect::Write(bytes) => self.received(&bytes),
                Effect::Close(bytes, _) => {
                    self.received(&bytes);
                    self.closed = true;
                }
                Effect::Verify(creds, ticket) => {
                    let user = tern_server::auth::verify(&self.cfg, &creds);
                    self.conn.auth_verified(ticket, user);
                }
                Effect::Store(_, _, ticket) => self.conn.stored(ticket, Ok(())),
                // Transcripts run without a resolver.
                Effect::CheckSpf(_, ticket) => self.conn.spf_checked(ticket, None),
                // Transcripts configure no milter that answers; one that lets all through.
                Effect::Filter(_, ticket) => self
                    .conn
                    .filtered(ticket, tern_server::session::FilterVerdict::Continue),
                // Messages in transcripts are small; a spooled one needs no file here.
                Effect::Spool(_) => {}
                Effect::StartTls(_) => return Err("STARTTLS: transcripts run without TLS".into()),
            }
        }
        Ok(())
    }

    fn next_line(&mut self) -> Result<String, String> {
        self.exchange()?;
        self.lines.pop_front().ok_or_else(|| {
            if self.closed {
                "(connection closed)".to_string()
            } else {
                "(nothing: the server waits for input)".to_string()
            }
        })
    }
}

fn report(t: &Transcript, line: usize, expected: &str, got: &str, log: &[String]) -> String {
    format!(
        "{}:{line}: transcript mismatch\n  expected  {expected}\n  got       {got}\n\
         exchange up to here:\n    {}",
        t.name,
        log.join("\n    ")
    )
}

fn show_send(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.split_inclusive("\r\n")
        .map(|l| match l.strip_suffix("\r\n") {
            Some(l) if !l.contains(['\r', '\n']) => format!("C: {l}"),
            _ => format!("C~ {}", l.escape_debug()),
        })
        .collect()
}

fn run(t: &Transcript, bytewise: bool) -> Result<(), String> {
    let cfg = config(&t.config).map_err(|e| format!("{}: {e}", t.name))?;
    let mut c = Client::new(cfg, bytewise);
    for (line, step) in &t.steps {
        match step {
            Step::Send(bytes) => {
                c.log.extend(show_send(bytes));
                c.unsent.extend_from_slice(bytes);
            }
            Step::Exact(want) | Step::Glob(want) => {
                let got = c.next_line()?;
                let ok = match step {
                    Step::Exact(_) => &got == want,
                    _ => glob(want, &got),
                };
                let shown = if matches!(step, Step::Exact(_)) {
                    format!("S: {want}")
                } else {
                    format!("S~ {want}")
                };
                if !ok {
                    return Err(report(t, *line, &shown, &format!("S: {got}"), &c.log));
                }
                c.log.push(format!("S: {got}"));
            }
            Step::Closed => {
                c.exchange()?;
                if let Some(extra) = c.lines.pop_front() {
                    return Err(report(t, *line, "closed", &format!("S: {extra}"), &c.log));
                }
                if !c.closed {
                    return Err(report(t, *line, "closed", "(still open)", &c.log));
                }
                return Ok(());
            }
        }
    }
    // The transcript ends in command mode: a QUIT must get its 221 and nothing else, which
    // shows no reply was left unmatched.
    let end = t.steps.last().map_or(0, |(n, _)| *n);
    c.exchange()?;
    if let Some(extra) = c.lines.pop_front() {
        return Err(report(
            t,
            end,
            "(end: no more replies)",
            &format!("S: {extra}"),
            &c.log,
        ));
    }
    c.unsent.extend_from_slice(b"QUIT\r\n");
    c.log.push("C: QUIT   (added by the runner)".into());
    let got = c.next_line()?;
    if got != QUIT_REPLY || !c.lines.is_empty() || !c.closed {
        return Err(report(
            t,
            end,
            &format!("S: {QUIT_REPLY}, then closed"),
            &format!("S: {got} {:?}", c.lines),
            &c.log,
        ));
    }
    Ok(())
}

fn transcripts() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(transcripts_dir())
        .expect("testdata/transcripts")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tr"))
        .collect();
    files.sort();
    files
}

fn run_all(bytewise: bool) {
    let files = transcripts();
    assert!(files.len() >= 30, "only {} transcripts", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let text = std::fs::read_to_string(f).expect("transcript readable");
        if let Err(e) = parse(&name, &text).and_then(|t| run(&t, bytewise)) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} transcripts failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_transcript_passes() {
    run_all(false);
}

/// The same conversations with every byte its own read: framing, the DATA end marker and the
/// hand-back of pipelined bytes must not depend on where reads split the stream.
#[test]
fn every_transcript_passes_fed_bytewise() {
    run_all(true);
}

/// The runner is able to fail: a wrong reply, a missing reply, an extra reply, a close that does
/// not happen are each reported, with the line and what arrived.
#[test]
fn the_runner_reports_mismatches() {
    let cases = [
        (
            "S: 220 mx.tern.test ESMTP tern\nC: NOOP\nS: 250 2.0.0 NOT OK\n",
            "S: 250 2.0.0 OK",
        ),
        (
            "S: 220 mx.tern.test ESMTP tern\nS: 250 2.0.0 OK\n",
            "waits for input",
        ),
        (
            "S: 220 mx.tern.test ESMTP tern\nC: NOOP\nC: NOOP\nS: 250 2.0.0 OK\n",
            "no more replies",
        ),
        (
            "S: 220 mx.tern.test ESMTP tern\nC: NOOP\nS: 250 2.0.0 OK\nclosed\n",
            "still open",
        ),
        ("S~ 220 *SMTP\n", "ESMTP tern"),
    ];
    for (text, want) in cases {
        let t = parse("self-test.tr", text).unwrap();
        let err = run(&t, false).expect_err(text);
        assert!(err.contains(want), "{text:?}: {err}");
    }
    assert!(glob(
        "250 2.0.0 OK: queued as *",
        "250 2.0.0 OK: queued as 0123"
    ));
    assert!(glob("a*b*c", "abc") && !glob("a*b*c", "acb") && !glob("ab*ba", "aba"));
    assert_eq!(unescape(r"a\r\n\x2e\\").unwrap(), b"a\r\n.\\");
}
