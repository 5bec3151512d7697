//! What an operator does to a running (or stopped) tern, written once for both front ends:
//! `tern queue` on the command line and the admin HTTP API ([`tern-admin`]).
//!
//! - [`store`]: the configured queue store (the filesystem spool or PostgreSQL), opened for
//!   the server or for a command.
//! - [`queue`]: list with filters, show one entry with its timeline, flush, hold, release,
//!   bounce and delete, one entry or in bulk; every change under the entry's lock.
//! - [`mailboxes`]: the local Maildirs, listed and read (the console's mail viewer).
//! - [`plain`]: a delivery reply in plain words ("Gmail: DKIM not aligned").

pub mod mailboxes;
pub mod plain;
pub mod queue;
pub mod store;
