//! Change notices between processes sharing one spool. The server listens on a Unix datagram
//! socket in the spool (`queue/control.sock`); any other process using the spool (`tern queue`
//! hold, release, flush, delete, bounce) sends the id of each entry it committed, updated or
//! removed, and the server's store turns it into [`StoreEvent::ChangedElsewhere`] for its
//! scheduler. A notice is only a hint: the scheduler reads the entry's real state from the
//! spool, and a lost notice is caught by the scheduler's slow safety rescan.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::id::QueueId;
use crate::store::{EventSink, StoreEvent};

/// The socket's file name inside `<data_dir>/queue`.
pub const SOCKET_NAME: &str = "control.sock";

/// The subscribers of one store, shared with the listener thread.
#[derive(Clone, Default)]
pub(crate) struct Sinks(Arc<RwLock<Vec<EventSink>>>);

impl Sinks {
    pub(crate) fn add(&self, sink: EventSink) {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(sink);
    }

    pub(crate) fn emit(&self, event: StoreEvent) {
        let sinks = self
            .0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for sink in sinks.iter() {
            sink(event.clone());
        }
    }
}

/// Binds the socket (replacing a stale one left by a killed server) and starts a thread that
/// emits a `ChangedElsewhere` event for every well-formed id received. Datagrams that are not
/// a queue id are ignored: anyone who can write to the spool directory can send one.
pub(crate) fn listen(socket: &Path, sinks: Sinks) -> io::Result<()> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sock = UnixDatagram::bind(socket)?;
    std::thread::Builder::new()
        .name("queue-control".into())
        .spawn(move || {
            let mut buf = [0u8; 128];
            loop {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let Some(id) = std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|s| s.trim().parse::<QueueId>().ok())
                else {
                    continue;
                };
                sinks.emit(StoreEvent::ChangedElsewhere { id });
            }
        })?;
    Ok(())
}

/// Tells a listening server (if any) that `id` changed. Best effort and non-blocking: no
/// server running, or one that is not reading, must never make a `tern queue` command fail.
pub(crate) fn tell(socket: &PathBuf, id: &QueueId) {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.set_nonblocking(true);
    let _ = sock.send_to(id.as_str().as_bytes(), socket);
}
