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

    /// A fresh reader from the start, for one attempt.
    pub fn body(&self) -> SpoolBody {
        SpoolBody {
            queue: self.queue.clone(),
            env: self.env.clone(),
            reader: None,
            len: self.len,
            done: false,
        }
    }
}

/// One pass over a queued message, each piece read on the blocking pool.
pub struct SpoolBody {
    queue: Arc<dyn QueueStore>,
    env: Arc<Envelope>,
    reader: Option<Box<dyn Read + Send>>,
    len: u64,
    done: bool,
}

impl BodySource for SpoolBody {
    fn len(&self) -> u64 {
        self.len
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
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
        if chunk.is_empty() {
            self.done = true;
            return Ok(None);
        }
        self.reader = Some(reader);
        Ok(Some(chunk))
    }
}
