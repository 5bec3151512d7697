//! The thin async loop around a [`Session`]: reads lines, batches pipelined replies
//! (RFC 2920: flush before waiting for more input), switches to DATA mode, enforces timeouts
//! (RFC 5321 4.5.3.2), and hands accepted messages to the [`MessageStore`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use tern_config::Config;
use tern_proto::{DataProgress, LineEvent, LineReader, Reply, MAX_COMMAND_LINE};

use crate::replies;
use crate::session::{Action, DataEnd, Session};
use crate::store::MessageStore;
use crate::tls::TlsProvider;

/// Any byte stream a session can run over: TCP, or TLS over TCP after STARTTLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// Command-mode reads are small (a command line is at most 512 octets), which keeps an idle
/// connection cheap; DATA gets a larger buffer only while a message streams in.
const COMMAND_READ_BUF: usize = 1024;
const DATA_READ_BUF: usize = 64 * 1024;

/// Once shutdown has begun, the last reply (421 4.3.2) and the close get this long each: a
/// client that does not read must not hold up the exit.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(2);
/// Closing the stream (TLS close_notify) after the last reply went out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a session ended, for the connection log line.
#[derive(Debug, Clone, Copy)]
enum End {
    Quit,
    ClientClosed,
    Timeout,
    Shutdown,
    TooManyErrors,
    IoError,
    TlsFailed,
}

pub struct Driver<S: MessageStore> {
    pub cfg: Arc<Config>,
    pub store: Arc<S>,
    pub tls: Option<Arc<TlsProvider>>,
    pub shutdown: CancellationToken,
}

struct Io {
    stream: BoxStream,
    reader: LineReader,
    out: Vec<u8>,
    buf: Vec<u8>,
    write_timeout: Duration,
    shutdown: CancellationToken,
}

enum ReadResult {
    Data(usize),
    Eof,
    Timeout,
    Shutdown,
    Error,
}

impl Io {
    fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Writes the queued replies. A client that stops reading must not pin the session: writes
    /// time out after `write_timeout`, are abandoned as soon as shutdown begins, and once it has
    /// begun get only [`SHUTDOWN_WRITE_GRACE`]. False if the replies did not all go out.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let shutdown = self.shutdown.clone();
        let shutting_down = shutdown.is_cancelled();
        let limit = if shutting_down {
            self.write_timeout.min(SHUTDOWN_WRITE_GRACE)
        } else {
            self.write_timeout
        };
        let write = tokio::time::timeout(limit, async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        });
        let ok = tokio::select! {
            r = write => matches!(r, Ok(Ok(()))),
            _ = shutdown.cancelled(), if !shutting_down => false,
        };
        self.out.clear();
        ok
    }

    /// Why the session ends after a failed flush.
    fn write_failed(&self) -> End {
        if self.shutdown.is_cancelled() {
            End::Shutdown
        } else {
            End::IoError
        }
    }

    async fn read(&mut self, deadline: Instant, shutdown: &CancellationToken) -> ReadResult {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)) => match r {
                Ok(Ok(0)) => ReadResult::Eof,
                Ok(Ok(n)) => ReadResult::Data(n),
                Ok(Err(_)) => ReadResult::Error,
                Err(_) => ReadResult::Timeout,
            },
            _ = shutdown.cancelled() => ReadResult::Shutdown,
        }
    }
}

struct Stats {
    accepted: u32,
    rejected: u32,
}

impl<S: MessageStore> Driver<S> {
    pub async fn run(&self, stream: BoxStream, mut session: Session) {
        let started = Instant::now();
        let peer = session.conn().peer;
        let mut io = Io {
            stream,
            reader: LineReader::new(MAX_COMMAND_LINE),
            out: Vec::new(),
            buf: vec![0; COMMAND_READ_BUF],
            write_timeout: self.cfg.limits.command_timeout,
            shutdown: self.shutdown.clone(),
        };
        let mut stats = Stats {
            accepted: 0,
            rejected: 0,
        };
        io.queue(&session.greeting());
        let end = if io.flush().await {
            self.command_loop(&mut io, &mut session, &mut stats).await
        } else {
            io.write_failed()
        };
        if let Some(txn) = session.transaction() {
            info!(queue_id = %txn.id, client_ip = %peer.ip(), outcome = "aborted", reason = ?end, "transaction aborted");
        }
        // A TLS close_notify is a write too, so a client that never reads could hold the
        // session here; the replies are already out, so the close is only best effort.
        let _ = tokio::time::timeout(CLOSE_GRACE, io.stream.shutdown()).await;
        info!(
            client = %peer,
            helo = session.helo_name().unwrap_or("-"),
            tls = session.conn().tls.as_deref().unwrap_or("-"),
            accepted = stats.accepted,
            rejected = stats.rejected,
            duration_ms = started.elapsed().as_millis() as u64,
            end = ?end,
            "connection closed"
        );
    }

