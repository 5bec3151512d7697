//! PostgreSQL and pool errors as the `io::Error`s the queue trait speaks, classified so the
//! session picks the right reply: a full database disk is `452 4.3.1` (like a full spool),
//! anything else `451 4.3.0`, and the text names the database so the log says where to look.

use std::io;

use tokio_postgres::error::SqlState;

pub(crate) fn db(what: &str, e: tokio_postgres::Error) -> io::Error {
    let kind = match e.code() {
        Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => {
            io::ErrorKind::StorageFull
        }
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => io::ErrorKind::AlreadyExists,
        // Class 08 (connection exception) and 57P01-03 (the server shutting down, crashed,
        // or starting): the database is away for now, not the statement wrong.
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57P") => {
            io::ErrorKind::ConnectionAborted
        }
        _ if e.is_closed() => io::ErrorKind::ConnectionAborted,
        None if std::error::Error::source(&e).is_some_and(|s| s.is::<io::Error>()) => {
            io::ErrorKind::ConnectionRefused
        }
        _ => io::ErrorKind::Other,
    };
    let detail = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => match std::error::Error::source(&e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    };
    io::Error::new(kind, format!("PostgreSQL, {what}: {detail}"))
}

pub(crate) fn pool(e: deadpool_postgres::PoolError) -> io::Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => db("connecting", e),
        PoolError::Timeout(_) => io::Error::new(
            io::ErrorKind::TimedOut,
            "PostgreSQL: no database connection within the time allowed (is the server up and accepting connections?)",
        ),
        other => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("PostgreSQL: cannot get a connection: {other}"),
        ),
    }
}

pub(crate) fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("PostgreSQL, {what}: no answer within the time allowed"),
    )
}

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PostgreSQL, {what}: {detail}"),
    )
}

/// Whether `e` says the database is away for now (restarting, unreachable, not answering),
/// so the same statement is worth sending again once it is back.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut
    )
}
