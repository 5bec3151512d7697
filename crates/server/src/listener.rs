//! Listening sockets: accept loops with connection limits (total and per client: an address or
//! an IPv6 prefix), stress mode past a share of the slots, one task per session, implicit TLS
//! on the submissions port, and graceful shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use tern_config::Config;
use tern_delivery::mailbox_cap::MailboxCap;
use tern_metrics as names;

use crate::checks::PasswordChecks;
use crate::client::ClientKey;
use crate::disk::LowSpace;
use crate::driver::Driver;
use crate::memory::DataMemory;
use crate::replies;
use crate::session::{ConnInfo, ListenerKind, Session};
use crate::store::MessageStore;
use crate::stream::BoxStream;
use crate::stress::StressMonitor;
use crate::tls::TlsProvider;
use crate::tracker::ClientTracker;

pub struct BoundListener {
    pub kind: ListenerKind,
    pub listener: TcpListener,
}

impl BoundListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds every configured address; fails with the address in the message (e.g. port in use).
pub async fn bind_all(cfg: &Config) -> io::Result<Vec<BoundListener>> {
    let mut out = Vec::new();
    for (addr, kind) in configured(cfg) {
        let listener = listen(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        out.push(BoundListener { kind, listener });
    }
    Ok(out)
}

/// Every address the config wants a listener on, with its kind.
pub fn configured(cfg: &Config) -> Vec<(SocketAddr, ListenerKind)> {
    let groups = [
        (ListenerKind::Smtp, &cfg.smtp.listen),
        (ListenerKind::Submission, &cfg.submission.listen),
        (ListenerKind::Submissions, &cfg.submissions.listen),
    ];
    let mut out = Vec::new();
    for (kind, addrs) in groups {
        for addr in addrs.iter() {
            out.push((*addr, kind));
        }
    }
    out
}

/// A backlog deep enough for thousands of clients connecting at once (the kernel caps it at
/// net.core.somaxconn); tokio's default of 1024 drops SYNs under such bursts.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Restart right after a stop without waiting for TIME_WAIT sockets to expire.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Counts open connections, in total and per client, and tells stress mode about the total.
struct Counters {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
    stress: StressMonitor,
}

struct Slot {
    counters: Arc<Mutex<Counters>>,
    client: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = match self.counters.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.total = c.total.saturating_sub(1);
        let total = c.total;
        c.stress.update(total);
        if let Some(n) = c.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.client);
            }
        }
    }
}

/// A short id for a session's log lines, unique within this process's life.
fn session_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "s{:x}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Counts a session in `tern_smtp_sessions_active` while it lives.
struct ActiveSession;

impl ActiveSession {
    fn start() -> Self {
        metrics::gauge!(names::SMTP_SESSIONS_ACTIVE).increment(1.0);
        ActiveSession
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        metrics::gauge!(names::SMTP_SESSIONS_ACTIVE).decrement(1.0);
    }
}

pub struct Server<S: MessageStore> {
    /// The current generation: config, store, TLS and verifier of new sessions. A reload
    /// replaces it; a session keeps the one it started with.
    driver: RwLock<Arc<Driver<S>>>,
    counters: Arc<Mutex<Counters>>,
    clients: Arc<ClientTracker>,
    tracker: TaskTracker,
    /// Free disk space ([`crate::disk`]); never low unless [`Server::with_low_space`] is given
    /// a monitor's flag.
    low_space: LowSpace,
    /// The new-mailbox caps, shared so the per-minute count is server-wide (rebuilt by a
    /// reload: it knows the configured mailboxes).
    mailbox_cap: RwLock<Arc<MailboxCap>>,
    /// The accept loops running now, so a reload can add and stop listeners.
    accepting: Mutex<Vec<Accepting>>,
    shutdown: CancellationToken,
}

