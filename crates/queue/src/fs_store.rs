//! The filesystem spool: `<data_dir>/queue/{tmp,msg,env}`, one message file and one JSON
//! envelope per entry; the envelope's rename into env/ is the commit point.
//! Protocol and crash analysis: docs/spool-format.md.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::dirsync::GroupCommit;
use crate::durable::{self, create_dir_all_durable, create_synced, is_temp_name, Staged};
use crate::envelope::Envelope;
use crate::fault::{is_injected_crash, FaultPoint, Faults, NoFaults};
use crate::id::QueueId;
use crate::spool::{self, SpoolFile, Spooled};
use crate::store::{EventSink, QueueLock, QueueStore, RecoveryReport, StoreEvent};

mod control;
pub use control::SOCKET_NAME;

pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    /// `queue/incoming/`: bodies being received (see [`crate::spool`]).
    incoming: PathBuf,
    msg: PathBuf,
    env: PathBuf,
    // Held open for the directory fsyncs: saves an open+close per commit.
    msg_dir: File,
    env_dir: File,
    // Group commit: concurrent commits, updates and removals share each directory's fsync.
    msg_sync: GroupCommit,
    env_sync: GroupCommit,
    // Files of removed entries, kept for reuse by new ones (see FreeFiles).
    free_msgs: FreeFiles,
    free_envs: FreeFiles,
    faults: Arc<dyn Faults>,
    /// Subscribers to this store's changes (the scheduler).
    sinks: control::Sinks,
    /// `queue/control.sock`: where the server hears about other processes' changes.
    socket: PathBuf,
    /// This store is the server's and listens on `socket`; other stores tell it.
    listening: AtomicBool,
}

/// How many emptied files each free list keeps (empty inodes cost next to nothing; enough to
/// cover the entries in flight at 100 sessions); beyond that removed files are unlinked.
const MAX_FREE_FILES: usize = 4096;

/// Recycled spool files. A relayed message used to cost two new inodes at commit and two freed
/// at removal; on ext4 without a journal (the benchmark machine) the allocator then scans past
/// every inode freed in the last ~30 s (`recently_deleted`), under the directory lock, which
/// took over half of the server's CPU at 1,000 msgs/s. A removed entry's files are renamed to
/// temp names and reused (truncate + write + fdatasync: the same durability as a new file).
/// They carry temp names, so recovery deletes whatever is left after a restart.
struct FreeFiles {
    dir: PathBuf,
    names: std::sync::Mutex<Vec<PathBuf>>,
}

impl FreeFiles {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            names: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> Option<PathBuf> {
        self.list().pop()
    }

