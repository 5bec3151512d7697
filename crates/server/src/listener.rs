//! Listening sockets: accept loops with connection limits (total and per client: an address or
//! an IPv6 prefix), stress mode past a share of the slots, one task per session, implicit TLS
//! on the submissions port, and graceful shutdown.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use tern_config::Config;
use tern_delivery::mailbox_cap::MailboxCap;

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
    let groups = [
        (ListenerKind::Smtp, &cfg.smtp.listen),
        (ListenerKind::Submission, &cfg.submission.listen),
        (ListenerKind::Submissions, &cfg.submissions.listen),
    ];
    for (kind, addrs) in groups {
        for addr in addrs.iter() {
            let listener = listen(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            out.push(BoundListener { kind, listener });
        }
    }
    Ok(out)
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

pub struct Server<S: MessageStore> {
    driver: Driver<S>,
    counters: Arc<Mutex<Counters>>,
    clients: Arc<ClientTracker>,
    tracker: TaskTracker,
    /// Free disk space ([`crate::disk`]); never low unless [`Server::with_low_space`] is given
    /// a monitor's flag.
    low_space: LowSpace,
    /// The new-mailbox caps, shared so the per-minute count is server-wide.
    mailbox_cap: Arc<MailboxCap>,
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
            driver: Driver {
                checks: Arc::new(PasswordChecks::new(cfg.limits.max_auth_checks)),
                memory: DataMemory::new(cfg.limits.max_data_memory),
                stress: stress.subscribe(),
                verifier: None,
                cfg: cfg.clone(),
                store,
                tls,
                shutdown,
            },
            counters: Arc::new(Mutex::new(Counters {
                total: 0,
                per_client: HashMap::new(),
                stress,
            })),
            clients: Arc::new(ClientTracker::for_limits(&cfg.limits)),
            tracker: TaskTracker::new(),
            low_space: LowSpace::default(),
            mailbox_cap: Arc::new(MailboxCap::new(&cfg)),
        }
    }

    /// Checks SPF at MAIL FROM on port 25 with this verifier (when `checks.spf_fail_reject`);
    /// the store gets the same one for the end-of-DATA checks.
    pub fn with_verifier(mut self, verifier: Arc<tern_auth::Verifier>) -> Self {
        self.driver.verifier = Some(verifier);
        self
    }

    /// Refuses new MAIL with 452 4.3.1 while this flag (a [`crate::disk::DiskMonitor`]'s) is set.
    pub fn with_low_space(mut self, low_space: LowSpace) -> Self {
        self.low_space = low_space;
        self
    }

    /// Serves until the shutdown token fires, then waits for sessions to end.
    pub async fn run(self, listeners: Vec<BoundListener>) {
        let this = Arc::new(self);
        let mut accept_tasks = Vec::new();
        for l in listeners {
            let this = this.clone();
            accept_tasks.push(tokio::spawn(async move { this.accept_loop(l).await }));
        }
        for t in accept_tasks {
            let _ = t.await;
        }
        this.tracker.close();
        this.tracker.wait().await;
    }

    async fn accept_loop(self: &Arc<Self>, l: BoundListener) {
        let shutdown = self.driver.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                r = l.listener.accept() => r,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let local = stream.local_addr().unwrap_or(peer);
                    let _ = stream.set_nodelay(true);
                    let this = self.clone();
                    self.tracker
                        .spawn(async move { this.connection(stream, peer, local, l.kind).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn take_slot(&self, client: ClientKey) -> Option<Slot> {
        let limits = &self.driver.cfg.limits;
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
        let cfg = &self.driver.cfg;
        let client = ClientKey::new(peer.ip(), cfg.limits.ipv6_prefix_length);
        let Some(_slot) = self.take_slot(client) else {
            info!(client = %peer, "connection refused: too many connections");
            let reply = replies::too_many_connections(&cfg.hostname).to_bytes();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&reply))
                    .await;
            return;
        };
        let mut conn = ConnInfo {
            peer,
            local,
            kind,
            tls: None,
            tls_available: self.driver.tls.is_some(),
        };
        let mut boxed: BoxStream = Box::new(stream);
        if kind == ListenerKind::Submissions {
            // RFC 8314 3.3: TLS first, then the SMTP greeting.
            let Some(tls) = &self.driver.tls else { return };
            // A client stalling the handshake must not hold up a shutdown.
            let accepted = tokio::select! {
                r = tls.accept(boxed, cfg.limits.command_timeout) => r,
                _ = self.driver.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((s, description)) => {
                    boxed = s;
                    conn.tls = Some(description);
                }
                Err(e) => {
                    info!(client = %peer, error = %e, "implicit TLS handshake failed");
                    return;
                }
            }
        }
        let session = Session::new(cfg.clone(), conn)
            .with_tracker(self.clients.clone())
            .with_low_space(self.low_space.clone())
            .with_mailbox_cap(self.mailbox_cap.clone());
        self.driver.run(boxed, session).await;
    }
}
