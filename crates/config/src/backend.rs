//! `[queue] backend`: where the queue lives. The default is the filesystem spool under
//! `data_dir` (no database, nothing to set up). `backend = "postgres"` puts it in a PostgreSQL
//! database several tern nodes share (docs/cluster.md); the connection URL, which holds a
//! password, is read from `postgres_url_file` at load time so that it is never in the main
//! config, in a config diff or in a log line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Issues;
use crate::fields::{at, duration};
use crate::raw::RawQueue;

/// How long a node's claim on an entry lasts without renewal (it renews while delivering).
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(300);
/// Shorter leases would be renewed so often that a slow database could lose them mid-delivery.
const MIN_LEASE_TIME: Duration = Duration::from_secs(5);
/// Longer ones keep a dead node's mail waiting for too long.
const MAX_LEASE_TIME: Duration = Duration::from_secs(3600);
/// Node ids go into every lease and log line: short and printable.
const MAX_NODE_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueueBackend {
    /// The spool under `data_dir/queue` (docs/spool-format.md).
    #[default]
    Fs,
    Postgres(PostgresQueue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresQueue {
    /// What `postgres_url_file` holds.
    pub url: PostgresUrl,
    pub url_file: PathBuf,
    /// This node's name in leases (`leased_by`) and in `accepted_by`; unique per node.
    pub node_id: String,
    pub lease_time: Duration,
}

/// A `postgres://user:password@host/db` URL (or a `key=value` connection string); its Debug
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PostgresUrl(redacted)")
    }
}

pub(crate) fn backend(v: &mut Issues, q: &RawQueue) -> QueueBackend {
    let name = q.backend.as_ref().map(|b| b.get_ref().as_str());
    match name {
        None | Some("fs") => {
            for (key, set) in [
                ("queue.postgres_url_file", q.postgres_url_file.is_some()),
                ("queue.node_id", q.node_id.is_some()),
                ("queue.lease_time", q.lease_time.is_some()),
            ] {
                if set {
                    v.add(
                        None,
                        key,
                        format!("{key} is set but queue.backend is \"fs\", which does not use it"),
                        "set queue.backend = \"postgres\", or remove the key",
                    );
                }
            }
            QueueBackend::Fs
        }
        Some("postgres") => postgres(v, q).map_or(QueueBackend::Fs, QueueBackend::Postgres),
        Some(other) => {
            v.add(
                q.backend.as_ref().and_then(at),
                "queue.backend",
                format!("unknown queue backend \"{other}\""),
                "use \"fs\" (the spool under data_dir, the default) or \"postgres\"",
            );
            QueueBackend::Fs
        }
    }
}

fn postgres(v: &mut Issues, q: &RawQueue) -> Option<PostgresQueue> {
    let lease_time = duration(
        v,
        &q.lease_time,
        "queue.lease_time",
        DEFAULT_LEASE_TIME,
        false,
        MAX_LEASE_TIME,
    );
    if lease_time < MIN_LEASE_TIME {
        v.add(
            q.lease_time.as_ref().and_then(at),
            "queue.lease_time",
            format!(
                "a lease of {} is shorter than the {}s minimum",
                humantime::format_duration(lease_time),
                MIN_LEASE_TIME.as_secs()
            ),
            "use at least \"5s\"; the default \"5m\" suits most setups",
        );
    }
    let node_id = match &q.node_id {
        Some(n) => n.get_ref().clone(),
        None => crate::defaults::hostname(),
    };
    if node_id.is_empty()
        || node_id.len() > MAX_NODE_ID
        || !node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        v.add(
            q.node_id.as_ref().and_then(at),
            "queue.node_id",
            format!("invalid node id \"{node_id}\""),
            format!("use 1 to {MAX_NODE_ID} letters, digits, '.', '_' or '-', unique per node, e.g. \"mx1\""),
        );
        return None;
    }
    let Some(file) = &q.postgres_url_file else {
        v.add(
            q.backend.as_ref().and_then(at),
            "queue.postgres_url_file",
            "queue.backend = \"postgres\" needs the database's connection URL",
            "write `postgres://USER:PASSWORD@HOST/DB` into a file readable only by tern (e.g. /etc/tern/pg.url, mode 0600) and set queue.postgres_url_file to its path",
        );
        return None;
    };
    let path = PathBuf::from(file.get_ref());
    let text = match crate::files::read_bounded_string(&path, crate::files::MAX_SMALL_FILE) {
        Ok(t) => t,
        Err(e) => {
            v.add(
                at(file),
                "queue.postgres_url_file",
                format!("cannot read \"{}\": {e}", path.display()),
                crate::fields::file_fix(&e),
            );
            return None;
        }
    };
    let url = text.trim();
    let looks_right = url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || (url.contains('=') && !url.contains('\n'));
    if !looks_right {
        v.add(
            at(file),
            "queue.postgres_url_file",
            format!(
                "\"{}\" does not hold a PostgreSQL connection URL",
                path.display()
            ),
            "write one line: postgres://USER:PASSWORD@HOST:PORT/DB (or host=... user=... dbname=...)",
        );
        return None;
    }
    Some(PostgresQueue {
        url: PostgresUrl(url.to_string()),
        url_file: path,
        node_id,
        lease_time,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Config;

    fn issues(text: &str) -> Vec<String> {
        match Config::from_toml_str(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .issues()
                .iter()
                .map(|i| format!("{}: {}", i.key, i.problem))
                .collect(),
        }
    }

    #[test]
    fn the_filesystem_is_the_default() {
        let cfg = Config::from_toml_str("", Path::new("t.toml")).unwrap();
        assert_eq!(cfg.queue.backend, QueueBackend::Fs);
        assert!(issues("[queue]\nnode_id = \"mx1\"\n")[0].starts_with("queue.node_id:"));
        assert!(issues("[queue]\nbackend = \"redis\"\n")[0].contains("unknown queue backend"));
    }

    #[test]
    fn postgres_reads_the_url_file_and_keeps_it_secret() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("pg.url");
        std::fs::write(&url, "postgres://tern:s3cret@127.0.0.1:5432/tern\n").unwrap();
        let text = |extra: &str| {
            format!(
                "[queue]\nbackend = \"postgres\"\npostgres_url_file = {:?}\n{extra}",
                url.display().to_string()
            )
        };
        let cfg = Config::from_toml_str(&text("node_id = \"mx1\"\n"), Path::new("t.toml")).unwrap();
        let QueueBackend::Postgres(pg) = &cfg.queue.backend else {
            panic!("not postgres: {:?}", cfg.queue.backend)
        };
        assert_eq!(
            pg.url.as_str(),
            "postgres://tern:s3cret@127.0.0.1:5432/tern"
        );
        assert_eq!(pg.node_id, "mx1");
        assert_eq!(pg.lease_time, DEFAULT_LEASE_TIME);
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert!(issues(&text("lease_time = \"1s\"\n"))[0].contains("minimum"));
        assert!(issues(&text("node_id = \"mx 1\"\n"))[0].starts_with("queue.node_id:"));
        assert!(
            issues("[queue]\nbackend = \"postgres\"\n")[0].starts_with("queue.postgres_url_file:")
        );
        std::fs::write(&url, "not a url\n").unwrap();
        assert!(issues(&text(""))[0].contains("does not hold"));
    }
}
