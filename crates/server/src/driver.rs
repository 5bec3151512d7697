//! The thin async loop around a [`Connection`]: reads with the deadline the connection names
//! (RFC 5321 4.5.3.2; shorter in stress mode, and never past `limits.max_session_time`), feeds
//! it, writes what it answers, and carries out its effects: the TLS handshake, the password check
//! (on [`PasswordChecks`], with the failure delay) and the hand-off to the [`MessageStore`].
//! Framing, DATA, pipelining and every reply live in the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tern_metrics as names;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use tern_auth::Verifier;
use tern_config::Config;
use tern_delivery::{Accepted, NotStored, Stored};

use tern_queue::{MessageBody, SpoolFile};

use crate::checks::PasswordChecks;
use crate::connection::{
    CloseReason, Connection, DataBody, Deadline, Effect, SpoolOp, Wants, SPILL_THRESHOLD,
};
use crate::filter::{FilterChain, MessageVerdict};
use crate::memory::{DataMemory, Reservation};
use crate::session::FilterVerdict;
use crate::session::Session;
use crate::store::{MessageStore, StoreError};
use crate::tls::TlsProvider;

pub use crate::stream::{BoxStream, Stream};

/// Command-mode reads are small (a command line is at most 512 octets, RFC 5321 4.5.3.1.4;
/// a longer one, such as AUTH with a large initial response, just takes more reads), which
/// keeps an idle connection cheap: 10,000 of them hold 10,000 of these buffers. DATA gets a
/// larger buffer only while a message streams in.
const COMMAND_READ_BUF: usize = 512;
const DATA_READ_BUF: usize = 64 * 1024;
/// The read buffer of a session that found the DATA memory budget spent.
const LEAN_DATA_READ_BUF: usize = 8 * 1024;
/// A session's share of `limits.max_data_memory` while it receives a message: its read buffer
/// and the decoded bytes it keeps before spilling (at most the threshold plus one read).
const DATA_RESERVATION: u64 = (DATA_READ_BUF + SPILL_THRESHOLD + DATA_READ_BUF) as u64;

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
    /// A content filter refused the connection before the greeting.
    Filtered,
}

impl From<CloseReason> for End {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::Quit => End::Quit,
            CloseReason::Refused => End::TooManyErrors,
            CloseReason::Timeout => End::Timeout,
            CloseReason::Shutdown => End::Shutdown,
        }
    }
}

pub struct Driver<S: MessageStore> {
    pub cfg: Arc<Config>,
    pub store: Arc<S>,
    pub tls: Option<Arc<TlsProvider>>,
    pub shutdown: CancellationToken,
    /// Where AUTH password checks run (never on the blocking pool the store uses).
    pub checks: Arc<PasswordChecks>,
    /// `limits.max_data_memory`, shared by every session.
    pub memory: Arc<DataMemory>,
    /// True while the server is in stress mode (see [`crate::stress`]).
    pub stress: watch::Receiver<bool>,
    /// Inbound verification: SPF at MAIL FROM ([`Effect::CheckSpf`]) runs on it; the store
    /// shares it for the end-of-DATA checks. `None` checks nothing.
    pub verifier: Option<Arc<Verifier>>,
}

struct Io {
    stream: BoxStream,
    buf: Vec<u8>,
    write_timeout: Duration,
    shutdown: CancellationToken,
}

enum ReadResult {
    Data(usize),
    Eof,
    Timeout,
    Shutdown,
    /// Stress mode started or ended: the deadline must be computed again.
    StressChanged,
    /// The listener is gone, so the stress flag can no longer change.
    StressGone,
    Error,
}