/// One running accept loop.
struct Accepting {
    addr: SocketAddr,
    kind: ListenerKind,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What a reload hands the server for new sessions (see [`Server::reload`]).
pub struct Generation<S: MessageStore> {
    pub cfg: Arc<Config>,
    pub store: Arc<S>,
    pub tls: Option<Arc<TlsProvider>>,
    pub verifier: Option<Arc<tern_auth::Verifier>>,
}

impl<S: MessageStore> Server<S> {
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<S>,
        tls: Option<Arc<TlsProvider>>,
        shutdown: CancellationToken,
    ) -> Self {
        let stress = StressMonitor::new(&cfg.limits);
        Self {
            driver: RwLock::new(Arc::new(Driver {
                checks: Arc::new(PasswordChecks::new(cfg.limits.max_auth_checks)),
                memory: DataMemory::new(cfg.limits.max_data_memory),
                stress: stress.subscribe(),
                verifier: None,
                cfg: cfg.clone(),
                store,
                tls,
                shutdown: shutdown.clone(),
            })),
            counters: Arc::new(Mutex::new(Counters {
                total: 0,
                per_client: HashMap::new(),
                stress,
            })),
            clients: Arc::new(ClientTracker::for_limits(&cfg.limits)),
            tracker: TaskTracker::new(),
            low_space: LowSpace::default(),
            mailbox_cap: RwLock::new(Arc::new(MailboxCap::new(&cfg))),
            accepting: Mutex::new(Vec::new()),
            shutdown,
        }
    }

    /// Checks SPF at MAIL FROM on port 25 with this verifier (when `checks.spf_fail_reject`);
    /// the store gets the same one for the end-of-DATA checks.
    pub fn with_verifier(self, verifier: Arc<tern_auth::Verifier>) -> Self {
        {
            let mut d = self.driver.write().unwrap_or_else(|p| p.into_inner());
            if let Some(driver) = Arc::get_mut(&mut d) {
                driver.verifier = Some(verifier);
            }
        }
        self
    }

    /// Counts `limits.max_messages_per_ip_per_minute` across the nodes sharing this queue
    /// (crate::shared_rate); the exchange runs until shutdown. Needs a tokio runtime.
    pub fn with_cluster(mut self, cluster: Arc<dyn tern_queue::Cluster>) -> Self {
        let shared = Arc::new(crate::shared_rate::SharedRate::default());
        tokio::spawn(shared.clone().run(cluster, self.shutdown.clone()));
        let limits = self.driver().cfg.limits.clone();
        self.clients = Arc::new(ClientTracker::for_limits(&limits).with_shared(shared));
        self
    }

    /// Refuses new MAIL with 452 4.3.1 while this flag (a [`crate::disk::DiskMonitor`]'s) is set.
    pub fn with_low_space(mut self, low_space: LowSpace) -> Self {
        self.low_space = low_space;
        self
    }

