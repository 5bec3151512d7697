//! tern's shared queue on PostgreSQL (docs/cluster.md): a [`QueueStore`] that several tern
//! nodes use at once. A message is acknowledged only after the transaction that stores its
//! envelope, body and recipients has committed; a node delivers an entry only under a lease
//! (`leased_by`, `lease_token`, `lease_until`) that it renews while delivering, so a node that
//! dies loses its entries to the others when its leases run out. `LISTEN/NOTIFY` tells every
//! node about changes the others commit.
//!
//! The trait is blocking (callers use `spawn_blocking`, as with the filesystem spool); the
//! store runs the database client on a small runtime of its own and blocks on it, so the
//! database's connections never compete with SMTP sessions for the server's threads.

mod cluster;
mod error;
mod lease;
mod listen;
mod reader;
pub mod schema;
mod sql;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{NoTls, Row};

use tern_queue::{
    Cluster, Envelope, EventSink, QueueId, QueueLock, QueueStore, RecipientStatus, RecoveryReport,
    SpoolFile, Spooled, StoreEvent,
};

use crate::lease::Lease;

/// Connections in the pool: each commit, update and claim holds one for one statement.
const POOL_SIZE: usize = 24;
/// How long a caller waits for a pooled connection, or for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(20);
/// The longest one store operation may take (a large body on a slow link included); past it
/// the operation fails (451 for a commit) rather than hold a session or delivery slot forever.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/db` or a `key=value` connection string.
    pub url: String,
    /// This node's name (`[queue] node_id`).
    pub node_id: String,
    pub lease_time: Duration,
    /// Where bodies are streamed while DATA arrives, before the commit puts them in the
    /// database (`<data_dir>/queue/incoming`).
    pub spool_dir: PathBuf,
    /// Who holds the leases this store takes.
    pub role: Role,
}

/// Who a store's leases belong to, as written in `leased_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tern serve`: leases are `node_id`, and released wholesale when the node restarts.
    Server,
    /// `tern queue` or the admin tooling on that node: `node_id (tern queue)`.
    Cli,
}

pub struct PgStore {
    inner: Arc<Inner>,
    /// Shut down in the background when the store goes (dropping a runtime may not block).
    runtime: Option<Runtime>,
}

pub(crate) struct Inner {
    pool: Pool,
    rt: Handle,
    url: String,
    node_id: String,
    /// `leased_by` of this store's leases.
    holder: String,
    /// Random, per process: NOTIFY payloads carry it so a node ignores its own.
    origin: String,
    lease_time: Duration,
    spool_dir: PathBuf,
    sinks: Mutex<Vec<EventSink>>,
    /// Leases held now, by token, renewed together.
    leases: Mutex<HashMap<i64, lease::Held>>,
    /// Releases started and not finished: a command's store waits for them before it goes,
    /// or its entries would stay leased (and undelivered) until the leases ran out.
    releasing: std::sync::atomic::AtomicUsize,
}