    /// Moves `path` out of the entry's place for later reuse, emptied when `truncate` (a message:
    /// its blocks are freed now and no content lingers). Falls back to unlinking.
    fn recycle(&self, path: &Path, truncate: bool) -> io::Result<()> {
        if self.list().len() >= MAX_FREE_FILES {
            return remove_if_present(path);
        }
        let free = durable::temp_name(&self.dir, "free");
        match fs::rename(path, &free) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => return remove_if_present(path),
        }
        if truncate {
            let emptied = fs::OpenOptions::new()
                .write(true)
                .open(&free)
                .and_then(|f| f.set_len(0));
            if emptied.is_err() {
                let _ = fs::remove_file(&free);
                return Ok(());
            }
        }
        self.list().push(free);
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl fmt::Debug for FsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FsStore {
    /// Opens (creating with mode 0700 if needed) the spool under `<data_dir>/queue`.
    pub fn open(data_dir: &Path) -> io::Result<FsStore> {
        Self::open_with_faults(data_dir, Arc::new(NoFaults))
    }

    /// [`FsStore::open`] with a fault-injection seam, for crash and full-disk tests.
    pub fn open_with_faults(data_dir: &Path, faults: Arc<dyn Faults>) -> io::Result<FsStore> {
        let root = data_dir.join("queue");
        let (tmp, msg, env) = (root.join("tmp"), root.join("msg"), root.join("env"));
        let incoming = root.join("incoming");
        for dir in [&tmp, &msg, &env, &incoming] {
            create_dir_all_durable(dir).map_err(|e| ctx(e, "creating", dir))?;
        }
        let msg_dir = File::open(&msg).map_err(|e| ctx(e, "opening", &msg))?;
        let env_dir = File::open(&env).map_err(|e| ctx(e, "opening", &env))?;
        let (free_msgs, free_envs) = (FreeFiles::new(msg.clone()), FreeFiles::new(tmp.clone()));
        Ok(FsStore {
            socket: root.join(SOCKET_NAME),
            root,
            tmp,
            incoming,
            msg,
            env,
            msg_dir,
            env_dir,
            msg_sync: GroupCommit::default(),
            env_sync: GroupCommit::default(),
            free_msgs,
            free_envs,
            faults,
            sinks: control::Sinks::default(),
            listening: AtomicBool::new(false),
        })
    }

    /// For the server: hear about entries that other processes (`tern queue`) commit, change
    /// or remove, as [`StoreEvent::ChangedElsewhere`] events to this store's subscribers.
    pub fn listen_for_other_processes(&self) -> io::Result<()> {
        control::listen(&self.socket, self.sinks.clone())
            .map_err(|e| ctx(e, "listening on", &self.socket))?;
        self.listening.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Tells this process's subscribers, and a listening server elsewhere, about a change.
    fn changed(&self, event: StoreEvent) {
        if !self.listening.load(Ordering::Relaxed) {
            let id = match &event {
                StoreEvent::Committed { id, .. }
                | StoreEvent::Updated { id, .. }
                | StoreEvent::Removed { id }
                | StoreEvent::ChangedElsewhere { id } => id,
                // Never sent by this store.
                StoreEvent::Resync => return self.sinks.emit(event),
            };
            control::tell(&self.socket, id);
        }
        self.sinks.emit(event);
    }

    /// Removes the bodies left in `queue/incoming/` by an earlier run (the server, at start-up,
    /// before it accepts mail: none of them was acknowledged). Returns how many.
    pub fn clear_incoming(&self) -> io::Result<usize> {
        spool::clear(&self.incoming).map_err(|e| ctx(e, "cleaning", &self.incoming))
    }

    /// `<data_dir>/queue`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an entry's message bytes are (for readers that want to stream rather than load).
    pub fn message_path(&self, id: &QueueId) -> PathBuf {
        self.msg.join(id.as_str())
    }

    pub fn envelope_path(&self, id: &QueueId) -> PathBuf {
        self.env.join(id.as_str())
    }

    /// Recovery that is safe while other processes use the spool: only temp files and orphan
    /// messages untouched for `min_age` are removed (a younger one may be a commit in flight).
    /// `Duration::ZERO` is [`QueueStore::recover`]: everything, for startup only.
    pub fn recover_older_than(&self, min_age: Duration) -> io::Result<RecoveryReport> {
        let now = SystemTime::now();
        let mut report = RecoveryReport::default();
        for dir in [&self.tmp, &self.msg, &self.env] {
            report.temp_files_removed +=
                durable::remove_temp_files(dir, min_age).map_err(|e| ctx(e, "cleaning", dir))?;
        }

        let mut envelopes: HashSet<QueueId> = HashSet::new();
        for name in file_names(&self.env)? {
            match name.parse::<QueueId>() {
                Ok(id) => {
                    envelopes.insert(id);
                }
                Err(_) if is_temp_name(&name) => {}
                Err(_) => report.unknown_files.push(format!("env/{name}")),
            }
        }

        let mut with_message: HashSet<QueueId> = HashSet::new();
        for name in file_names(&self.msg)? {
            let Ok(id) = name.parse::<QueueId>() else {
                if !is_temp_name(&name) {
                    report.unknown_files.push(format!("msg/{name}"));
                }
                continue;
            };
            if envelopes.contains(&id) {
                with_message.insert(id);
                continue;
            }
            // A message without envelope never committed (or its removal was cut short). Look
            // again right before deleting: a concurrent commit may have just finished.
            let path = self.message_path(&id);
            if self.envelope_path(&id).exists()
                || (!min_age.is_zero() && !durable::older_than(&path, now, min_age))
            {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => report.orphan_messages_removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx(e, "removing", &path)),
            }
        }

        let mut broken: Vec<QueueId> = envelopes.difference(&with_message).cloned().collect();
        broken.sort_unstable();
        for id in broken {
            // tern never leaves an envelope without its message (message first on commit,
            // envelope first on removal): someone deleted it. Keep the envelope for the operator
            // but out of the queue, or it would be retried forever.
            if self.message_path(&id).exists() {
                with_message.insert(id);
                continue;
            }
            let corrupt = self.root.join("corrupt");
            create_dir_all_durable(&corrupt).map_err(|e| ctx(e, "creating", &corrupt))?;
            let to = corrupt.join(format!("{id}.env"));
            match fs::rename(self.envelope_path(&id), &to) {
                Ok(()) => report.quarantined.push(id),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx(e, "quarantining into", &to)),
            }
        }
        report.entries = with_message.len();
        Ok(report)
    }

