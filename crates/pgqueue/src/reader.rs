//! A stored message read a piece at a time (`substring` of the body, which is stored
//! uncompressed so a piece costs only its own bytes), so that relaying a large message never
//! holds all of it: the relay's delivery slots bound memory as with the filesystem spool.

use std::io::{self, Read};
use std::sync::Arc;

use tern_queue::{Envelope, QueueId};

use crate::{error, sql, Inner};

/// Bytes fetched per query.
const PIECE: i32 = 1 << 20;

pub(crate) struct BodyReader {
    inner: Arc<Inner>,
    id: QueueId,
    /// The envelope's prefix (trace fields tern put in front), then the body pieces.
    buf: Vec<u8>,
    pos: usize,
    /// 1-based offset of the next piece (a bytea is at most 1 GiB, so it fits).
    next: i32,
    done: bool,
}

impl BodyReader {
    pub(crate) fn new(inner: Arc<Inner>, env: &Envelope) -> Self {
        Self {
            inner,
            id: env.id.clone(),
            buf: env.prefix.as_bytes().to_vec(),
            pos: 0,
            next: 1,
            done: false,
        }
    }

    fn fetch(&mut self) -> io::Result<()> {
        let (inner, id, offset) = (&self.inner, &self.id, self.next);
        const WHAT: &str = "reading a message";
        let piece = inner.run(
            WHAT,
            inner.row(WHAT, sql::BODY_PIECE, &[&id.as_str(), &offset, &PIECE]),
        )?;
        let piece: Vec<u8> = match piece {
            Some(row) => row
                .try_get(0)
                .map_err(|e| error::corrupt("reading a message", e))?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no queue entry {id} (removed while being read)"),
                ))
            }
        };
        if piece.len() < PIECE as usize {
            self.done = true;
        }
        self.next = self
            .next
            .saturating_add(i32::try_from(piece.len()).unwrap_or(i32::MAX));
        self.buf = piece;
        self.pos = 0;
        Ok(())
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.fetch()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
