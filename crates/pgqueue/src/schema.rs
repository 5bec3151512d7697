//! The database schema, created and migrated by tern (`tern queue migrate`, and `tern serve`
//! at start-up). Migrations are numbered and applied in order, each in its own transaction,
//! under an advisory lock so that two nodes starting at once do not both apply one. A
//! database migrated by a newer tern (a higher version than [`LATEST`]) is refused: an older
//! tern cannot know what the newer columns mean.
//!
//! The hot table `tern_queue` holds one row per entry still queued (delivered and bounced
//! entries are deleted, so it stays as small as the backlog); bodies are in `tern_bodies`,
//! written by the same statement, and per-recipient state in `tern_recipients` for operators'
//! queries. Due-time ordering is the partial index `tern_queue_due`, never a scan.

use std::io;

use tokio_postgres::Client;

use crate::error;

/// Any number: it only has to be the same in every tern (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x7465_726e_0001;

/// The schema version this tern writes and reads.
pub const LATEST: i32 = 1;

/// Migration `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    // 1: the queue, its bodies and recipients, leases, shared limits.
    "
    CREATE SEQUENCE tern_lease_token;

    CREATE TABLE tern_queue (
        id           text PRIMARY KEY,
        received_at  timestamptz NOT NULL,
        sender       text,
        -- When the entry next wants a delivery round; NULL when it is held.
        next_due     timestamptz,
        held         boolean NOT NULL DEFAULT false,
        size         bigint NOT NULL,
        accepted_by  text NOT NULL,
        leased_by    text,
        lease_token  bigint,
        lease_until  timestamptz,
        envelope     jsonb NOT NULL
    );
    CREATE INDEX tern_queue_due ON tern_queue (next_due) WHERE next_due IS NOT NULL;
    CREATE INDEX tern_queue_lease ON tern_queue (lease_until) WHERE lease_until IS NOT NULL;
    CREATE INDEX tern_queue_received ON tern_queue (received_at, id);

    CREATE TABLE tern_bodies (
        id    text PRIMARY KEY REFERENCES tern_queue (id) ON DELETE CASCADE,
        body  bytea NOT NULL
    );
    -- Stored uncompressed out of line: reading a piece (substring) does not decompress all.
    ALTER TABLE tern_bodies ALTER COLUMN body SET STORAGE EXTERNAL;

    CREATE TABLE tern_recipients (
        id            text NOT NULL REFERENCES tern_queue (id) ON DELETE CASCADE,
        idx           integer NOT NULL,
        address       text NOT NULL,
        domain        text NOT NULL,
        state         text NOT NULL,
        attempts      integer NOT NULL DEFAULT 0,
        next_attempt  timestamptz,
        PRIMARY KEY (id, idx)
    );
    CREATE INDEX tern_recipients_domain ON tern_recipients (domain);

    CREATE TABLE tern_host_slots (
        host         text NOT NULL,
        slot         integer NOT NULL,
        node         text NOT NULL,
        token        bigint NOT NULL,
        lease_until  timestamptz NOT NULL,
        PRIMARY KEY (host, slot)
    );

    CREATE TABLE tern_rate (
        minute  bigint NOT NULL,
        client  text NOT NULL,
        node    text NOT NULL,
        count   integer NOT NULL,
        PRIMARY KEY (minute, client, node)
    );
    ",
];

/// The schema's version: 0 for an empty database.
pub async fn version(client: &Client) -> io::Result<i32> {
    let exists = client
        .query_one("SELECT to_regclass('tern_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| error::db("reading the schema version", e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM tern_schema", &[])
        .await
        .map_err(|e| error::db("reading the schema version", e))?;
    Ok(row.get(0))
}

/// Applies every migration the database lacks; returns the versions before and after.
pub async fn migrate(client: &mut Client) -> io::Result<(i32, i32)> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| error::db("starting the migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| error::db("taking the migration lock", e))?;
    // "already exists, skipping" is not worth a log line on every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(|e| error::db("starting the migration", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tern_schema (
             version     integer PRIMARY KEY,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| error::db("creating tern_schema", e))?;
    let before: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM tern_schema", &[])
        .await
        .map_err(|e| error::db("reading the schema version", e))?
        .get(0);
    check_not_newer(before)?;
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(before).unwrap_or(0))
    {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql)
            .await
            .map_err(|e| error::db(&format!("applying migration {version}"), e))?;
        tx.execute("INSERT INTO tern_schema (version) VALUES ($1)", &[&version])
            .await
            .map_err(|e| error::db("recording the migration", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| error::db("committing the migration", e))?;
    Ok((before, LATEST))
}

/// A version this tern cannot use: newer than it knows, or not yet migrated.
pub fn check_usable(version: i32) -> io::Result<()> {
    check_not_newer(version)?;
    if version < LATEST {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "PostgreSQL: the queue schema is at version {version}, this tern needs {LATEST}: run `tern queue migrate`"
            ),
        ));
    }
    Ok(())
}

fn check_not_newer(version: i32) -> io::Result<()> {
    if version > LATEST {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "PostgreSQL: the queue schema is at version {version}, newer than this tern knows ({LATEST}): upgrade tern on this node"
            ),
        ));
    }
    Ok(())
}
