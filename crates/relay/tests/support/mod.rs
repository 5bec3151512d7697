//! Shared by the relay's integration tests: a scripted SMTP peer on `127.0.0.1:0` (the connector
//! dials TCP, so the client crate's in-memory scripted server cannot stand in), a permissive
//! auto-answering peer for the scheduler, and the spool, config and Maildir helpers.
//!
//! Every read of the peers is bounded by [`READ_TIMEOUT`] and every peer is stopped by
//! [`Peer::finish`], which also reports any step the client did not follow.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tern_config::Config;
use tern_dns::StaticResolver;
use tern_proto::{DataDecoder, DataProgress};
use tern_queue::{Envelope, FsStore, QueueId, QueueStore, Recipient, RecipientStatus};
use tern_relay::connector::Connector;
use tern_relay::notify::Notifier;
use tern_relay::round::Context;

/// The longest a peer waits for the client's next bytes before it gives up on the test.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a test polls the spool or a Maildir for an expected change.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// One step of a scripted SMTP conversation, from the peer's side.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send these bytes (write `\r\n` yourself).
    Send(&'static str),
    /// Read one command line; it must start with this prefix (case-sensitive).
    Expect(&'static str),
    /// Read dot-stuffed data up to the end marker; the decoded message is recorded.
    Data,
    /// Close the connection at once.
    Close,
}

/// What the client did on one connection.
#[derive(Debug, Default, Clone)]
pub struct Conn {
    /// Every command line read, without its CRLF, in order (including those after the script).
    pub lines: Vec<String>,
    /// Every message received with DATA, decoded (dot-stuffing removed, end marker dropped).
    pub messages: Vec<Vec<u8>>,
}

/// What a peer saw, one entry per accepted connection in accept order.
#[derive(Debug, Default)]
pub struct Recorded {
    pub connections: Vec<Conn>,
}

impl Recorded {
    /// Every message received, over all connections.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.connections
            .iter()
            .flat_map(|c| c.messages.iter().cloned())
            .collect()
    }
}

/// How a peer answers a connection.
#[derive(Clone)]
enum Mode {
    /// The next unused script, in accept order; a connection with no script left is recorded
    /// and closed without a banner.
    Scripted(Arc<std::sync::Mutex<std::vec::IntoIter<Vec<Step>>>>),
    /// A permissive MTA: 250 to everything, every message accepted and recorded.
    Accepting,
}

/// An SMTP peer on an ephemeral loopback port.
pub struct Peer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    /// Every message received so far, over all connections, for tests that watch a running
    /// scheduler.
    seen: Seen,
    acceptor: JoinHandle<Vec<JoinHandle<Result<Conn, String>>>>,
}

impl Peer {
    /// A peer that plays `scripts[n]` on its n-th connection. After a script's last step it
    /// keeps answering what a client sends between or after transactions (RSET and NOOP with
    /// 250, QUIT with 221) until the client closes, so a pooled connection can be parked.
    pub async fn scripted(scripts: Vec<Vec<Step>>) -> Peer {
        Self::start(Mode::Scripted(Arc::new(std::sync::Mutex::new(
            scripts.into_iter(),
        ))))
        .await
    }

    /// A peer that accepts every message on every connection.
    pub async fn accepting() -> Peer {
        Self::start(Mode::Accepting).await
    }

    async fn start(mode: Mode) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let seen = Seen::default();
        let seen_by_conns = seen.clone();
        let acceptor = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                // Biased towards accepting: a connection already made when the test stops the
                // peer is still recorded (a test that expects none must see it).
                tokio::select! {
                    biased;
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let mode = mode.clone();
                        let token = token.clone();
                        let seen = seen_by_conns.clone();
                        conns.push(tokio::spawn(serve(stream, mode, token, seen)));
                    }
                    _ = token.cancelled() => break,
                }
            }
            conns
        });
        Peer {
            addr,
            stop,
            seen,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The messages received so far, in the order their DATA ended.
    pub fn messages_so_far(&self) -> Vec<Vec<u8>> {
        self.seen.lock().clone()
    }

    /// Stops accepting, waits (bounded) for every connection to end and returns what was seen.
    /// Panics with the peer's complaint when the client broke a script.
    pub async fn finish(self) -> Recorded {
        self.stop.cancel();
        let conns = self.acceptor.await.unwrap();
        let mut rec = Recorded::default();
        for c in conns {
            match tokio::time::timeout(READ_TIMEOUT, c).await {
                Ok(Ok(Ok(conn))) => rec.connections.push(conn),
                Ok(Ok(Err(complaint))) => panic!("SMTP peer: {complaint}"),
                Ok(Err(e)) => panic!("SMTP peer task failed: {e}"),
                Err(_) => panic!("SMTP peer: a connection did not end in time"),
            }
        }
        rec
    }
}