impl PgStore {
    /// Connects, checks that the schema is this tern's (see [`PgStore::migrate`]) and starts
    /// renewing leases. Does not listen for other nodes' changes: see [`PgStore::listen`].
    pub fn open(settings: &PgSettings) -> io::Result<PgStore> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tern-pg")
            .enable_all()
            .build()?;
        let pool = pool(&settings.url)?;
        std::fs::create_dir_all(&settings.spool_dir)?;
        let holder = match settings.role {
            Role::Server => settings.node_id.clone(),
            Role::Cli => format!("{} (tern queue)", settings.node_id),
        };
        let inner = Arc::new(Inner {
            pool,
            rt: runtime.handle().clone(),
            url: settings.url.clone(),
            node_id: settings.node_id.clone(),
            holder,
            origin: format!("{:016x}", rand::random::<u64>()),
            lease_time: settings.lease_time,
            spool_dir: settings.spool_dir.clone(),
            sinks: Mutex::new(Vec::new()),
            leases: Mutex::new(HashMap::new()),
            releasing: std::sync::atomic::AtomicUsize::new(0),
        });
        let version = inner.run("connecting", async {
            let client = inner.pool.get().await.map_err(error::pool)?;
            schema::version(&client).await
        })?;
        schema::check_usable(version)?;
        lease::spawn_renewer(&inner);
        Ok(PgStore {
            inner,
            runtime: Some(runtime),
        })
    }

    /// Creates or upgrades the schema; returns the versions before and after.
    pub fn migrate(url: &str) -> io::Result<(i32, i32)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = url.to_string();
        runtime.block_on(async move {
            let config = connection_config(&url)?;
            let connect = config.connect(NoTls);
            let (mut client, connection) = tokio::time::timeout(POOL_WAIT, connect)
                .await
                .map_err(|_| error::timed_out("connecting"))?
                .map_err(|e| error::db("connecting", e))?;
            let driver = tokio::spawn(connection);
            let result = schema::migrate(&mut client).await;
            drop(client);
            let _ = driver.await;
            result
        })
    }

    /// Starts telling subscribers about changes other nodes and processes commit (LISTEN on
    /// a connection of its own, reconnecting when it drops). The server calls this once.
    pub fn listen(&self) {
        listen::spawn(&self.inner);
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }
}

/// How long a store being dropped waits for its lease releases.
/// Runs `op` until it succeeds or fails for a reason other than the database being away
/// ([`error::is_transient`]), retrying after 0.5 s, 1 s, 2 s ... (at most 4 s apart) for up to
/// `within`. Used where giving up costs more than waiting: a lease released or an outcome
/// recorded while the database restarts (given up, the entry would wait out its lease on a
/// node that is alive, or be delivered twice).
pub(crate) async fn persist<T, F, Fut>(within: Duration, mut op: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    let until = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(500);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !error::is_transient(&e) || tokio::time::Instant::now() + pause >= until => {
                return Err(e)
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
            }
        }
    }
}

const RELEASE_WAIT: Duration = Duration::from_secs(3);

impl Drop for PgStore {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        while self
            .inner
            .releasing
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && started.elapsed() < RELEASE_WAIT
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The connection settings of `url`, with tern's own on top: `synchronous_commit = on` for
/// every session, whatever the server's default, because a 250 is only given after the commit
/// is flushed (on a replica setup, to the standbys `synchronous_standby_names` lists: see
/// docs/cluster.md).
fn connection_config(url: &str) -> io::Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(bad_url)?;
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c synchronous_commit=on"),
        _ => "-c synchronous_commit=on".to_string(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("tern");
    }
    Ok(config)
}

fn pool(url: &str) -> io::Result<Pool> {
    let config = connection_config(url)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| io::Error::other(format!("PostgreSQL: cannot set up the pool: {e}")))
}

fn bad_url(e: tokio_postgres::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("PostgreSQL: invalid connection URL in queue.postgres_url_file: {e}"),
    )
}