    async fn command_loop(&self, io: &mut Io, session: &mut Session, stats: &mut Stats) -> End {
        // command_timeout is a deadline for each command line, from when the server starts
        // waiting for it until its LF, not an idle timer per read: otherwise a client trickling
        // a byte now and then (slowloris) would hold the session forever.
        let mut line_deadline: Option<Instant> = None;
        loop {
            // Answer every complete command already buffered (pipelining), then flush once.
            while let Some(event) = io.reader.next_line() {
                line_deadline = None;
                let action = match event {
                    LineEvent::Line(line) => session.handle_line(&line),
                    LineEvent::TooLong => session.line_too_long(),
                };
                let action = match action {
                    Action::Verify(creds) => {
                        let cfg = self.cfg.clone();
                        let delay = session.auth_delay();
                        let user =
                            tokio::task::spawn_blocking(move || crate::auth::verify(&cfg, &creds))
                                .await
                                .ok()
                                .flatten();
                        if user.is_none() {
                            // Growing delay per client IP: slows password guessing to a crawl.
                            // A shutdown does not wait for it.
                            if !io.flush().await {
                                return io.write_failed();
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = self.shutdown.cancelled() => {
                                    io.queue(&session.shutdown_reply());
                                    io.flush().await;
                                    return End::Shutdown;
                                }
                            }
                        }
                        session.auth_verified(user)
                    }
                    other => other,
                };
                match action {
                    Action::Reply(r) => io.queue(&r),
                    Action::Verify(_) => io.queue(&replies::local_error()),
                    Action::Close(r) => {
                        let end = if r.code() == 221 {
                            End::Quit
                        } else {
                            End::TooManyErrors
                        };
                        io.queue(&r);
                        io.flush().await;
                        return end;
                    }
                    Action::StartData(r) => {
                        io.queue(&r);
                        if !io.flush().await {
                            return io.write_failed();
                        }
                        if let Some(end) = self.data(io, session, stats).await {
                            return end;
                        }
                    }
                    Action::StartTls(r) => {
                        io.queue(&r);
                        if !io.flush().await {
                            return io.write_failed();
                        }
                        // RFC 3207 5 / CVE-2011-0411: whatever was pipelined after STARTTLS
                        // arrived in plaintext and must never be executed.
                        io.reader.clear();
                        if let Some(end) = self.start_tls(io, session).await {
                            return end;
                        }
                    }
                }
            }
            if !io.flush().await {
                return io.write_failed();
            }
            let deadline = *line_deadline
                .get_or_insert_with(|| Instant::now() + self.cfg.limits.command_timeout);
            match io.read(deadline, &self.shutdown).await {
                ReadResult::Data(n) => io.reader.push(&io.buf[..n]),
                ReadResult::Eof => return End::ClientClosed,
                ReadResult::Error => return End::IoError,
                ReadResult::Timeout => {
                    io.queue(&session.timeout_reply());
                    io.flush().await;
                    return End::Timeout;
                }
                ReadResult::Shutdown => {
                    io.queue(&session.shutdown_reply());
                    io.flush().await;
                    return End::Shutdown;
                }
            }
        }
    }

