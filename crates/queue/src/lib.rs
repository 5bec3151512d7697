//! tern's durable spool: one durable-write helper (temp file, fsync, rename, fsync directory),
//! the envelope with per-recipient status, the `QueueStore` trait and its filesystem store.
//! Layout and commit protocol: docs/spool-format.md.

pub mod cluster;
pub mod dirsync;
pub mod durable;
pub mod envelope;
pub mod error;
pub mod fault;
pub mod fs_store;
pub mod id;
pub mod outcome;
pub mod spool;
pub mod store;
pub mod time_format;
pub mod timeline;

pub use cluster::{Cluster, HostSlot};
pub use envelope::{
    Attempt, DsnRet, Envelope, MessageDsn, Notice, NotifyOn, RcptDsn, Recipient, RecipientStatus,
    MAX_ATTEMPTS_LOG,
};
pub use error::StoreError;
pub use fault::{FailAt, FaultPoint, Faults, NoFaults};
pub use fs_store::FsStore;
pub use id::{InvalidQueueId, QueueId};
pub use outcome::{RcptClass, RcptOutcome, Remote, Stage, StoredReply, TlsOutcome};
pub use spool::{MessageBody, SpoolFile, Spooled};
pub use store::{EventSink, QueueLock, QueueStore, RecoveryReport, StoreEvent};
pub use timeline::{Event, NoticeKind, Timeline};