impl Inner {
    /// Runs `f` on the store's runtime and waits for it, for at most [`OP_TIMEOUT`].
    pub(crate) fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        self.rt.block_on(async {
            tokio::time::timeout(OP_TIMEOUT, f)
                .await
                .map_err(|_| error::timed_out(what))?
        })
    }

    /// [`Inner::run`] for a statement that records the outcome under a lease held: while the
    /// database is away (a restart), it is sent again for up to a third of `lease_time`
    /// (the lease, renewed every third, is still ours), so a delivery made while the database
    /// restarts is recorded instead of repeated. Idempotent under the lease token: a retry of
    /// a statement whose first try committed finds the same state (or no row) and says so.
    pub(crate) fn run_persisting<T, F, Fut>(&self, what: &str, mut op: F) -> io::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = io::Result<T>>,
    {
        self.rt.block_on(persist(self.lease_time / 3, || {
            let f = op();
            async move {
                tokio::time::timeout(OP_TIMEOUT, f)
                    .await
                    .map_err(|_| error::timed_out(what))?
            }
        }))
    }

    /// One prepared statement (cached per connection) on a pooled connection: its rows, with
    /// errors that say what was being done.
    pub(crate) async fn rows(
        &self,
        what: &str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> io::Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(statement)
            .await
            .map_err(|e| error::db(what, e))?;
        client
            .query(&stmt, params)
            .await
            .map_err(|e| error::db(what, e))
    }

    /// [`Inner::rows`] for a statement that returns at most one row.
    pub(crate) async fn row(
        &self,
        what: &str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> io::Result<Option<Row>> {
        Ok(self.rows(what, statement, params).await?.into_iter().next())
    }

    pub(crate) async fn client(&self) -> io::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(error::pool)
    }

    pub(crate) fn tell(&self, event: StoreEvent) {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for sink in sinks {
            sink(event.clone());
        }
    }

    /// The NOTIFY payload for a change to `id` made here.
    pub(crate) fn payload(&self, id: &QueueId) -> String {
        format!("{} {}", self.origin, id.as_str())
    }

    pub(crate) fn lease_secs(&self) -> f64 {
        self.lease_time.as_secs_f64()
    }

    /// Inserts one entry with its body and recipients, and notifies, in one statement (one
    /// implicit transaction, one round trip).
    async fn insert(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        env: &Envelope,
        body: &[u8],
    ) -> io::Result<()> {
        let stmt = client
            .prepare_cached(sql::INSERT)
            .await
            .map_err(|e| error::db("preparing the commit", e))?;
        let r = Rcpts::of(env);
        let size = i64::try_from(env.size).unwrap_or(i64::MAX);
        client
            .query(
                &stmt,
                &[
                    &env.id.as_str(),
                    &env.received_at,
                    &env.sender,
                    &env.next_due(),
                    &env.held,
                    &size,
                    &self.node_id,
                    &Json(env),
                    &body,
                    &r.idx,
                    &r.address,
                    &r.domain,
                    &r.state,
                    &r.attempts,
                    &r.next_attempt,
                    &self.payload(&env.id),
                ],
            )
            .await
            .map_err(|e| error::db("committing an entry", e))?;
        Ok(())
    }
}

/// Per-recipient columns, as arrays for `unnest`.
struct Rcpts {
    idx: Vec<i32>,
    address: Vec<String>,
    domain: Vec<String>,
    state: Vec<&'static str>,
    attempts: Vec<i32>,
    next_attempt: Vec<Option<SystemTime>>,
}

impl Rcpts {
    fn of(env: &Envelope) -> Rcpts {
        let mut r = Rcpts {
            idx: Vec::new(),
            address: Vec::new(),
            domain: Vec::new(),
            state: Vec::new(),
            attempts: Vec::new(),
            next_attempt: Vec::new(),
        };
        for (i, rcpt) in env.recipients.iter().enumerate() {
            r.idx.push(i32::try_from(i).unwrap_or(i32::MAX));
            r.address.push(rcpt.address.clone());
            let domain = rcpt.address.rsplit_once('@').map_or("", |(_, d)| d);
            r.domain.push(domain.to_ascii_lowercase());
            r.state.push(rcpt.status.name());
            let (attempts, next) = match &rcpt.status {
                RecipientStatus::Deferred {
                    attempts,
                    next_attempt,
                    ..
                } => (*attempts, Some(*next_attempt)),
                _ => (0, None),
            };
            r.attempts.push(i32::try_from(attempts).unwrap_or(i32::MAX));
            r.next_attempt.push(next);
        }
        r
    }
}

fn lease_of(lock: &QueueLock) -> io::Result<&Lease> {
    lock.guard::<Lease>().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a lock of the PostgreSQL queue", lock.id()),
        )
    })
}

fn parse_id(text: &str) -> io::Result<QueueId> {
    text.parse()
        .map_err(|e| error::corrupt("reading an entry id", format!("{text:?}: {e}")))
}

impl QueueStore for PgStore {
    fn commit_parts(&self, env: &Envelope, message: &[&[u8]]) -> io::Result<()> {
        let body = message.concat();
        let inner = &self.inner;
        inner.run("committing an entry", async {
            let client = inner.client().await?;
            inner.insert(&client, env, &body).await
        })?;
        inner.tell(StoreEvent::Committed {
            id: env.id.clone(),
            due: env.next_due(),
        });
        Ok(())
    }