    /// Reads one message. Returns `Some(end)` if the connection must close.
    async fn data(&self, io: &mut Io, session: &mut Session, stats: &mut Stats) -> Option<End> {
        let mut decoder = crate::data::decoder(&self.cfg);
        let mut body = Vec::new();
        let mut progress = io.reader.drain_into(&mut decoder, &mut body);
        let mut data_buf = vec![0u8; DATA_READ_BUF];
        // data_timeout bounds the whole message, from the 354 to the final dot: a per-read timer
        // would let a client trickling a byte per interval hold the session (and up to
        // max_message_size of memory) indefinitely.
        let deadline = Instant::now() + self.cfg.limits.data_timeout;
        while progress == DataProgress::NeedMore {
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, io.stream.read(&mut data_buf)) => r,
                _ = self.shutdown.cancelled() => {
                    // Nothing of this message is stored: the client will retry it.
                    io.queue(&session.shutdown_reply());
                    io.flush().await;
                    return Some(End::Shutdown);
                }
            };
            match read {
                Ok(Ok(0)) => return Some(End::ClientClosed),
                Ok(Ok(n)) => {
                    progress = decoder.feed(&data_buf[..n], &mut body);
                    if let DataProgress::Done { consumed } = progress {
                        // Bytes after the end marker are the next pipelined commands.
                        io.reader.push(&data_buf[consumed..n]);
                    }
                }
                Ok(Err(_)) => return Some(End::IoError),
                Err(_) => {
                    io.queue(&session.timeout_reply());
                    io.flush().await;
                    return Some(End::Timeout);
                }
            }
        }
        drop(data_buf);
        let size = decoder.size();
        let verdict = decoder.verdict();
        let reply = match session.finish_data(verdict, &body) {
            DataEnd::Reject(reply) => {
                stats.rejected += 1;
                info!(client_ip = %session.conn().peer.ip(), size, outcome = "rejected", reply = %reply, "message rejected");
                reply
            }
            DataEnd::Store(accepted) => {
                let id = accepted.id.clone();
                let from = accepted.sender.clone().unwrap_or_default();
                let rcpts: Vec<String> = accepted
                    .recipients
                    .iter()
                    .map(|r| r.address.clone())
                    .collect();
                let helo = accepted.helo.clone();
                match self.store.store(accepted, body).await {
                    Ok(()) => {
                        stats.accepted += 1;
                        info!(queue_id = %id, client_ip = %session.conn().peer.ip(), helo = %helo,
                            from = %format!("<{from}>"), rcpts = %rcpts.join(","), size,
                            outcome = "accepted", "message accepted");
                        replies::queued(&id)
                    }
                    Err(e) => {
                        stats.rejected += 1;
                        warn!(queue_id = %id, client_ip = %session.conn().peer.ip(), error = %e,
                            outcome = "store-failed", "message not stored");
                        replies::local_error()
                    }
                }
            }
        };
        io.queue(&reply);
        None
    }

    async fn start_tls(&self, io: &mut Io, session: &mut Session) -> Option<End> {
        let Some(tls) = &self.tls else {
            return Some(End::TlsFailed);
        };
        let plain = std::mem::replace(
            &mut io.stream,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        // A client stalling the handshake must not hold up a shutdown either.
        let accepted = tokio::select! {
            r = tls.accept(plain, self.cfg.limits.command_timeout) => r,
            _ = self.shutdown.cancelled() => return Some(End::Shutdown),
        };
        match accepted {
            Ok((stream, description)) => {
                io.stream = stream;
                session.tls_established(description);
                None
            }
            Err(e) => {
                info!(client = %session.conn().peer, error = %e, "TLS handshake failed");
                Some(End::TlsFailed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::session::{Accepted, ConnInfo, ListenerKind};
    use crate::store::StoreError;
    use crate::tracker::ClientTracker;

    struct NullStore;

    impl MessageStore for NullStore {
        async fn store(&self, _: Accepted, _: Vec<u8>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn driver(toml: &str) -> (Arc<Driver<NullStore>>, CancellationToken) {
        let text =
            format!("hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n{toml}");
        let cfg = Arc::new(Config::from_toml_str(&text, Path::new("t.toml")).unwrap());
        let shutdown = CancellationToken::new();
        let d = Driver {
            cfg,
            store: Arc::new(NullStore),
            tls: None,
            shutdown: shutdown.clone(),
        };
        (Arc::new(d), shutdown)
    }

    fn conn(kind: ListenerKind) -> ConnInfo {
        ConnInfo {
            peer: "192.0.2.9:1000".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            kind,
            tls: None,
            tls_available: false,
        }
    }

    /// Reads until `want` has arrived (or 5 s pass).
    async fn read_until(c: &mut tokio::io::DuplexStream, want: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&got).contains(want) {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn shutdown_abandons_writes_to_a_client_that_never_reads() {
        // Default command_timeout (5 minutes): only the shutdown can end this session soon.
        let (d, shutdown) = driver("");
        let (mut client, server) = tokio::io::duplex(256);
        let session = Session::new(d.cfg.clone(), conn(ListenerKind::Smtp));
        let run = tokio::spawn({
            let d = d.clone();
            async move { d.run(Box::new(server), session).await }
        });
        // Replies pile up unread until the server blocks writing them.
        let flood = tokio::spawn(async move {
            let _ = client.write_all(&b"HELP\r\n".repeat(2000)).await;
            client
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!run.is_finished(), "the session should be blocked writing");
        let t0 = Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("session still running 5 s after shutdown")
            .unwrap();
        assert!(t0.elapsed() < SHUTDOWN_WRITE_GRACE + CLOSE_GRACE + Duration::from_secs(1));
        flood.abort();
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_the_auth_delay() {
        let (d, shutdown) = driver(
            "[submission]\nrequire_tls_for_auth = false\n[limits]\nmax_auth_failures = 100\n\
             [[users]]\nname = \"alice@tern.test\"\n\
             password = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"\n",
        );
        // Earlier failures from this IP: the next one is answered after 8 s.
        let tracker = Arc::new(ClientTracker::new());
        for _ in 0..8 {
            tracker.record_auth_failure("192.0.2.9".parse().unwrap());
        }
        let session =
            Session::new(d.cfg.clone(), conn(ListenerKind::Submission)).with_tracker(tracker);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let run = tokio::spawn({
            let d = d.clone();
            async move { d.run(Box::new(server), session).await }
        });
        read_until(&mut client, "220 ").await;
        client
            .write_all(b"EHLO c\r\nAUTH PLAIN AGFsaWNlQHRlcm4udGVzdAB3cm9uZw==\r\n")
            .await
            .unwrap();
        read_until(&mut client, "250 HELP").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        shutdown.cancel();
        let rest = read_until(&mut client, "421 ").await;
        assert!(
            rest.starts_with("421 4.3.2 mx.tern.test Service shutting down"),
            "{rest:?}"
        );
        tokio::time::timeout(Duration::from_secs(3), run)
            .await
            .expect("session waited out the AUTH delay after shutdown")
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
}
