//! Message bodies streamed to disk while DATA arrives, so that a large message never sits in
//! memory (a session holds one chunk at a time). A [`SpoolFile`] is appended to as the body
//! arrives; [`SpoolFile::finish`] fdatasyncs it into a [`Spooled`] body, which the queue
//! renames into place as an entry's message (no second copy) and local delivery reads to write
//! the Maildir copies.
//!
//! The files live in `<data_dir>/queue/incoming/`, on the queue's filesystem (the commit is a
//! rename into `msg/`). A file there is never part of an entry: until its envelope is written,
//! nothing points at it, so one left by a crash (or a `kill -9` mid-DATA) is garbage that no
//! client was told is safe, and the server removes them all when it starts
//! ([`crate::FsStore::clear_incoming`]). Other processes (`tern queue`) never touch the folder.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::durable::{self, FILE_MODE};

/// A body being written. Dropped before [`SpoolFile::finish`] (the client went away, the
/// message was refused), it removes its file.
#[derive(Debug)]
pub struct SpoolFile {
    file: Option<File>,
    path: PathBuf,
    len: u64,
}

impl SpoolFile {
    /// Creates a new, empty spool file in `dir` (O_EXCL, mode 0600).
    pub fn create(dir: &Path) -> io::Result<SpoolFile> {
        // The random part makes a collision next to impossible; O_EXCL makes one harmless.
        let mut last = None;
        for _ in 0..8 {
            let path = durable::temp_name(dir, "incoming");
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(SpoolFile {
                        file: Some(file),
                        path,
                        len: 0,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no unique spool file name")))
    }

    /// Appends message bytes. On error (ENOSPC) the file is useless: drop it.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool file already finished"))?;
        file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Octets written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body is complete: hand it on. It is not synced here: a message delivered only to
    /// local mailboxes is made durable in its Maildir copies, and this file is removed before
    /// the kernel would write it out; only the queue commit, which keeps the file as the
    /// entry's message, fdatasyncs it ([`Spooled::sync`]).
    pub fn finish(mut self) -> io::Result<Spooled> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("spool file already finished"))?;
        let path = std::mem::take(&mut self.path);
        Ok(Spooled {
            path,
            len: self.len,
            file,
        })
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A complete, fsync'd message body on disk (CRLF line ends, without the trace fields tern
/// prepends). Dropped without being committed, it removes its file.
#[derive(Debug)]
pub struct Spooled {
    path: PathBuf,
    len: u64,
    /// Kept open for [`Spooled::sync`].
    file: File,
}

impl Spooled {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the body from the start.
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.path)
    }

    /// The whole body in memory, for the few consumers that need it as one slice (DKIM
    /// signing); they bound how many do this at once.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.open()?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Calls `f` with the body in chunks of at most `chunk` octets, in order.
    pub fn for_each_chunk(
        &self,
        chunk: usize,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut file = self.open()?;
        let mut buf = vec![0u8; chunk.max(1)];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            f(&buf[..n])?;
        }
    }

    /// fdatasync: the bytes, and the size needed to read them back, are on disk. The directory
    /// entry is not synced: only the rename into `msg/`, whose directory the commit fsyncs, has
    /// to survive a crash.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Renames the body to `dest` (which must not exist: RENAME_NOREPLACE where the filesystem
    /// has it). On success the file is no longer ours to remove.
    pub(crate) fn rename_to(mut self, dest: &Path) -> io::Result<()> {
        match durable::rename_noreplace(&self.path, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // Queue ids are unique, so a plain rename replaces nothing in practice.
                fs::rename(&self.path, dest)?;
            }
            Err(e) => return Err(e),
        }
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A message as the session hands it over: small ones in memory (no file at all, the common
/// case), large ones spooled.
#[derive(Debug)]
pub enum MessageBody {
    Memory(Vec<u8>),
    Spooled(Spooled),
}

impl MessageBody {
    pub fn len(&self) -> u64 {
        match self {
            MessageBody::Memory(b) => b.len() as u64,
            MessageBody::Spooled(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with the body in chunks of at most `chunk` octets, in order (one call for an
    /// in-memory body).
    pub fn for_each_chunk(
        &self,
        chunk: usize,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match self {
            MessageBody::Memory(b) => f(b),
            MessageBody::Spooled(s) => s.for_each_chunk(chunk, f),
        }
    }
}

/// Removes every file in the incoming folder (server start-up only: any file there belongs to
/// a message no client was told is stored). Returns how many were removed.
pub fn clear(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_file_is_removed_and_a_finished_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = SpoolFile::create(dir.path()).unwrap();
        f.append(b"abc").unwrap();
        drop(f);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut f = SpoolFile::create(dir.path()).unwrap();
        f.append(b"Subject: x\r\n\r\n").unwrap();
        f.append(b"body\r\n").unwrap();
        assert_eq!(f.len(), 20);
        let s = f.finish().unwrap();
        assert_eq!(s.read_all().unwrap(), b"Subject: x\r\n\r\nbody\r\n");
        let body = MessageBody::Spooled(s);
        let mut chunks = Vec::new();
        body.for_each_chunk(7, |c| {
            chunks.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), b"Subject: x\r\n\r\nbody\r\n");
        drop(body);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_renamed_body_stays_and_clear_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = SpoolFile::create(dir.path()).unwrap();
        f.append(b"m").unwrap();
        let dest = dir.path().join("kept");
        f.finish().unwrap().rename_to(&dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"m");

        let incoming = dir.path().join("incoming");
        fs::create_dir(&incoming).unwrap();
        let left = SpoolFile::create(&incoming).unwrap();
        std::mem::forget(left); // as a kill -9 would leave it
        assert_eq!(clear(&incoming).unwrap(), 1);
        assert_eq!(fs::read_dir(&incoming).unwrap().count(), 0);
    }
}
