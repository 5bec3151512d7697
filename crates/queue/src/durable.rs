//! The one durable-write helper: a file becomes visible under its final name only complete and
//! fsync'd. Temp file (O_EXCL) -> write -> fdatasync -> rename -> fsync the directory.
//!
//! Why each step: rename(2) is atomic, so readers see the old state or the whole new file, never
//! a prefix; the file fsync makes the bytes durable before the name points at them (ext4
//! data=writeback, XFS and btrfs may otherwise persist the rename first, leaving an empty or
//! garbage file after power loss); the directory fsync makes the new name itself durable
//! (fsync(2): "calling fsync() on the file does not ensure that the entry in the directory
//! containing the file has also reached disk").

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::fault::{is_injected_crash, FaultPoint, Faults, NoFaults};

/// Every temp file starts with this, so recovery can tell leftovers from real entries and
/// directory listings can skip them.
pub const TEMP_PREFIX: &str = ".tmp.";
/// Spool and mailbox files hold other people's mail: owner-only.
pub const FILE_MODE: u32 = 0o600;
/// Directories created by tern: owner-only.
pub const DIR_MODE: u32 = 0o700;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Durably creates `dir/name` holding the concatenation of `parts`. On `Ok` the file and its
/// directory entry are on disk. On `Err` nothing is left under `name` (best effort after a
/// failed directory fsync) and no temp file remains. `name` must be fresh (an id): an existing
/// file of that name would be replaced.
pub fn write_new(dir: &Path, name: &str, parts: &[&[u8]]) -> io::Result<()> {
    write_new_with(dir, name, parts, &NoFaults)
}

/// [`write_new`] with a fault-injection seam.
pub fn write_new_with(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    faults: &dyn Faults,
) -> io::Result<()> {
    write_and_publish(dir, name, parts, faults, true)
}

/// Durably and atomically replaces (or creates) `dir/name`: readers and a crash see either the
/// old content or all of the new one. On `Err` before the rename the old file is untouched.
pub fn replace(dir: &Path, name: &str, parts: &[&[u8]]) -> io::Result<()> {
    replace_with(dir, name, parts, &NoFaults)
}

/// [`replace`] with a fault-injection seam.
pub fn replace_with(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    faults: &dyn Faults,
) -> io::Result<()> {
    write_and_publish(dir, name, parts, faults, false)
}

fn write_and_publish(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
    faults: &dyn Faults,
    undo_on_dir_failure: bool,
) -> io::Result<()> {
    check_name(name)?;
    let dest = dir.join(name);
    let staged = Staged::write(dir, name, parts, faults)?;
    staged.publish(&dest)?;
    let synced = faults
        .check(FaultPoint::AfterRename, &dest)
        .and_then(|()| fsync_dir(dir));
    if let Err(e) = synced {
        // The name is visible but maybe not durable. For a new file, take it back so that `Err`
        // reliably means "not written" (a 4xx, the client retries; no duplicate). A replaced
        // file cannot be taken back: the old content is gone.
        if undo_on_dir_failure && !is_injected_crash(&e) {
            let _ = fs::remove_file(&dest);
        }
        return Err(e);
    }
    Ok(())
}

/// A final name must be one plain path component that recovery would not take for a temp file.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || is_temp_name(name)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid file name for a durable write: {name:?}"),
        ));
    }
    Ok(())
}

/// True for names made by [`Staged::write`] (recovery removes them).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// A complete, fsync'd temp file waiting to be renamed into place. Splitting "write" from
/// "publish" from "fsync the directory" lets a batch share one directory fsync (group commit).
#[derive(Debug)]
#[must_use = "a staged file must be published or discarded"]
pub struct Staged {
    path: PathBuf,
}

impl Staged {
    /// Creates a unique temp file in `tmp_dir` (same filesystem as the destination), writes
    /// `parts` and fdatasyncs it. `hint` only makes the temp name readable. On error the temp
    /// file is removed, unless the error is a simulated crash.
    pub fn write(
        tmp_dir: &Path,
        hint: &str,
        parts: &[&[u8]],
        faults: &dyn Faults,
    ) -> io::Result<Staged> {
        let (file, path) = create_temp(tmp_dir, hint)?;
        match fill_and_sync(file, &path, parts, faults) {
            Ok(()) => Ok(Staged { path }),
            Err(e) => {
                if !is_injected_crash(&e) {
                    let _ = fs::remove_file(&path);
                }
                Err(e)
            }
        }
    }

    /// [`Staged::write`] into an existing temp file of ours (a recycled one) instead of a new one.
    pub fn rewrite(path: PathBuf, parts: &[&[u8]], faults: &dyn Faults) -> io::Result<Staged> {
        rewrite_synced(&path, parts, faults)?;
        Ok(Staged { path })
    }

