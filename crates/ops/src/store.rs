//! Opening the queue store `[queue] backend` names, once for the server and the commands:
//! the filesystem spool under `data_dir` (the default), or the PostgreSQL database several
//! nodes share (docs/cluster.md).

use std::io;
use std::sync::Arc;

use tern_config::{Config, PostgresQueue, QueueBackend};
use tern_pgqueue::{PgSettings, PgStore, Role};
use tern_queue::{FsStore, QueueStore};

/// Who opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `tern serve`: the PostgreSQL schema is created or upgraded first.
    Server,
    /// `tern queue` and other commands: the schema must be there already.
    Command,
}

/// The PostgreSQL settings of `cfg`, if it uses PostgreSQL.
pub fn postgres(cfg: &Config) -> Option<&PostgresQueue> {
    match &cfg.queue.backend {
        QueueBackend::Postgres(pg) => Some(pg),
        QueueBackend::Fs => None,
    }
}

/// Opens the PostgreSQL store of `pg` (creating or upgrading the schema for the server).
pub fn open_postgres(cfg: &Config, pg: &PostgresQueue, by: Opener) -> io::Result<PgStore> {
    if by == Opener::Server {
        let (before, after) = PgStore::migrate(pg.url.as_str())?;
        if before != after {
            tracing::info!(
                from = before,
                to = after,
                "queue: PostgreSQL schema migrated"
            );
        }
    }
    PgStore::open(&PgSettings {
        url: pg.url.as_str().to_string(),
        node_id: pg.node_id.clone(),
        lease_time: pg.lease_time,
        spool_dir: cfg.data_dir.join("queue").join("incoming"),
        role: match by {
            Opener::Server => Role::Server,
            Opener::Command => Role::Cli,
        },
    })
}

/// The store for a command, or `None` for a filesystem spool that was never created (a fresh
/// install: the queue is empty). Not created when missing: run as another user (root), a
/// command must not leave directories behind that the server cannot write.
pub fn open_for_command(cfg: &Config) -> io::Result<Option<Arc<dyn QueueStore>>> {
    if let Some(pg) = postgres(cfg) {
        return Ok(Some(Arc::new(open_postgres(cfg, pg, Opener::Command)?)));
    }
    let root = cfg.data_dir.join("queue");
    match root.try_exists() {
        Ok(true) => Ok(Some(Arc::new(FsStore::open(&cfg.data_dir)?))),
        Ok(false) => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", root.display()))),
    }
}