/// The reading side of one connection: buffered lines and DATA, each read bounded.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    conn: Conn,
    seen: Seen,
}

/// The messages of every connection of one peer.
#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Seen {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Wire {
    async fn send(&mut self, s: &str) -> Result<(), String> {
        self.stream
            .write_all(s.as_bytes())
            .await
            .map_err(|e| format!("writing {s:?}: {e}"))
    }

    async fn fill(&mut self, waiting_for: &str) -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk)).await {
            Err(_) => Err(format!("timed out waiting for {waiting_for}")),
            Ok(Err(e)) => Err(format!("reading while waiting for {waiting_for}: {e}")),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// The next command line, or `None` at end of stream.
    async fn line(&mut self, waiting_for: &str) -> Result<Option<String>, String> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                self.conn.lines.push(line.clone());
                return Ok(Some(line));
            }
            if !self.fill(waiting_for).await? {
                return Ok(None);
            }
        }
    }

    /// One message up to `<CRLF>.<CRLF>`, decoded as tern's own server would.
    async fn data(&mut self) -> Result<(), String> {
        // Reject mode: a bare line end sent by tern would show up as a refused message.
        let mut dec = DataDecoder::new(64 << 20, tern_proto::BareLineEndings::Reject);
        let mut out = Vec::new();
        loop {
            let pending = std::mem::take(&mut self.buf);
            match dec.feed(&pending, &mut out) {
                DataProgress::Done { consumed } => {
                    self.buf = pending[consumed..].to_vec();
                    break;
                }
                DataProgress::NeedMore => {
                    if !self.fill("the end of DATA").await? {
                        return Err("client closed during DATA".into());
                    }
                }
            }
        }
        dec.verdict()
            .map_err(|e| format!("client sent a bad message: {e:?}"))?;
        self.seen.lock().push(out.clone());
        self.conn.messages.push(out);
        Ok(())
    }
}

async fn serve(
    stream: TcpStream,
    mode: Mode,
    stop: CancellationToken,
    seen: Seen,
) -> Result<Conn, String> {
    let mut wire = Wire {
        stream,
        buf: Vec::new(),
        conn: Conn::default(),
        seen,
    };
    match mode {
        Mode::Scripted(scripts) => {
            let next = scripts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .next();
            let Some(script) = next else {
                // Not expected by the test: recorded (an empty Conn) and closed.
                return Ok(wire.conn);
            };
            for step in script {
                match step {
                    Step::Send(s) => wire.send(s).await?,
                    Step::Expect(prefix) => match wire.line(prefix).await? {
                        Some(line) if line.starts_with(prefix) => {}
                        Some(line) => {
                            return Err(format!("expected {prefix:?}, client sent {line:?}"))
                        }
                        None => return Err(format!("client closed while {prefix:?} expected")),
                    },
                    Step::Data => wire.data().await?,
                    Step::Close => return Ok(wire.conn),
                }
            }
            idle(&mut wire, &stop).await?;
        }
        Mode::Accepting => {
            wire.send("220 peer.test ESMTP\r\n").await?;
            answer_everything(&mut wire, &stop).await?;
        }
    }
    Ok(wire.conn)
}

/// How long a connection still listens once the test has stopped the peer: long enough for a
/// QUIT sent in the background (the pool's sweep) to arrive.
const LINGER: Duration = Duration::from_secs(2);