    /// Where the temp file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically renames the temp file to `dest` (replacing any file there). The caller still
    /// has to fsync `dest`'s directory. On error the temp file is removed.
    pub fn publish(self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest).inspect_err(|_| {
            let _ = fs::remove_file(&self.path);
        })
    }

    /// Removes the temp file (best effort: recovery removes what is left).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Creates `path` exclusively, writes `parts`, fdatasyncs; no rename. Only for files whose
/// visibility is gated by another commit point (a spool message is not an entry until its
/// envelope exists), so a partial file there is harmless and recovery removes it. The caller
/// fsyncs the directory. On error the file is removed, unless the error is a simulated crash.
pub fn create_synced(path: &Path, parts: &[&[u8]], faults: &dyn Faults) -> io::Result<()> {
    let file = open_exclusive(path)?;
    fill_and_sync(file, path, parts, faults).inspect_err(|e| {
        if !is_injected_crash(e) {
            let _ = fs::remove_file(path);
        }
    })
}

/// Writes `parts` over an existing file of ours at `path` (a recycled spool file): truncates,
/// writes, fdatasyncs. Same guarantees and clean-up as [`create_synced`], without allocating a
/// new inode (see `FreeFiles` in fs_store.rs for why that matters).
pub fn rewrite_synced(path: &Path, parts: &[&[u8]], faults: &dyn Faults) -> io::Result<()> {
    let file = OpenOptions::new().write(true).truncate(true).open(path)?;
    fill_and_sync(file, path, parts, faults).inspect_err(|e| {
        if !is_injected_crash(e) {
            let _ = fs::remove_file(path);
        }
    })
}

/// This process's id, for unique file names. Asked once: `std::process::id` is a system call
/// each time (glibc no longer caches it), and every stored message names a file or two.
pub fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// A fresh temp-file name in `dir` (nothing is created). Recovery removes files so named.
pub fn temp_name(dir: &Path, hint: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{TEMP_PREFIX}{hint}.{}.{n}.{:016x}",
        pid(),
        rand::random::<u64>()
    ))
}

/// rename(2) that fails with `AlreadyExists` instead of replacing `to` (Linux renameat2 with
/// RENAME_NOREPLACE): the O_EXCL of a rename, so reusing a file can never overwrite an entry.
/// Filesystems without the flag give `Unsupported`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            Err(io::Error::new(io::ErrorKind::Unsupported, e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

fn fill_and_sync(
    mut file: File,
    path: &Path,
    parts: &[&[u8]],
    faults: &dyn Faults,
) -> io::Result<()> {
    faults.check(FaultPoint::BeforeWrite, path)?;
    write_parts(&mut file, parts)?;
    faults.check(FaultPoint::AfterWrite, path)?;
    // fdatasync is enough: it also flushes the metadata needed to read the data back (the
    // size of this new file), and skips the timestamps.
    file.sync_data()?;
    faults.check(FaultPoint::AfterFsync, path)
}

fn open_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true) // O_CREAT|O_EXCL: never write into someone else's file
        .mode(FILE_MODE)
        .open(path)
}

/// Opens a fresh temp file `<TEMP_PREFIX><hint>.<pid>.<counter>.<random>` in `dir`. The random
/// part keeps names unique even across processes sharing a pid (containers on one volume).
fn create_temp(dir: &Path, hint: &str) -> io::Result<(File, PathBuf)> {
    let hint: String = hint
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(48)
        .collect();
    let pid = pid();
    let mut last = None;
    for _ in 0..8 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{TEMP_PREFIX}{hint}.{pid}.{n}.{:016x}",
            rand::random::<u64>()
        ));
        match open_exclusive(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no unique temp file name")))
}

