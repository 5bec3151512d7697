//! Group commit. Many sessions finishing DATA at the same moment each need their writes made
//! durable before they may answer 250; one flush that *starts* after a caller's write covers
//! it, so concurrent callers share flushes instead of queueing one each. A single caller still
//! gets its own flush, so durability never depends on load.
//!
//! [`DirSyncer`] shares `fsync(dir)` between renames into the same directory.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::durable::fsync_dir;

#[derive(Default)]
struct Progress {
    /// Tickets handed out: one per caller whose rename is already done.
    requested: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    synced: u64,
    running: bool,
}

/// One group-commit point: callers arriving while a flush runs wait for the next one, which
/// covers all of them.
#[derive(Default)]
pub struct GroupCommit {
    progress: Mutex<Progress>,
    done: Condvar,
}

impl GroupCommit {
    /// Runs `flush` (or waits for a flush that started after this call) and returns once
    /// everything the caller did before calling is covered.
    pub fn run(&self, flush: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut p = lock(&self.progress);
        p.requested += 1;
        let ticket = p.requested;
        loop {
            if p.synced >= ticket {
                return Ok(());
            }
            if p.running {
                p = match self.done.wait(p) {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                continue;
            }
            // Lead a round: it covers every ticket handed out before it starts.
            p.running = true;
            let target = p.requested;
            drop(p);
            let result = flush();
            p = lock(&self.progress);
            p.running = false;
            self.done.notify_all();
            match result {
                Ok(()) => p.synced = p.synced.max(target),
                // The others covered by this round will lead a new one themselves.
                Err(e) => return Err(e),
            }
        }
    }
}

/// Shared by every writer of a set of directories (e.g. all Maildir `new/` folders).
#[derive(Default)]
pub struct DirSyncer {
    dirs: Mutex<HashMap<PathBuf, Arc<GroupCommit>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl DirSyncer {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self, dir: &Path) -> Arc<GroupCommit> {
        let mut dirs = lock(&self.dirs);
        if let Some(s) = dirs.get(dir) {
            return s.clone();
        }
        let s = Arc::new(GroupCommit::default());
        dirs.insert(dir.to_path_buf(), s.clone());
        s
    }

    /// Makes every rename into `dir` that completed before this call durable. Blocking.
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let state = self.state(dir);
        let result = state.run(|| fsync_dir(dir));
        self.forget_if_unused(dir, &state);
        result
    }

    /// Drops a directory's entry once nobody is syncing it, so the map holds only the
    /// directories in use: with a catch-all, new mailboxes arrive all the time, and an entry
    /// per Maildir ever written to would grow without bound. A caller that took the entry
    /// just before keeps its own `Arc`; a later caller starts a fresh one, and each still
    /// gets a flush that started after its rename.
    fn forget_if_unused(&self, dir: &Path, state: &Arc<GroupCommit>) {
        let mut dirs = lock(&self.dirs);
        // One reference is the map's, one is ours.
        if Arc::strong_count(state) == 2 {
            dirs.remove(dir);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.dirs).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_callers_all_return_ok() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Arc::new(DirSyncer::new());
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let syncer = syncer.clone();
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for j in 0..20 {
                        std::fs::write(d.join(format!("f{i}-{j}")), b"x").unwrap();
                        syncer.sync(&d).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Every caller is done: nothing is left in the map.
        assert_eq!(syncer.tracked(), 0);
    }

    #[test]
    fn the_map_holds_only_directories_in_use() {
        let root = tempfile::tempdir().unwrap();
        let syncer = DirSyncer::new();
        for i in 0..100 {
            let d = root.path().join(format!("mailbox{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("msg"), b"x").unwrap();
            syncer.sync(&d).unwrap();
        }
        assert_eq!(
            syncer.tracked(),
            0,
            "one entry per directory ever synced would leak"
        );
    }

    #[test]
    fn a_round_covers_every_ticket_handed_out_before_it() {
        let gc = GroupCommit::default();
        for _ in 0..3 {
            gc.run(|| Ok(())).unwrap();
        }
        let p = lock(&gc.progress);
        assert_eq!((p.requested, p.synced, p.running), (3, 3, false));
    }

    #[test]
    fn error_is_reported_and_next_round_retries() {
        let syncer = DirSyncer::new();
        let missing = Path::new("/nonexistent/tern-dirsync-test");
        assert!(syncer.sync(missing).is_err());
        assert!(syncer.sync(missing).is_err());
    }
}