/// After a script: what a parked (pooled) connection may see, until the client leaves.
async fn idle(wire: &mut Wire, stop: &CancellationToken) -> Result<(), String> {
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(LINGER).await;
    };
    tokio::pin!(grace);
    loop {
        let line = tokio::select! {
            l = wire.line("the client to leave") => l?,
            // The test is over and nobody closed the pooled connection: not the client's fault.
            _ = &mut grace => return Ok(()),
        };
        let Some(line) = line else { return Ok(()) };
        match verb(&line).as_str() {
            "RSET" | "NOOP" => wire.send("250 2.0.0 ok\r\n").await?,
            "QUIT" => {
                wire.send("221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => return Err(format!("after the script, client sent {line:?}")),
        }
    }
}

/// The permissive MTA's command loop.
async fn answer_everything(wire: &mut Wire, stop: &CancellationToken) -> Result<(), String> {
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(LINGER).await;
    };
    tokio::pin!(grace);
    loop {
        let line = tokio::select! {
            l = wire.line("a command") => l?,
            _ = &mut grace => return Ok(()),
        };
        let Some(line) = line else { return Ok(()) };
        match verb(&line).as_str() {
            "EHLO" | "HELO" => wire.send("250 peer.test\r\n").await?,
            "MAIL" | "RCPT" | "RSET" | "NOOP" => wire.send("250 2.0.0 ok\r\n").await?,
            "DATA" => {
                wire.send("354 go ahead\r\n").await?;
                wire.data().await?;
                wire.send("250 2.0.0 queued\r\n").await?;
            }
            "QUIT" => {
                wire.send("221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => wire.send("502 5.5.1 not here\r\n").await?,
        }
    }
}

fn verb(line: &str) -> String {
    line.split([' ', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The start of a conversation with a plain ESMTP peer (no PIPELINING, no STARTTLS, no SIZE):
/// the client then sends one command at a time and nothing but what the script expects.
pub const GREETING: [Step; 3] = [
    Step::Send("220 peer.test ESMTP\r\n"),
    Step::Expect("EHLO mx.tern.test"),
    Step::Send("250 peer.test\r\n"),
];

/// A config for `data_dir` that routes `remote.test` to `port` on loopback without TLS, with a
/// local domain `tern.test` whose user is alice; `extra` is appended (more tables).
pub fn config(data_dir: &Path, port: u16, extra: &str) -> Arc<Config> {
    let text = format!(
        "hostname = \"mx.tern.test\"\n\
         data_dir = {data_dir:?}\n\
         [local]\n\
         domains = [\"tern.test\"]\n\
         catch_all = false\n\
         [[users]]\n\
         name = \"alice@tern.test\"\n\
         [[users]]\n\
         name = \"postmaster@tern.test\"\n\
         [routes]\n\
         \"remote.test\" = {{ host = \"127.0.0.1\", port = {port}, tls = \"none\" }}\n\
         [outbound]\n\
         connect_timeout = \"5s\"\n\
         command_timeout = \"10s\"\n\
         data_timeout = \"10s\"\n\
         {extra}",
        data_dir = data_dir.display().to_string(),
    );
    Arc::new(Config::from_toml_str(&text, Path::new("test.toml")).unwrap())
}

/// What `round::run` needs, over `queue`; routes are static, so the resolver knows nothing.
pub fn context(cfg: &Arc<Config>, queue: Arc<dyn QueueStore>) -> Arc<Context> {
    Arc::new(Context {
        cfg: cfg.clone(),
        connector: Connector::new(cfg.clone(), Arc::new(StaticResolver::new())),
        notifier: Notifier::new(cfg.clone(), queue.clone()),
        domains: tern_relay::scheduler::domain_classes(cfg),
        queue,
    })
}

/// A message as tern's inbound side stores it: its own `Received:` first, then the client's
/// header and body. `extra_received` more `Received:` headers (earlier hops) follow tern's.
pub fn message(subject: &str, extra_received: usize) -> Vec<u8> {
    let mut m = tern_server::received::received_header(&tern_server::received::TraceInfo {
        helo: "client.tern.test",
        client_ip: "127.0.0.1".parse().unwrap(),
        hostname: "mx.tern.test",
        esmtp: true,
        tls: None,
        authenticated: false,
        smtputf8: false,
        id: "0123456789abcdef0123456789abcdef",
        single_recipient: None,
        date: "Tue, 1 Dec 2026 10:00:00 +0000",
    });
    for hop in 0..extra_received {
        m.push_str(&format!(
            "Received: from hop{hop}.test by hop{}.test; Tue, 1 Dec 2026 09:00:00 +0000\r\n",
            hop + 1
        ));
    }
    m.push_str(&format!(
        "From: <alice@tern.test>\r\nTo: <bob@remote.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@tern.test>\r\n\r\n\
         Hello.\r\n.A line that starts with a dot (stuffed on the wire).\r\n\r\nBye.\r\n"
    ));
    m.into_bytes()
}

/// An envelope as the inbound side makes it: every recipient pending.
pub fn envelope(sender: Option<&str>, recipients: &[&str], message: &[u8]) -> Envelope {
    Envelope {
        client_ip: Some("127.0.0.1".parse().unwrap()),
        helo: Some("client.tern.test".into()),
        ..Envelope::new(
            QueueId::generate(),
            sender.map(Into::into),
            recipients
                .iter()
                .map(|a| Recipient {
                    dsn: Default::default(),
                    address: (*a).to_string(),
                    original: None,
                    status: RecipientStatus::Pending,
                })
                .collect(),
            SystemTime::now(),
            message.len() as u64,
        )
    }
}

/// A recipient status deferred until `next_attempt` after one failed attempt. The one place
/// that builds a stored reply, so a change of its type is one edit here.
pub fn deferred_until(next_attempt: SystemTime) -> RecipientStatus {
    RecipientStatus::Deferred {
        attempts: 1,
        last_reply: tern_queue::StoredReply::from_legacy("451 4.7.1 greylisted, try again later"),
        next_attempt,
    }
}

/// Commits `env` with `message` into `queue` and returns its id.
pub fn commit(queue: &FsStore, env: &Envelope, message: &[u8]) -> QueueId {
    queue.commit(env, message).unwrap();
    env.id.clone()
}

/// The files in a Maildir's `new/`, read.
/// The messages in a mailbox's `new/`, with CRLF line ends.
pub fn maildir_new(data_dir: &Path, domain: &str, user: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = data_dir
        .join("mailboxes")
        .join(domain)
        .join(user)
        .join("new");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // Maildir files have LF line ends; give the tests the message with CRLF, as it travels.
    rd.map(|e| tern_delivery::maildir::lf_to_crlf(&std::fs::read(e.unwrap().path()).unwrap()))
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, for at most [`EVENT_TIMEOUT`].
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the entry is still in the queue.
pub fn queued(queue: &dyn QueueStore, id: &QueueId) -> bool {
    queue.list().unwrap().contains(id)
}

/// The parts of a DSN: (subject, delivery-status text unfolded, returned header text).
pub fn parse_dsn(bytes: &[u8]) -> (String, String, String) {
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    let parsed = MessageParser::default().parse(bytes).unwrap();
    let subject = parsed.subject().unwrap_or_default().to_string();
    let PartType::Multipart(ids) = &parsed.parts[0].body else {
        panic!("the DSN is not multipart: {:?}", parsed.parts[0].body);
    };
    let mut status = None;
    let mut headers = None;
    for &i in ids {
        let part = &parsed.parts[i as usize];
        let Some(ct) = part.content_type() else {
            continue;
        };
        let body = match &part.body {
            PartType::Text(t) | PartType::Html(t) => t.to_string(),
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                String::from_utf8_lossy(b).into_owned()
            }
            other => format!("{other:?}"),
        };
        match (ct.ctype(), ct.subtype()) {
            // Unfolded (RFC 5322 2.2.3): a long Diagnostic-Code may be folded anywhere.
            ("message", Some("delivery-status")) => {
                status = Some(body.replace("\r\n ", " ").replace("\r\n\t", "\t"))
            }
            ("text", Some("rfc822-headers")) => headers = Some(body),
            _ => {}
        }
    }
    (
        subject,
        status.expect("a message/delivery-status part"),
        headers.expect("a text/rfc822-headers part"),
    )
}