/// Writes all of `parts` in order with as few syscalls as possible (one writev usually).
pub fn write_parts<W: Write + ?Sized>(out: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    if let [single] = parts {
        return out.write_all(single);
    }
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    // Each round writes at least one byte or returns: bounded by the total length.
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fsyncs a directory so the names created, renamed or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `mkdir -p` with mode 0700 that also fsyncs the parent of every directory it creates: a new
/// directory whose own entry is lost in a crash would take every fsync'd file in it along.
/// An existing path is left as it is (if it is not a directory, the next operation inside it
/// fails with ENOTDIR and names it).
pub fn create_dir_all_durable(path: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => fsync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Recursion depth is bounded by the number of components in `path`.
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or(e)?;
            create_dir_all_durable(parent)?;
            match DirBuilder::new().mode(DIR_MODE).create(path) {
                Ok(()) => fsync_dir(parent),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the temp files ([`TEMP_PREFIX`]) in `dir` last modified at least `min_age` ago
/// (`Duration::ZERO`: all of them; only safe when no writer is running). Returns how many.
pub fn remove_temp_files(dir: &Path, min_age: Duration) -> io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_str().is_some_and(is_temp_name) {
            continue;
        }
        if !min_age.is_zero() && !older_than(&entry.path(), now, min_age) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// True when `path` was last modified at least `min_age` before `now` (false if unknown).
pub(crate) fn older_than(path: &Path, now: SystemTime, min_age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age >= min_age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FailAt;
    use std::os::unix::fs::PermissionsExt;

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_new_stores_exactly_the_parts_owner_only_with_no_temp_left() {
        let d = tempfile::tempdir().unwrap();
        write_new(d.path(), "a", &[b"Received: x\r\n", b"", b"body\r\n"]).unwrap();
        assert_eq!(
            fs::read(d.path().join("a")).unwrap(),
            b"Received: x\r\nbody\r\n"
        );
        assert_eq!(names(d.path()), ["a"]);
        let mode = fs::metadata(d.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn many_parts_beyond_iov_max_are_written_in_order() {
        let d = tempfile::tempdir().unwrap();
        let owned: Vec<Vec<u8>> = (0..3000u32).map(|i| format!("{i},").into_bytes()).collect();
        let parts: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        write_new(d.path(), "m", &parts).unwrap();
        assert_eq!(fs::read(d.path().join("m")).unwrap(), owned.concat());
    }

    #[test]
    fn unsafe_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b", "../x", ".tmp.x", "a\0b"] {
            let e = write_new(d.path(), bad, &[b"x"]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn replace_swaps_the_content_atomically() {
        let d = tempfile::tempdir().unwrap();
        write_new(d.path(), "e", &[b"old"]).unwrap();
        replace(d.path(), "e", &[b"new ", b"content"]).unwrap();
        assert_eq!(fs::read(d.path().join("e")).unwrap(), b"new content");
        assert_eq!(names(d.path()), ["e"]);
    }

    #[test]
    fn an_error_at_any_step_leaves_no_file_at_all() {
        for point in FaultPoint::ALL {
            let d = tempfile::tempdir().unwrap();
            let f = FailAt::os_error(point, ENOSPC);
            let e = write_new_with(d.path(), "a", &[b"hello"], &f).unwrap_err();
            assert!(f.fired());
            assert_eq!(e.raw_os_error(), Some(ENOSPC), "{point:?}");
            assert!(
                names(d.path()).is_empty(),
                "{point:?}: {:?}",
                names(d.path())
            );
        }
    }

    #[test]
    fn a_failed_replace_keeps_the_old_or_has_the_new_content_never_a_mix() {
        for point in FaultPoint::ALL {
            let d = tempfile::tempdir().unwrap();
            write_new(d.path(), "e", &[b"old"]).unwrap();
            let f = FailAt::os_error(point, EIO);
            replace_with(d.path(), "e", &[b"new"], &f).unwrap_err();
            let want: &[u8] = if point == FaultPoint::AfterRename {
                b"new"
            } else {
                b"old"
            };
            assert_eq!(fs::read(d.path().join("e")).unwrap(), want, "{point:?}");
            assert_eq!(names(d.path()), ["e"], "{point:?}");
        }
    }

    #[test]
    fn a_crash_at_any_step_leaves_the_whole_file_or_only_temp_files_that_recovery_removes() {
        let content = b"complete message\r\n".repeat(100);
        for point in FaultPoint::ALL {
            let d = tempfile::tempdir().unwrap();
            let f = FailAt::crash(point);
            write_new_with(d.path(), "a", &[&content], &f).unwrap_err();
            for name in names(d.path()) {
                if name == "a" {
                    assert_eq!(fs::read(d.path().join("a")).unwrap(), content, "{point:?}");
                } else {
                    assert!(is_temp_name(&name), "{point:?}: stray {name}");
                }
            }
            remove_temp_files(d.path(), Duration::ZERO).unwrap();
            let left = names(d.path());
            let want: &[&str] = if point == FaultPoint::AfterRename {
                &["a"]
            } else {
                &[]
            };
            assert_eq!(left, want, "{point:?}");
        }
    }

    #[test]
    fn remove_temp_files_spares_young_files_and_real_entries() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(".tmp.x.1.2.3"), b"partial").unwrap();
        fs::write(d.path().join("entry"), b"keep").unwrap();
        assert_eq!(
            remove_temp_files(d.path(), Duration::from_secs(3600)).unwrap(),
            0
        );
        assert_eq!(remove_temp_files(d.path(), Duration::ZERO).unwrap(), 1);
        assert_eq!(names(d.path()), ["entry"]);
    }

    #[test]
    fn create_dir_all_durable_makes_owner_only_dirs_and_reports_a_file_in_the_way() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        create_dir_all_durable(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            let mode = fs::metadata(d.path().join(p)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{p}");
        }
        fs::write(d.path().join("file"), b"").unwrap();
        let e = create_dir_all_durable(&d.path().join("file/sub/x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn create_synced_refuses_to_overwrite_and_cleans_up_on_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m");
        create_synced(&p, &[b"one"], &NoFaults).unwrap();
        let e = create_synced(&p, &[b"two"], &NoFaults).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let q = d.path().join("n");
        create_synced(&q, &[b"x"], &FailAt::os_error(FaultPoint::AfterWrite, EIO)).unwrap_err();
        assert!(!q.exists());
    }
}