    /// The generation new sessions get.
    fn driver(&self) -> Arc<Driver<S>> {
        self.driver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves `listeners` until the shutdown token fires, then waits for sessions to end.
    pub async fn run(self: Arc<Self>, listeners: Vec<BoundListener>) {
        self.start_listeners(listeners);
        self.shutdown.cancelled().await;
        let loops: Vec<Accepting> = std::mem::take(&mut *self.accepting_list());
        for a in loops {
            let _ = a.task.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn accepting_list(&self) -> std::sync::MutexGuard<'_, Vec<Accepting>> {
        self.accepting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_listeners(self: &Arc<Self>, listeners: Vec<BoundListener>) {
        let mut list = self.accepting_list();
        for l in listeners {
            let Ok(addr) = l.local_addr() else { continue };
            let stop = self.shutdown.child_token();
            let this = self.clone();
            let kind = l.kind;
            let token = stop.clone();
            let task = tokio::spawn(async move { this.accept_loop(l, token).await });
            list.push(Accepting {
                addr,
                kind,
                stop,
                task,
            });
        }
    }

    /// The addresses being listened on now, by kind.
    pub fn listening(&self) -> Vec<(SocketAddr, ListenerKind)> {
        self.accepting_list()
            .iter()
            .map(|a| (a.addr, a.kind))
            .collect()
    }

    /// Puts a new generation in force for new sessions (sessions already open keep theirs)
    /// and makes the listeners those of `gen.cfg`: addresses kept keep their socket (no
    /// connection is lost), new ones are bound first (a failure leaves everything as it was
    /// and is returned), then the ones no longer configured stop accepting; their open
    /// sessions run to their end.
    pub fn reload(self: &Arc<Self>, gen: Generation<S>) -> io::Result<()> {
        let wanted = configured(&gen.cfg);
        let have = self.listening();
        let mut fresh = Vec::new();
        for (addr, kind) in &wanted {
            if !have.iter().any(|(a, k)| a == addr && k == kind) {
                let listener = listen(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                fresh.push(BoundListener {
                    kind: *kind,
                    listener,
                });
            }
        }
        *self.mailbox_cap.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(MailboxCap::new(&gen.cfg));
        let old = self.driver();
        let next = Arc::new(Driver {
            cfg: gen.cfg,
            store: gen.store,
            tls: gen.tls,
            verifier: gen.verifier,
            shutdown: old.shutdown.clone(),
            checks: old.checks.clone(),
            memory: old.memory.clone(),
            stress: old.stress.clone(),
        });
        *self.driver.write().unwrap_or_else(|p| p.into_inner()) = next;
        {
            let mut list = self.accepting_list();
            list.retain(|a| {
                let keep = wanted
                    .iter()
                    .any(|(addr, k)| *addr == a.addr && *k == a.kind);
                if !keep {
                    info!(addr = %a.addr, kind = a.kind.name(), "listener closed by reload");
                    a.stop.cancel();
                }
                keep
            });
        }
        for l in &fresh {
            if let Ok(addr) = l.local_addr() {
                info!(addr = %addr, kind = l.kind.name(), "listening (added by reload)");
            }
        }
        self.start_listeners(fresh);
        Ok(())
    }

    async fn accept_loop(self: &Arc<Self>, l: BoundListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                r = l.listener.accept() => r,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let local = stream.local_addr().unwrap_or(peer);
                    let _ = stream.set_nodelay(true);
                    let this = self.clone();
                    // One span per session: every line it logs carries these fields.
                    let span = tracing::info_span!("session", session = %session_id(),
                        peer = %peer, listener = l.kind.name());
                    self.tracker.spawn(
                        async move { this.connection(stream, peer, local, l.kind).await }
                            .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn take_slot(&self, limits: &tern_config::Limits, client: ClientKey) -> Option<Slot> {
        let mut c = match self.counters.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let per_client = c.per_client.get(&client).copied().unwrap_or(0);
        if c.total >= limits.max_connections
            || (limits.max_connections_per_ip > 0 && per_client >= limits.max_connections_per_ip)
        {
            return None;
        }
        c.total += 1;
        let total = c.total;
        c.stress.update(total);
        *c.per_client.entry(client).or_insert(0) += 1;
        Some(Slot {
            counters: self.counters.clone(),
            client,
        })
    }

    async fn connection(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        kind: ListenerKind,
    ) {
        let driver = self.driver();
        let cfg = &driver.cfg;
        let client = ClientKey::new(peer.ip(), cfg.limits.ipv6_prefix_length);
        let Some(_slot) = self.take_slot(&cfg.limits, client) else {
            metrics::counter!(names::SMTP_CONNECTIONS, "listener" => kind.name(),
                "outcome" => "refused")
            .increment(1);
            info!(client = %peer, "connection refused: too many connections");
            let reply = replies::too_many_connections(&cfg.hostname).to_bytes();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&reply))
                    .await;
            return;
        };
        metrics::counter!(names::SMTP_CONNECTIONS, "listener" => kind.name(),
            "outcome" => "accepted")
        .increment(1);
        let _active = ActiveSession::start();
        let mut conn = ConnInfo {
            peer,
            local,
            kind,
            tls: None,
            tls_available: driver.tls.is_some(),
        };
        let mut boxed: BoxStream = Box::new(stream);
        if kind == ListenerKind::Submissions {
            // RFC 8314 3.3: TLS first, then the SMTP greeting.
            let Some(tls) = &driver.tls else { return };
            // A client stalling the handshake must not hold up a shutdown.
            let accepted = tokio::select! {
                r = Box::pin(tls.accept(boxed, cfg.limits.command_timeout)) => r,
                _ = driver.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((s, description)) => {
                    boxed = s;
                    metrics::counter!(names::TLS_SESSIONS, "direction" => "inbound",
                        "version" => names::tls_version(&description))
                    .increment(1);
                    conn.tls = Some(description);
                }
                Err(e) => {
                    info!(client = %peer, error = %e, "implicit TLS handshake failed");
                    return;
                }
            }
        }
        let session = Session::sharing(cfg.clone(), conn, self.clients.clone())
            .with_low_space(self.low_space.clone())
            .with_mailbox_cap(
                self.mailbox_cap
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            );
        Box::pin(driver.run(boxed, session)).await;
    }
}