impl Io {
    /// Writes replies. A client that stops reading must not pin the session: writes time out
    /// after `write_timeout`, are abandoned as soon as shutdown begins, and once it has begun
    /// get only [`SHUTDOWN_WRITE_GRACE`]. False if the bytes did not all go out.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
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
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        });
        tokio::select! {
            r = write => matches!(r, Ok(Ok(()))),
            _ = shutdown.cancelled(), if !shutting_down => false,
        }
    }

    /// Why the session ends after a failed write.
    fn write_failed(&self) -> End {
        if self.shutdown.is_cancelled() {
            End::Shutdown
        } else {
            End::IoError
        }
    }

    /// One read into a buffer sized for what is expected: small for command lines, large
    /// while a message streams in.
    async fn read(
        &mut self,
        size: usize,
        deadline: Instant,
        stress: Option<&mut watch::Receiver<bool>>,
    ) -> ReadResult {
        if self.buf.len() != size {
            self.buf = vec![0; size];
        }
        let stress_changed = async {
            match stress {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Reads are cancel-safe: nothing is lost when the stress flag wins.
            alive = stress_changed => if alive {
                ReadResult::StressChanged
            } else {
                ReadResult::StressGone
            },
            r = tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)) => match r {
                Ok(Ok(0)) => ReadResult::Eof,
                Ok(Ok(n)) => ReadResult::Data(n),
                Ok(Err(_)) => ReadResult::Error,
                Err(_) => ReadResult::Timeout,
            },
            _ = self.shutdown.cancelled() => ReadResult::Shutdown,
        }
    }
}

impl<S: MessageStore> Driver<S> {
    /// Serves one connection to its end. The session state goes to the heap before the future
    /// is built: an async fn keeps its by-value arguments in the future next to what it moves
    /// them into, and this future lives for every idle connection (10,000 of them must fit in
    /// 60 MB, docs/performance.md).
    pub fn run(
        &self,
        stream: BoxStream,
        session: Session,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.run_boxed(stream, Box::new(Connection::new(session)))
    }