    /// One transaction for the batch: one WAL flush for all of them. One failure fails the
    /// batch (the transaction rolls back, so no entry of it exists).
    fn commit_many(&self, batch: &[(&Envelope, &[&[u8]])]) -> Vec<io::Result<()>> {
        let inner = &self.inner;
        let bodies: Vec<Vec<u8>> = batch.iter().map(|(_, parts)| parts.concat()).collect();
        let result = inner.run("committing entries", async {
            let mut client = inner.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(|e| error::db("starting a transaction", e))?;
            for ((env, _), body) in batch.iter().zip(&bodies) {
                inner.insert(&tx, env, body).await?;
            }
            tx.commit()
                .await
                .map_err(|e| error::db("committing entries", e))
        });
        match result {
            Ok(()) => batch
                .iter()
                .map(|(env, _)| {
                    inner.tell(StoreEvent::Committed {
                        id: env.id.clone(),
                        due: env.next_due(),
                    });
                    Ok(())
                })
                .collect(),
            Err(e) => batch
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    fn spool(&self) -> io::Result<SpoolFile> {
        SpoolFile::create(&self.inner.spool_dir)
    }

    fn commit_spooled(&self, env: &Envelope, body: Spooled) -> io::Result<()> {
        let mut message = Vec::with_capacity(env.prefix.len() + body.len() as usize);
        message.extend_from_slice(env.prefix.as_bytes());
        message.extend_from_slice(&body.read_all()?);
        // The prefix is in the stored bytes now, not in front of them.
        let stored = Envelope {
            prefix: String::new(),
            ..env.clone()
        };
        self.commit_parts(&stored, &[&message])
        // `body` drops here and removes its spool file.
    }

    fn message_reader(&self, env: &Envelope) -> io::Result<Box<dyn io::Read + Send>> {
        Ok(Box::new(reader::BodyReader::new(self.inner.clone(), env)))
    }

    fn list(&self) -> io::Result<Vec<QueueId>> {
        let inner = &self.inner;
        const WHAT: &str = "listing the queue";
        let rows = inner.run(WHAT, inner.rows(WHAT, sql::LIST, &[]))?;
        rows.iter().map(|r| parse_id(r.get(0))).collect()
    }

    fn load(&self, id: &QueueId) -> io::Result<Envelope> {
        let inner = &self.inner;
        const WHAT: &str = "reading an envelope";
        let row = inner.run(WHAT, inner.row(WHAT, sql::LOAD, &[&id.as_str()]))?;
        let row = row.ok_or_else(|| not_found(id))?;
        let Json(env): Json<Envelope> = row
            .try_get(0)
            .map_err(|e| error::corrupt("reading an envelope", e))?;
        Ok(env)
    }

    fn load_all(&self) -> io::Result<Vec<(QueueId, io::Result<Envelope>)>> {
        let inner = &self.inner;
        const WHAT: &str = "reading the queue";
        let rows = inner.run(WHAT, inner.rows(WHAT, sql::LOAD_ALL, &[]))?;
        rows.iter()
            .map(|row| {
                let id = parse_id(row.get(0))?;
                let env = row
                    .try_get::<_, Json<Envelope>>(1)
                    .map(|Json(env)| env)
                    .map_err(|e| error::corrupt("reading an envelope", e));
                Ok((id, env))
            })
            .collect()
    }

    fn read_message(&self, id: &QueueId) -> io::Result<Vec<u8>> {
        self.read_prefix(id, usize::MAX)
    }

    fn read_prefix(&self, id: &QueueId, max: usize) -> io::Result<Vec<u8>> {
        let env = self.load(id)?;
        let mut out = Vec::new();
        io::Read::read_to_end(
            &mut io::Read::take(self.message_reader(&env)?, max as u64),
            &mut out,
        )?;
        Ok(out)
    }

    fn subscribe(&self, sink: EventSink) {
        self.inner
            .sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
    }

    fn lock(&self, id: &QueueId) -> io::Result<Option<QueueLock>> {
        let inner = &self.inner;
        const WHAT: &str = "locking an entry";
        let token = inner.run(WHAT, async {
            let params: [&(dyn ToSql + Sync); 3] =
                [&id.as_str(), &inner.holder, &inner.lease_secs()];
            if let Some(row) = inner.row(WHAT, sql::LOCK, &params).await? {
                return Ok(Some(row.get::<_, i64>(0)));
            }
            let exists = inner.row(WHAT, sql::EXISTS, &[&id.as_str()]).await?;
            match exists {
                Some(_) => Ok(None),
                None => Err(not_found(id)),
            }
        })?;
        Ok(token.map(|t| Lease::held(&self.inner, id.clone(), t)))
    }

    fn update(&self, lock: &QueueLock, env: &Envelope) -> io::Result<()> {
        if *lock.id() != env.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("update of {} under the lock of {}", env.id, lock.id()),
            ));
        }
        let token = lease_of(lock)?.token();
        let inner = &self.inner;
        const WHAT: &str = "updating an entry";
        let r = Rcpts::of(env);
        let payload = inner.payload(&env.id);
        let updated = inner.run_persisting(WHAT, || async {
            let rows = inner
                .rows(
                    WHAT,
                    sql::UPDATE,
                    &[
                        &env.id.as_str(),
                        &Json(env),
                        &env.next_due(),
                        &env.held,
                        &token,
                        &r.idx,
                        &r.address,
                        &r.domain,
                        &r.state,
                        &r.attempts,
                        &r.next_attempt,
                        &payload,
                    ],
                )
                .await?;
            Ok(!rows.is_empty())
        })?;
        if !updated {
            return Err(lease_lost(&env.id));
        }
        inner.tell(StoreEvent::Updated {
            id: env.id.clone(),
            due: env.next_due(),
        });
        Ok(())
    }

    fn remove(&self, lock: QueueLock) -> io::Result<()> {
        let lease = lease_of(&lock)?;
        let (id, token) = (lock.id().clone(), lease.token());
        let inner = &self.inner;
        const WHAT: &str = "removing an entry";
        let payload = inner.payload(&id);
        let removed = inner.run_persisting(WHAT, || async {
            let rows = inner
                .rows(WHAT, sql::REMOVE, &[&id.as_str(), &token, &payload])
                .await?;
            Ok(!rows.is_empty())
        })?;
        if !removed {
            return Err(lease_lost(&id));
        }
        // Nothing left to release.
        lease.forget();
        drop(lock);
        inner.tell(StoreEvent::Removed { id });
        Ok(())
    }

    /// Removes bodies left in the local spool folder by an interrupted DATA, and releases the
    /// leases this node held before it restarted (it is not delivering anything yet).
    fn recover(&self) -> io::Result<RecoveryReport> {
        let incoming = tern_queue::spool::clear(&self.inner.spool_dir)?;
        let inner = &self.inner;
        let entries = inner.run("recovering", async {
            let client = inner.client().await?;
            client
                .execute(sql::RELEASE_NODE, &[&inner.holder])
                .await
                .map_err(|e| error::db("releasing this node's leases", e))?;
            client
                .execute(
                    "DELETE FROM tern_host_slots WHERE node = $1",
                    &[&inner.holder],
                )
                .await
                .map_err(|e| error::db("releasing this node's host slots", e))?;
            let row = client
                .query_one("SELECT count(*) FROM tern_queue", &[])
                .await
                .map_err(|e| error::db("counting entries", e))?;
            Ok(row.get::<_, i64>(0))
        })?;
        Ok(RecoveryReport {
            entries: usize::try_from(entries).unwrap_or(usize::MAX),
            temp_files_removed: incoming,
            ..RecoveryReport::default()
        })
    }

    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Some(Arc::new(cluster::Shared(self.inner.clone())))
    }
}

fn not_found(id: &QueueId) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no queue entry {id}"))
}

fn lease_lost(id: &QueueId) -> io::Error {
    io::Error::other(format!(
        "{id}: this node's lease on the entry ran out and another node took it (is queue.lease_time long enough for the database's delays?)"
    ))
}
