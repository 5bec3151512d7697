//! A queued message as the relay sends it: read from the queue a piece at a time, so that a
//! delivery slot holds one 64 KiB piece of a large message rather than all of it (issue 10:
//! "the relay streams messages from the spool to the remote the same way"). The round keeps
//! only the head (the header section, for the loop check and the bounce) and the traits
//! measured in one reading pass (MAIL's SIZE and BODY parameters come before the body).

use std::io::{self, Read};
use std::sync::Arc;

use tern_client::{BodySource, MessageTraits, TraitsScanner, CHUNK};
use tern_queue::{Envelope, QueueStore};

/// What a round knows of its message without holding it.
pub struct QueuedMessage {
    queue: Arc<dyn QueueStore>,
    env: Arc<Envelope>,
    /// The start of the message: its header section when that is at most `head_max` octets.
    pub head: Vec<u8>,
    pub traits: MessageTraits,
    len: u64,
}

impl QueuedMessage {
    /// Reads the message once (blocking): keeps its first `head_max` octets and measures it.
    pub fn scan(queue: Arc<dyn QueueStore>, env: &Envelope, head_max: usize) -> io::Result<Self> {
        let mut reader = queue.message_reader(env)?;
        let mut scanner = TraitsScanner::default();
        let mut head = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        let mut len = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let piece = &buf[..n];
            scanner.feed(piece);
            if head.len() < head_max {
                head.extend_from_slice(&piece[..n.min(head_max - head.len())]);
            }
            len += n as u64;
        }
        Ok(Self {
            queue,
            env: Arc::new(env.clone()),
            head,
            traits: scanner.finish(),
            len,
        })
    }

    /// A fresh reader from the start, for one attempt. A message that [`QueuedMessage::scan`]
    /// kept whole (most are smaller than a header section may be) is sent from memory: no
    /// second open and read of the file, no hop to the blocking pool per piece.
    pub fn body(&self) -> SpoolBody {
        let held = (self.head.len() as u64 == self.len).then(|| self.head.clone());
        SpoolBody {
            queue: self.queue.clone(),
            env: self.env.clone(),
            reader: None,
            held,
            len: self.len,
            done: false,
        }
    }
}

/// One pass over a queued message, each piece read on the blocking pool (or taken from
/// `held`, the whole message in memory).
pub struct SpoolBody {
    queue: Arc<dyn QueueStore>,
    env: Arc<Envelope>,
    reader: Option<Box<dyn Read + Send>>,
    /// The rest of a message held whole, sent [`CHUNK`] octets at a time.
    held: Option<Vec<u8>>,
    len: u64,
    done: bool,
}

impl SpoolBody {
    fn next_held(&mut self) -> Option<Vec<u8>> {
        let held = self.held.as_mut()?;
        if held.len() <= CHUNK {
            self.done = true;
            let last = std::mem::take(held);
            return (!last.is_empty()).then_some(last);
        }
        let rest = held.split_off(CHUNK);
        Some(std::mem::replace(held, rest))
    }
}

impl BodySource for SpoolBody {
    fn len(&self) -> u64 {
        self.len
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.held.is_some() {
            return Ok(self.next_held());
        }
        let reader = self.reader.take();
        let (queue, env) = (self.queue.clone(), self.env.clone());
        let (reader, chunk) = tokio::task::spawn_blocking(move || {
            let mut reader = match reader {
                Some(r) => r,
                None => queue.message_reader(&env)?,
            };
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            // Fill the piece (a reader may return short reads, at the prefix's end say).
            while filled < CHUNK {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            chunk.truncate(filled);
            Ok((reader, chunk))
        })
        .await
        .map_err(io::Error::other)??;
        // The fill loop stops short only at the end of the file: a short piece is the last,
        // which spares a hop that would only read the end.
        if chunk.len() < CHUNK {
            self.done = true;
            return Ok((!chunk.is_empty()).then_some(chunk));
        }
        self.reader = Some(reader);
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tern_queue::{Envelope, FsStore, QueueId, QueueStore};

    use super::*;

    fn queued(len: usize, head_max: usize) -> (tempfile::TempDir, QueuedMessage, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn QueueStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        // Lines of 100 octets, so the traits scanner sees a well-formed message.
        let line = b"x".repeat(98);
        let mut message = Vec::new();
        while message.len() < len {
            message.extend_from_slice(&line);
            message.extend_from_slice(b"\r\n");
        }
        message.truncate(len);
        let env = Envelope::new(
            QueueId::generate(),
            None,
            Vec::new(),
            SystemTime::now(),
            len as u64,
        );
        queue.commit(&env, &message).unwrap();
        let scanned = QueuedMessage::scan(queue, &env, head_max).unwrap();
        (dir, scanned, message)
    }

    async fn drain(body: &mut SpoolBody) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        while let Some(piece) = body.next_chunk().await.unwrap() {
            assert!(
                !piece.is_empty() && piece.len() <= CHUNK,
                "piece of {}",
                piece.len()
            );
            pieces.push(piece);
        }
        // The end stays the end.
        assert!(body.next_chunk().await.unwrap().is_none());
        pieces
    }

    #[tokio::test]
    async fn every_size_comes_out_whole_held_or_read() {
        for (len, head_max) in [
            (1, 1024),
            (1400, 70 * 1024),       // held: the usual small message
            (CHUNK + 10, 3 * CHUNK), // held, more than one piece
            (2 * CHUNK, 3 * CHUNK),  // held, exactly two pieces
            (1400, 100),             // read: larger than the head
            (2 * CHUNK, 1024),       // read, ends exactly on a piece
            (2 * CHUNK + 7, 1024),   // read, a short last piece
        ] {
            let (_dir, message, want) = queued(len, head_max);
            let held = message.head.len() == len;
            assert_eq!(held, len <= head_max, "len {len} head_max {head_max}");
            // Twice: each attempt starts from the beginning.
            for _ in 0..2 {
                let pieces = drain(&mut message.body()).await;
                assert_eq!(pieces.concat(), want, "len {len} head_max {head_max}");
                assert_eq!(pieces.len(), len.div_ceil(CHUNK), "len {len}");
            }
        }
    }

    #[tokio::test]
    async fn a_held_message_needs_no_file() {
        let (dir, message, want) = queued(1400, 70 * 1024);
        // The entry's files are gone (say, removed by `tern queue delete` meanwhile): a message
        // held whole is still sent from memory, a read one would fail.
        std::fs::remove_dir_all(dir.path().join("queue").join("msg")).unwrap();
        assert_eq!(drain(&mut message.body()).await.concat(), want);
    }
}