    async fn run_boxed(&self, stream: BoxStream, mut conn: Box<Connection>) {
        let started = Instant::now();
        let peer = conn.session().conn().peer;
        let session_end = started + self.cfg.limits.max_session_time;
        let mut io = Io {
            stream,
            buf: Vec::new(),
            write_timeout: self.cfg.limits.command_timeout,
            shutdown: self.shutdown.clone(),
        };
        // The milters see the client before it is greeted; one may refuse it (554 or 421).
        // Boxed: most sessions have no filters, and this future lives for every idle connection.
        let mut filters = FilterChain::for_session(&self.cfg, conn.session().conn()).map(Box::new);
        let greeting = match &mut filters {
            Some(chain) => tokio::select! {
                r = Box::pin(chain.connect()) => r.map_or_else(|r| Err(r.to_bytes()), |()| Ok(conn.greeting())),
                _ = self.shutdown.cancelled() => Err(conn.session().shutdown_reply().to_bytes()),
            },
            None => Ok(conn.greeting()),
        };
        let end = match greeting {
            Ok(greeting) if io.write(&greeting).await => {
                self.serve(&mut io, &mut conn, session_end, &mut filters)
                    .await
            }
            Ok(_) => io.write_failed(),
            Err(refusal) => {
                io.write(&refusal).await;
                End::Filtered
            }
        };
        if let Some(chain) = filters {
            Box::pin(chain.quit()).await;
        }
        let session = conn.session();
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
            accepted = conn.accepted(),
            rejected = conn.rejected(),
            duration_ms = started.elapsed().as_millis() as u64,
            end = ?end,
            "connection closed"
        );
    }

    /// Runs the connection until it closes: effects first, then a read when it waits for input.
    /// The futures of the rarer effects (STARTTLS, SPF, filters, spooling, the store) are boxed:
    /// inline, each would widen the state that every idle connection keeps while it waits for
    /// a command (docs/performance.md, "Idle connections, before and after").
    async fn serve(
        &self,
        io: &mut Io,
        conn: &mut Connection,
        session_end: Instant,
        filters: &mut Option<Box<FilterChain>>,
    ) -> End {
        // The wait in progress and when it began: the deadline counts from the start of a wait
        // (RFC 5321 4.5.3.2), not per read, so a client trickling bytes cannot stretch it.
        let mut wait: Option<(Wants, Instant)> = None;
        let mut stress = Some(self.stress.clone());
        // The spool file of the message being received, once it outgrew memory.
        let mut spool = Spool::new();
        // This session's share of the DATA memory budget while it receives a message.
        let mut memory: Option<Option<Reservation>> = None;
        loop {
            while let Some(effect) = conn.poll() {
                match effect {
                    Effect::Write(bytes) => {
                        if !io.write(&bytes).await {
                            return io.write_failed();
                        }
                    }
                    Effect::Close(bytes, reason) => {
                        io.write(&bytes).await;
                        return reason.into();
                    }
                    Effect::StartTls(ticket) => {
                        match Box::pin(self.start_tls(io, conn.session().conn().peer)).await {
                            Ok(description) => conn.tls_established(ticket, description),
                            Err(end) => return end,
                        }
                    }
                    Effect::Verify(creds, ticket) => {
                        let delay = conn.session().auth_delay();
                        let Some(check) = self.checks.start(self.cfg.clone(), creds) else {
                            conn.auth_busy(ticket);
                            continue;
                        };
                        // A shutdown waits neither for the hash (it finishes unobserved on its
                        // own thread) nor for the failure delay.
                        let user = tokio::select! {
                            r = check => r.ok().flatten(),
                            _ = self.shutdown.cancelled() => {
                                conn.shutdown();
                                continue;
                            }
                        };
                        if user.is_none() {
                            metrics::counter!(names::AUTH_FAILURES).increment(1);
                            // Growing delay per client IP: slows password guessing to a crawl.
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = self.shutdown.cancelled() => {
                                    conn.shutdown();
                                    continue;
                                }
                            }
                        }
                        conn.auth_verified(ticket, user);
                    }
                    Effect::CheckSpf(query, ticket) => {
                        let outcome = match &self.verifier {
                            // DNS lookups, bounded by the verifier's deadline; a shutdown does
                            // not wait for them.
                            Some(v) => tokio::select! {
                                o = Box::pin(v.check_spf_mail(query.ip, &query.helo, &query.mail_from)) => o,
                                _ = self.shutdown.cancelled() => {
                                    conn.shutdown();
                                    continue;
                                }
                            },
                            None => None,
                        };
                        conn.spf_checked(ticket, outcome);
                    }
                    Effect::Filter(step, ticket) => {
                        let verdict = match filters.as_deref_mut() {
                            Some(chain) => tokio::select! {
                                v = Box::pin(chain.step(&step, conn.session())) => v,
                                _ = self.shutdown.cancelled() => {
                                    conn.shutdown();
                                    continue;
                                }
                            },
                            None => FilterVerdict::Continue,
                        };
                        conn.filtered(ticket, verdict);
                    }
                    Effect::Spool(SpoolOp::Append(bytes)) => {
                        if let Err(e) = Box::pin(spool.append(self.store.clone(), bytes)).await {
                            warn!(client = %conn.session().conn().peer, error = %e,
                                "spooling a message failed");
                            conn.spool_failed(e);
                        }
                    }
                    Effect::Spool(SpoolOp::Discard) => spool.discard(),
                    Effect::Store(accepted, body, ticket) => {
                        let body = match body {
                            DataBody::Memory(bytes) => MessageBody::Memory(bytes),
                            DataBody::Spooled { tail } => {
                                match Box::pin(spool.finish(self.store.clone(), tail)).await {
                                    Ok(spooled) => MessageBody::Spooled(spooled),
                                    Err(e) => {
                                        warn!(queue_id = %accepted.id, error = %e,
                                            outcome = "store-failed", "message not stored");
                                        conn.stored(ticket, Err(e.into()));
                                        continue;
                                    }
                                }
                            }
                        };
                        let id = accepted.id.clone();
                        let from = accepted.sender.clone().unwrap_or_default();
                        let rcpts: Vec<String> = accepted
                            .recipients
                            .iter()
                            .map(|r| r.address.clone())
                            .collect();
                        let helo = accepted.helo.clone();
                        let size = body.len();
                        let client_ip = accepted.client_ip;
                        let listener = conn.session().conn().kind.name();
                        // The final dot has arrived (the body is complete): from here to the
                        // reply is what the client waits for.
                        let dot = Instant::now();
                        let result =
                            Box::pin(self.store_message(*accepted, body, filters.as_deref_mut()))
                                .await;
                        let outcome = if result.is_ok() {
                            "accepted"
                        } else {
                            "rejected"
                        };
                        metrics::counter!(names::MESSAGES_RECEIVED, "listener" => listener,
                            "outcome" => outcome)
                        .increment(1);
                        if result.is_ok() {
                            metrics::histogram!(names::MESSAGE_SIZE).record(size as f64);
                            metrics::histogram!(names::ACCEPT_LATENCY)
                                .record(names::secs(dot.elapsed()));
                        }
                        match &result {
                            Ok(Stored { auth, quarantined }) => {
                                // `-` for mail not verified (ours, or not port 25); `off` for a
                                // check switched off in [checks].
                                let (spf, dkim, dmarc, arc) = auth
                                    .map_or(("-", "-", "-", "-"), |f| {
                                        (f.spf, f.dkim, f.dmarc, f.arc)
                                    });
                                info!(queue_id = %id, client_ip = %client_ip, helo = %helo,
                                    from = %format!("<{from}>"), rcpts = %rcpts.join(","), size,
                                    spf = %spf, dkim = %dkim, dmarc = %dmarc, arc = %arc,
                                    quarantined = *quarantined,
                                    outcome = "accepted", "message accepted")
                            }
                            Err(NotStored::Refused(r)) => info!(queue_id = %id,
                                client_ip = %client_ip, helo = %helo, from = %format!("<{from}>"),
                                size, spf = %r.auth.spf, dkim = %r.auth.dkim,
                                dmarc = %r.auth.dmarc, arc = %r.auth.arc, reply = %r.reply,
                                outcome = "rejected",
                                "message refused by verification"),
                            Err(NotStored::Filtered(r)) => info!(queue_id = %id,
                                client_ip = %client_ip, helo = %helo, from = %format!("<{from}>"),
                                size, reply = %r, outcome = "rejected",
                                "message refused by a content filter"),
                            Err(e) => warn!(queue_id = %id, client_ip = %client_ip, error = %e,
                                outcome = "store-failed", "message not stored"),
                        }
                        conn.stored(ticket, result.map(|_| ()));
                    }
                }
            }
            let Some(wants) = conn.wants() else {
                // poll() only stops without a wait once the connection is closed, and the
                // Close effect returned above.
                return End::IoError;
            };
            let began = match wait {
                Some((w, began)) if w == wants => began,
                _ => {
                    let now = Instant::now();
                    wait = Some((wants, now));
                    now
                }
            };
            let stressed = stress.as_ref().is_some_and(|rx| *rx.borrow());
            let limits = &self.cfg.limits;
            let limit = match (wants.deadline(), stressed) {
                (Deadline::Command, false) => limits.command_timeout,
                (Deadline::Data, false) => limits.data_timeout,
                // Stress mode never lengthens a wait.
                (Deadline::Command, true) => {
                    limits.stress_command_timeout.min(limits.command_timeout)
                }
                (Deadline::Data, true) => limits.stress_data_timeout.min(limits.data_timeout),
            };
            let deadline = (began + limit).min(session_end);
            let size = match wants.deadline() {
                Deadline::Command => {
                    memory = None;
                    COMMAND_READ_BUF
                }
                Deadline::Data => {
                    // Taken once per message; a session that gets no share streams lean.
                    let share =
                        memory.get_or_insert_with(|| self.memory.try_reserve(DATA_RESERVATION));
                    if share.is_some() {
                        conn.set_spill_threshold(SPILL_THRESHOLD);
                        DATA_READ_BUF
                    } else {
                        conn.set_spill_threshold(0);
                        LEAN_DATA_READ_BUF
                    }
                }
            };
            match io.read(size, deadline, stress.as_mut()).await {
                ReadResult::Data(n) => conn.feed(&io.buf[..n]),
                ReadResult::Eof => return End::ClientClosed,
                ReadResult::Error => return End::IoError,
                ReadResult::Timeout if deadline >= session_end => conn.session_expired(),
                ReadResult::Timeout => conn.timeout(),
                ReadResult::Shutdown => conn.shutdown(),
                ReadResult::StressChanged => {}
                ReadResult::StressGone => stress = None,
            }
        }
    }

    /// Verification, the content filters, then the durable commit: the 250 waits for all
    /// three, so it always stands for the message as the filters left it.
    async fn store_message(
        &self,
        mut accepted: Accepted,
        body: MessageBody,
        filters: Option<&mut FilterChain>,
    ) -> Result<Stored, NotStored> {
        let Some(chain) = filters else {
            return self.store.store(accepted, body).await;
        };
        let mut verified = self.store.verify(&mut accepted, body).await?;
        let store = self.store.clone();
        let spool = move || store.spool();
        match chain.message(&mut accepted, &mut verified, spool).await? {
            MessageVerdict::Store => self.store.commit(accepted, verified).await,
            MessageVerdict::Reject(reply) => Err(NotStored::Filtered(reply)),
            MessageVerdict::Discard => {
                info!(queue_id = %accepted.id, outcome = "discarded",
                    "message discarded by a content filter");
                Ok(verified.stored)
            }
        }
    }

    /// The TLS handshake after STARTTLS; the description of the negotiated TLS on success.
    async fn start_tls(&self, io: &mut Io, peer: SocketAddr) -> Result<String, End> {
        let Some(tls) = &self.tls else {
            return Err(End::TlsFailed);
        };
        let plain = std::mem::replace(
            &mut io.stream,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        // A client stalling the handshake must not hold up a shutdown either.
        let accepted = tokio::select! {
            r = tls.accept(plain, self.cfg.limits.command_timeout) => r,
            _ = self.shutdown.cancelled() => return Err(End::Shutdown),
        };
        match accepted {
            Ok((stream, description)) => {
                io.stream = stream;
                metrics::counter!(names::TLS_SESSIONS, "direction" => "inbound",
                    "version" => names::tls_version(&description))
                .increment(1);
                Ok(description)
            }
            Err(e) => {
                info!(client = %peer, error = %e, "TLS handshake failed");
                Err(End::TlsFailed)
            }
        }
    }
}