    /// Steps 2-4 of a commit, for entries whose message files are written (`results` says
    /// which): fsync `msg/`, publish each envelope, fsync `env/`.
    fn publish_envelopes(
        &self,
        envelopes: &[&Envelope],
        mut results: Vec<io::Result<()>>,
    ) -> Vec<io::Result<()>> {
        // 2. One fsync makes every new message name durable.
        if results.iter().any(Result::is_ok) {
            if let Err(e) = self.sync_dir(&self.msg_dir, &self.msg_sync, &self.msg) {
                if is_injected_crash(&e) {
                    return all_crashed(results, e);
                }
                for (i, env) in envelopes.iter().enumerate() {
                    if results[i].is_ok() {
                        let _ = fs::remove_file(self.message_path(&env.id));
                        results[i] = Err(copy_error(&e));
                    }
                }
                return results;
            }
        }
        // 3. Envelopes: each rename commits its entry.
        for (i, env) in envelopes.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let published = self.stage_envelope(env).and_then(|staged| {
                let dest = self.envelope_path(&env.id);
                staged
                    .publish(&dest)
                    .map_err(|e| ctx(e, "renaming envelope to", &dest))
            });
            if let Err(e) = published {
                if is_injected_crash(&e) {
                    return all_crashed(results, e);
                }
                // Not committed: the message is an orphan; remove it now rather than at recovery.
                let _ = fs::remove_file(self.message_path(&env.id));
                results[i] = Err(e);
            }
        }
        // 4. One fsync makes every commit durable.
        if results.iter().any(Result::is_ok) {
            if let Err(e) = self.sync_dir(&self.env_dir, &self.env_sync, &self.env) {
                if is_injected_crash(&e) {
                    return all_crashed(results, e);
                }
                // The client will get a 4xx and retry: take the entries back so that a later
                // delivery of these envelopes cannot duplicate the retried message.
                let committed: Vec<&QueueId> = envelopes
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(env, _)| &env.id)
                    .collect();
                for id in &committed {
                    let _ = fs::remove_file(self.envelope_path(id));
                }
                // Messages go only once the envelopes' removal is durable; otherwise they stay
                // as orphans for recovery (never an envelope without its message).
                let undone = self.env_dir.sync_all().is_ok();
                for id in &committed {
                    if undone {
                        let _ = fs::remove_file(self.message_path(id));
                    }
                }
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(copy_error(&e));
                }
            }
        }
        for (env, r) in envelopes.iter().zip(&results) {
            if r.is_ok() {
                self.changed(StoreEvent::Committed {
                    id: env.id.clone(),
                    due: env.next_due(),
                });
            }
        }
        results
    }

    /// Step 4 of a commit, and of update/remove: make env/ entries durable.
    fn sync_dir(&self, dir: &File, group: &GroupCommit, path: &Path) -> io::Result<()> {
        self.faults.check(FaultPoint::AfterRename, path)?;
        group
            .run(|| dir.sync_all())
            .map_err(|e| ctx(e, "fsyncing directory", path))
    }

    /// Step 1 of a commit for one message: a recycled file when there is one, else a new file.
    fn write_message(&self, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
        if let Some(free) = self.free_msgs.take() {
            match durable::rename_noreplace(&free, path) {
                Ok(()) => return durable::rewrite_synced(path, parts, &*self.faults),
                // Gone (recovery ran) or no RENAME_NOREPLACE here: a new file instead.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&free);
                    return Err(e);
                }
                Err(_) => {
                    let _ = fs::remove_file(&free);
                }
            }
        }
        create_synced(path, parts, &*self.faults)
    }

    fn stage_envelope(&self, env: &Envelope) -> io::Result<Staged> {
        let json = env.to_json().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("serialising envelope {}: {e}", env.id),
            )
        })?;
        let staged = match self.free_envs.take() {
            Some(free) => Staged::rewrite(free, &[&json], &*self.faults),
            None => Staged::write(&self.tmp, env.id.as_str(), &[&json], &*self.faults),
        };
        staged.map_err(|e| ctx(e, "writing envelope for", &self.envelope_path(&env.id)))
    }
}

