//! The storage side of the queue: what any spool backend (filesystem now, PostgreSQL later)
//! must offer. Scheduling (when to retry) lives elsewhere and only talks to this trait.
//!
//! All methods block on I/O: async callers run them inside `tokio::task::spawn_blocking`.

use std::any::Any;
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use crate::envelope::Envelope;
use crate::id::QueueId;
use crate::spool::{SpoolFile, Spooled};

pub trait QueueStore: Send + Sync {
    /// Durably stores a new entry whose message is the concatenation of `message` (e.g. the
    /// Received header and the body, without copying them together). On `Ok` both the message
    /// and the envelope are fsync'd, file and directory: only then may the server answer 250.
    /// On `Err` the entry does not exist.
    fn commit_parts(&self, env: &Envelope, message: &[&[u8]]) -> io::Result<()>;

    /// [`QueueStore::commit_parts`] for a message in one buffer.
    fn commit(&self, env: &Envelope, message: &[u8]) -> io::Result<()> {
        self.commit_parts(env, &[message])
    }

    /// Commits several entries, sharing fsyncs where the backend can (group commit). One result
    /// per entry, in order; each `Ok` carries the same guarantee as [`QueueStore::commit`].
    fn commit_many(&self, batch: &[(&Envelope, &[&[u8]])]) -> Vec<io::Result<()>> {
        batch
            .iter()
            .map(|(env, msg)| self.commit_parts(env, msg))
            .collect()
    }

    /// A new file to stream a message body into while it arrives (see [`crate::spool`]).
    fn spool(&self) -> io::Result<SpoolFile>;

    /// Durably stores a new entry whose message is `env.prefix` followed by `body` (a file
    /// from [`QueueStore::spool`]), moving the file rather than copying it where the backend
    /// can. Same guarantee as [`QueueStore::commit_parts`]; on `Err` the entry does not exist.
    fn commit_spooled(&self, env: &Envelope, body: Spooled) -> io::Result<()>;

    /// Reads an entry's message (`env.prefix`, then the stored bytes) without loading it whole.
    fn message_reader(&self, env: &Envelope) -> io::Result<Box<dyn Read + Send>>;

    /// Ids of all committed entries, oldest first.
    fn list(&self) -> io::Result<Vec<QueueId>>;

    /// The envelope of a committed entry (`NotFound` if there is none).
    fn load(&self, id: &QueueId) -> io::Result<Envelope>;

    /// Every committed entry's envelope, oldest first (an entry removed meanwhile is left out,
    /// one that cannot be read comes with its error). One query where the backend can.
    fn load_all(&self) -> io::Result<Vec<(QueueId, io::Result<Envelope>)>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|id| {
                let env = self.load(&id);
                (id, env)
            })
            .filter(|(_, env)| !matches!(env, Err(e) if e.kind() == io::ErrorKind::NotFound))
            .collect())
    }

    /// The message bytes of a committed entry: its envelope's `prefix`, then the stored bytes.
    fn read_message(&self, id: &QueueId) -> io::Result<Vec<u8>>;

    /// The first `max` bytes of the message (all of it if shorter): enough for its header
    /// section (`tern_proto::HeaderSection`) without loading a large body.
    fn read_prefix(&self, id: &QueueId, max: usize) -> io::Result<Vec<u8>> {
        let mut message = self.read_message(id)?;
        message.truncate(max);
        Ok(message)
    }

    /// Calls `sink` with every later change to the queue: entries committed, updated or
    /// removed through this store, and (where the backend can see them) changes made by other
    /// processes or nodes. This is how a scheduler keeps its index of due entries without
    /// rescanning; the sink must be cheap (send on a channel) and never block.
    fn subscribe(&self, sink: EventSink);

    /// Takes the entry's exclusive lock without waiting: `Ok(None)` when someone else (a delivery,
    /// a `tern queue` command in another process) holds it, `Err(NotFound)` when there is no such
    /// committed entry. Dropping the [`QueueLock`] releases it; so does the holder's death.
    fn lock(&self, id: &QueueId) -> io::Result<Option<QueueLock>>;

    /// Atomically and durably replaces the envelope of the locked entry (new statuses, held flag).
    /// Needs the lock: an update racing a removal could otherwise resurrect an envelope whose
    /// message is already gone.
    fn update(&self, lock: &QueueLock, env: &Envelope) -> io::Result<()>;

    /// Removes the locked entry: envelope first (durably), then the message, so a crash in
    /// between leaves an orphan message (removed by recovery), never an envelope without message.
    fn remove(&self, lock: QueueLock) -> io::Result<()>;

    /// The side of a store several nodes share (leases, shared limits); `None` for a store
    /// only this node uses, whose scheduler then keeps its own index of due entries.
    fn cluster(&self) -> Option<std::sync::Arc<dyn crate::cluster::Cluster>> {
        None
    }

    /// Startup clean-up, run before the server accepts mail or delivers: removes temp files and
    /// messages without envelope (both are writes that never committed).
    fn recover(&self) -> io::Result<RecoveryReport>;
}

/// A change to the queue, as told to subscribers (see [`QueueStore::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A new entry is committed; `due` is when it first wants a delivery round
    /// ([`crate::Envelope::next_due`]).
    Committed {
        id: QueueId,
        due: Option<SystemTime>,
    },
    /// An entry's envelope was replaced (a round's results, a hold, a flush).
    Updated {
        id: QueueId,
        due: Option<SystemTime>,
    },
    /// An entry is gone (delivered, bounced, deleted).
    Removed { id: QueueId },
    /// Another process (`tern queue`) or node committed, changed or removed this entry; its
    /// new state has to be read from the store.
    ChangedElsewhere { id: QueueId },
    /// Changes may have gone unheard (the connection that hears other nodes was re-made):
    /// anything kept about the queue has to be read again. Only a shared store sends this.
    Resync,
}

/// A subscriber's callback.
pub type EventSink = Arc<dyn Fn(StoreEvent) + Send + Sync>;

/// Proof that the holder has exclusive use of one queue entry. Backend-specific state (an
/// flock'd file, a database lease) lives inside; dropping the value releases the lock.
pub struct QueueLock {
    id: QueueId,
    _guard: Box<dyn Any + Send + Sync>,
}

impl QueueLock {
    /// For backends: wraps whatever keeps the lock held until dropped.
    pub fn new(id: QueueId, guard: impl Any + Send + Sync) -> Self {
        Self {
            id,
            _guard: Box::new(guard),
        }
    }

    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// For backends: their own state inside the lock (a lease token), if it is of type `T`.
    pub fn guard<T: Any>(&self) -> Option<&T> {
        self._guard.downcast_ref::<T>()
    }
}

impl fmt::Debug for QueueLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLock")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What [`QueueStore::recover`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Committed entries found.
    pub entries: usize,
    /// Temp files of interrupted writes, removed.
    pub temp_files_removed: usize,
    /// Messages whose envelope was never committed (or was removed), removed.
    pub orphan_messages_removed: usize,
    /// Envelopes whose message is missing (only possible if something outside tern deleted it):
    /// moved aside so they are not retried forever; the operator should look at them.
    pub quarantined: Vec<QueueId>,
    /// Files that tern did not write (not an id, not a temp file), left alone.
    pub unknown_files: Vec<String>,
}
