//! Outbound delivery of queued remote recipients.
//!
//! - [`scheduler`] decides when an entry is tried: it keeps an in-memory index of what is due,
//!   rebuilt from the queue at start-up and fed by the queue's events (new entries, updates,
//!   changes made by `tern queue` in another process), with a slow safety rescan;
//! - [`round`] runs one delivery round for one message: group the due recipients by
//!   destination, attempt each group, record every outcome;
//! - [`route`] finds a destination's next hops, [`connector`] talks SMTP through pooled
//!   connections under the concurrency limits (and LMTP to the local mailbox server, in
//!   `lmtp.rs`, with `[local] delivery = "lmtp"`), [`backoff`] says when to retry;
//! - [`notify`] fails recipients and tells the sender (bounces, delay notices);
//! - [`status`] is every status tern records on its own, and the one conversion of a client
//!   outcome into a stored per-recipient outcome.
//!
//! Storage stays behind [`tern_queue::QueueStore`]: nothing here knows the spool's files.

pub mod backoff;
mod claimer;
pub mod connector;
pub mod dane;
mod lmtp;
pub mod message;
pub mod mta_sts;
pub use tern_delivery::notify;
pub mod round;
pub mod route;
pub mod scheduler;
pub mod status;
pub mod tls_rpt;

pub use scheduler::{spawn, Workers};