impl QueueStore for FsStore {
    fn commit_parts(&self, env: &Envelope, message: &[&[u8]]) -> io::Result<()> {
        let mut results = self.commit_many(&[(env, message)]);
        results
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("commit produced no result")))
    }

    /// The commit protocol, batched so that N entries share two directory fsyncs:
    /// 1. each message: create msg/<id> (O_EXCL), write, fdatasync;
    /// 2. fsync msg/ (the messages' names are durable);
    /// 3. each envelope: write tmp/<temp>, fdatasync, rename to env/<id> (the commit point);
    /// 4. fsync env/.
    ///
    /// Message before envelope, with a directory fsync in between, so no crash can leave an
    /// envelope whose message is missing or partial.
    fn commit_many(&self, batch: &[(&Envelope, &[&[u8]])]) -> Vec<io::Result<()>> {
        // 1. Messages.
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(batch.len());
        for (env, parts) in batch {
            let path = self.message_path(&env.id);
            let r = self
                .write_message(&path, parts)
                .map_err(|e| ctx(e, "writing message", &path));
            if let Err(e) = &r {
                if is_injected_crash(e) {
                    // A dead process writes nothing more.
                    let e = copy_error(e);
                    return batch.iter().map(|_| Err(copy_error(&e))).collect();
                }
            }
            results.push(r);
        }
        let envelopes: Vec<&Envelope> = batch.iter().map(|(env, _)| *env).collect();
        self.publish_envelopes(&envelopes, results)
    }

    /// A body streamed to `queue/incoming/` during DATA becomes the entry's message file by a
    /// rename (no second copy); `env.prefix` holds the trace fields in front of it. Then the
    /// same steps 2-4 as [`QueueStore::commit_many`].
    fn commit_spooled(&self, env: &Envelope, body: Spooled) -> io::Result<()> {
        let path = self.message_path(&env.id);
        let r = self
            .faults
            .check(FaultPoint::BeforeWrite, &path)
            .and_then(|()| body.sync())
            .and_then(|()| self.faults.check(FaultPoint::AfterFsync, &path))
            .and_then(|()| body.rename_to(&path))
            .map_err(|e| ctx(e, "renaming spooled message to", &path));
        if let Err(e) = &r {
            if is_injected_crash(e) {
                return Err(copy_error(e));
            }
        }
        self.publish_envelopes(&[env], vec![r])
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("commit produced no result")))
    }

    fn spool(&self) -> io::Result<SpoolFile> {
        SpoolFile::create(&self.incoming)
            .map_err(|e| ctx(e, "creating a spool file in", &self.incoming))
    }

    fn message_reader(&self, env: &Envelope) -> io::Result<Box<dyn Read + Send>> {
        let path = self.message_path(&env.id);
        let file = File::open(&path).map_err(|e| ctx(e, "reading", &path))?;
        let prefix = io::Cursor::new(env.prefix.clone().into_bytes());
        Ok(Box::new(prefix.chain(file)))
    }

    fn list(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = file_names(&self.env)?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        // uuid v7: lexical order is time order.
        ids.sort_unstable();
        Ok(ids)
    }

    fn load(&self, id: &QueueId) -> io::Result<Envelope> {
        let path = self.envelope_path(id);
        let bytes = fs::read(&path).map_err(|e| ctx(e, "reading", &path))?;
        let env = Envelope::from_json(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("envelope {}: {e}", path.display()),
            )
        })?;
        if env.id != *id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("envelope {} holds id {}", path.display(), env.id),
            ));
        }
        Ok(env)
    }

    /// `prefix` (from the envelope) followed by the message file.
    fn read_message(&self, id: &QueueId) -> io::Result<Vec<u8>> {
        let env = self.load(id)?;
        let path = self.message_path(id);
        let file = fs::read(&path).map_err(|e| ctx(e, "reading", &path))?;
        if env.prefix.is_empty() {
            return Ok(file);
        }
        let mut message = env.prefix.into_bytes();
        message.extend_from_slice(&file);
        Ok(message)
    }

    /// Reads only the first `max` bytes.
    fn read_prefix(&self, id: &QueueId, max: usize) -> io::Result<Vec<u8>> {
        let env = self.load(id)?;
        let mut out = Vec::new();
        self.message_reader(&env)?
            .take(max as u64)
            .read_to_end(&mut out)
            .map_err(|e| ctx(e, "reading", &self.message_path(id)))?;
        Ok(out)
    }

    fn subscribe(&self, sink: EventSink) {
        self.sinks.add(sink);
    }

    /// flock(2) on the message file: it is never replaced (unlike the envelope, whose inode
    /// changes on every update), it lives exactly as long as the entry, and the kernel drops
    /// the lock when the holder dies, so a kill -9 never leaves an entry locked.
    fn lock(&self, id: &QueueId) -> io::Result<Option<QueueLock>> {
        let path = self.message_path(id);
        let file = File::open(&path).map_err(|e| ctx(e, "locking", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(ctx(e, "locking", &path)),
        }
        // Committed, and not removed while we were opening the file? (remove() unlinks the
        // envelope while it holds the lock.)
        let env = self.envelope_path(id);
        fs::symlink_metadata(&env).map_err(|e| ctx(e, "locking", &env))?;
        Ok(Some(QueueLock::new(id.clone(), file)))
    }

    fn update(&self, lock: &QueueLock, env: &Envelope) -> io::Result<()> {
        if *lock.id() != env.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("update of {} under the lock of {}", env.id, lock.id()),
            ));
        }
        let dest = self.envelope_path(&env.id);
        self.stage_envelope(env)?
            .publish(&dest)
            .map_err(|e| ctx(e, "renaming envelope to", &dest))?;
        self.sync_dir(&self.env_dir, &self.env_sync, &self.env)?;
        self.changed(StoreEvent::Updated {
            id: env.id.clone(),
            due: env.next_due(),
        });
        Ok(())
    }

    fn remove(&self, lock: QueueLock) -> io::Result<()> {
        let id = lock.id();
        let env = self.envelope_path(id);
        self.free_envs
            .recycle(&env, false)
            .map_err(|e| ctx(e, "removing", &env))?;
        // The envelope's removal must be durable before the message goes.
        self.env_sync
            .run(|| self.env_dir.sync_all())
            .map_err(|e| ctx(e, "fsyncing directory", &self.env))?;
        let msg = self.message_path(id);
        self.free_msgs
            .recycle(&msg, true)
            .map_err(|e| ctx(e, "removing", &msg))?;
        self.changed(StoreEvent::Removed { id: id.clone() });
        Ok(())
        // `lock` drops here, after the message is gone.
    }

    fn recover(&self) -> io::Result<RecoveryReport> {
        self.recover_older_than(Duration::ZERO)
    }
}

fn file_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| ctx(e, "listing", dir))? {
        let entry = entry.map_err(|e| ctx(e, "listing", dir))?;
        // Non-UTF-8 names are not ours; they cannot be ids.
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Says which file an I/O error is about, keeping its kind (StorageFull stays StorageFull).
fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    if is_injected_crash(&e) {
        return e;
    }
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// io::Error is not Clone; a batch-wide failure is reported to every entry.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// After a simulated crash nothing else runs: every entry of the batch reports it.
fn all_crashed(results: Vec<io::Result<()>>, e: io::Error) -> Vec<io::Result<()>> {
    results.into_iter().map(|_| Err(copy_error(&e))).collect()
}

#[cfg(test)]
mod tests;