/// The spool file of the message a session is receiving. Its writes run on the blocking pool
/// (the store's, never the password checks'), one piece at a time, so a session holds at most
/// one piece in memory and a slow disk slows only this client.
struct Spool(SpoolState);

enum SpoolState {
    /// No file for the message being received (it is small so far, or there is none).
    None,
    /// A piece is being written; the connection reads on meanwhile, so the network and the
    /// disk overlap (with one write at a time, a single session's large message took twice
    /// as long). At most one piece is in flight.
    Writing(tokio::task::JoinHandle<Result<SpoolFile, StoreError>>),
}

impl Spool {
    fn new() -> Self {
        Spool(SpoolState::None)
    }

    /// Waits for the write in flight: the file, or `None` when this message has none yet.
    async fn settle(&mut self) -> Result<Option<SpoolFile>, StoreError> {
        match std::mem::replace(&mut self.0, SpoolState::None) {
            SpoolState::None => Ok(None),
            SpoolState::Writing(write) => write
                .await
                .map_err(|e| StoreError::new(format!("spool task failed: {e}")))?
                .map(Some),
        }
    }

    /// Starts appending `bytes` (creating the file on the first piece) once the previous piece
    /// is written. An error, this piece's or the previous one's, leaves no file.
    async fn append<S: MessageStore>(
        &mut self,
        store: Arc<S>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let file = self.settle().await?;
        self.0 = SpoolState::Writing(tokio::task::spawn_blocking(move || {
            write_piece(store.as_ref(), file, &bytes)
        }));
        Ok(())
    }

    /// The last bytes: the body is ready to store (the queue commit syncs it if it keeps it).
    async fn finish<S: MessageStore>(
        &mut self,
        store: Arc<S>,
        tail: Vec<u8>,
    ) -> Result<tern_queue::Spooled, StoreError> {
        let file = self.settle().await?;
        tokio::task::spawn_blocking(move || {
            write_piece(store.as_ref(), file, &tail)?
                .finish()
                .map_err(|e| StoreError::from_io("finishing the spooled message", &e))
        })
        .await
        .map_err(|e| StoreError::new(format!("spool task failed: {e}")))?
    }

    /// Removes the file (off the async threads: unlinking a large file takes a while), once a
    /// write in flight is over.
    fn discard(&mut self) {
        match std::mem::replace(&mut self.0, SpoolState::None) {
            SpoolState::None => {}
            SpoolState::Writing(write) => {
                tokio::spawn(async move {
                    if let Ok(Ok(file)) = write.await {
                        tokio::task::spawn_blocking(move || drop(file));
                    }
                });
            }
        }
    }
}

/// Appends one piece to the message's spool file, creating it first if there is none.
fn write_piece<S: MessageStore>(
    store: &S,
    file: Option<SpoolFile>,
    bytes: &[u8],
) -> Result<SpoolFile, StoreError> {
    let mut file = match file {
        Some(f) => f,
        None => store.spool()?,
    };
    if !bytes.is_empty() {
        file.append(bytes)
            .map_err(|e| StoreError::from_io("spooling the message", &e))?;
    }
    Ok(file)
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::session::{Accepted, ConnInfo, ListenerKind};
    use crate::tracker::ClientTracker;
    use tern_delivery::intake::Verified;

    struct NullStore;

    impl MessageStore for NullStore {
        async fn verify(&self, _: &mut Accepted, body: MessageBody) -> Result<Verified, NotStored> {
            Ok(Verified::unchecked(body))
        }

        async fn commit(&self, _: Accepted, _: Verified) -> Result<Stored, NotStored> {
            Ok(Stored::default())
        }

        fn spool(&self) -> Result<SpoolFile, StoreError> {
            Err(StoreError::new("no spool in this test"))
        }
    }

    /// A disk that is always full.
    struct FullStore;

    impl MessageStore for FullStore {
        async fn verify(&self, _: &mut Accepted, body: MessageBody) -> Result<Verified, NotStored> {
            Ok(Verified::unchecked(body))
        }

        async fn commit(&self, _: Accepted, _: Verified) -> Result<Stored, NotStored> {
            Err(StoreError::StorageFull("No space left on device".into()).into())
        }

        fn spool(&self) -> Result<SpoolFile, StoreError> {
            Err(StoreError::StorageFull("No space left on device".into()))
        }
    }

    fn driver(toml: &str) -> (Arc<Driver<NullStore>>, CancellationToken) {
        driver_with(toml, NullStore)
    }

    fn driver_with<S: MessageStore>(toml: &str, store: S) -> (Arc<Driver<S>>, CancellationToken) {
        let text =
            format!("hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n{toml}");
        let cfg = Arc::new(Config::from_toml_str(&text, Path::new("t.toml")).unwrap());
        let shutdown = CancellationToken::new();
        let d = Driver {
            checks: Arc::new(PasswordChecks::new(cfg.limits.max_auth_checks)),
            memory: DataMemory::new(cfg.limits.max_data_memory),
            stress: watch::Sender::new(false).subscribe(),
            verifier: None,
            cfg,
            store: Arc::new(store),
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
    async fn a_store_error_is_answered_by_the_session_and_the_session_goes_on() {
        let (d, _shutdown) = driver_with("", FullStore);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let session = Session::new(d.cfg.clone(), conn(ListenerKind::Smtp));
        let run = tokio::spawn({
            let d = d.clone();
            async move { d.run(Box::new(server), session).await }
        });
        read_until(&mut client, "220 ").await;
        client
            .write_all(
                b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\n\
                  Subject: s\r\n\r\nbody\r\n.\r\nNOOP\r\n",
            )
            .await
            .unwrap();
        let got = read_until(&mut client, "250 2.0.0 OK\r\n").await;
        assert!(
            got.contains(
                "354 End data with <CR><LF>.<CR><LF>\r\n\
                 452 4.3.1 Insufficient system storage, try again later\r\n250 2.0.0 OK\r\n"
            ),
            "{got:?}"
        );
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("session did not end at EOF")
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_abandons_writes_to_a_client_that_never_reads() {
        // Default command_timeout (5 minutes): only the shutdown can end this session soon.
        // The HELPs must not end the session as junk either.
        let (d, shutdown) = driver("[limits]\nmax_junk_commands = 100000\n");
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
        let client = crate::client::ClientKey::new("192.0.2.9".parse().unwrap(), 64);
        for _ in 0..8 {
            tracker
                .begin_auth(client, "alice@tern.test", 100, 100)
                .unwrap();
        }
        let session = Session::sharing(d.cfg.clone(), conn(ListenerKind::Submission), tracker);
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
