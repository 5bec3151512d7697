//! Test helper: an in-memory SMTP server that follows a script over `tokio::io::duplex`, records
//! what the client sent, and decodes DATA with the server side's own decoder (tern-proto) and
//! BDAT chunks by their sizes.

use std::time::Duration;

use tern_proto::{BareLineEndings, DataDecoder, DataProgress};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use crate::session::{Session, SessionOptions};
use crate::timeouts::Timeouts;

#[derive(Debug, Clone)]
pub enum Step {
    /// Send these bytes (write `\r\n` yourself).
    Send(&'static str),
    /// Read one command line; it must start with this prefix.
    Expect(&'static str),
    /// Read dot-stuffed data up to the end marker; the decoded message is recorded.
    Data,
    /// Like `Data`, but reading at most `bytes` at a time with a pause of `every` after each
    /// read (a server taking the body at a trickle). If the client gives up and closes, the
    /// script ends there.
    Trickle { bytes: usize, every: Duration },
    /// Read one `BDAT <n> [LAST]` line (recorded in `lines`) and its `n` octets; the octets of
    /// the chunks up to the LAST one are recorded as one message.
    Chunk,
    /// Stop answering but keep the connection open (a hung server).
    Hang,
    /// Close the connection.
    Close,
}

#[derive(Debug, Default)]
pub struct Recorded {
    pub lines: Vec<String>,
    pub messages: Vec<Vec<u8>>,
}

pub fn spawn(script: Vec<Step>) -> (DuplexStream, JoinHandle<Recorded>) {
    spawn_buffered(1 << 20, script)
}

/// [`spawn`] with `buffer` bytes of room in each direction of the in-memory connection (a small
/// one makes the client wait for the server's reads, like a full TCP window).
pub fn spawn_buffered(buffer: usize, script: Vec<Step>) -> (DuplexStream, JoinHandle<Recorded>) {
    let (client, mut server) = tokio::io::duplex(buffer);
    let handle = tokio::spawn(async move {
        let mut rec = Recorded::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut bdat: Vec<u8> = Vec::new();
        for step in script {
            match step {
                Step::Send(s) => server.write_all(s.as_bytes()).await.unwrap(),
                Step::Expect(prefix) => {
                    let line = loop {
                        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            break String::from_utf8_lossy(&line).trim_end().to_string();
                        }
                        let n = server.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "client closed while server expected {prefix:?}");
                        buf.extend_from_slice(&chunk[..n]);
                    };
                    assert!(
                        line.starts_with(prefix),
                        "expected {prefix:?}, client sent {line:?}"
                    );
                    rec.lines.push(line);
                }
                Step::Data => {
                    let mut dec = DataDecoder::new(64 << 20, BareLineEndings::Reject);
                    let mut out = Vec::new();
                    let mut pending = std::mem::take(&mut buf);
                    loop {
                        match dec.feed(&pending, &mut out) {
                            DataProgress::Done { consumed } => {
                                buf = pending[consumed..].to_vec();
                                break;
                            }
                            DataProgress::NeedMore => {
                                let n = server.read(&mut chunk).await.unwrap();
                                assert!(n > 0, "client closed during DATA");
                                pending = chunk[..n].to_vec();
                            }
                        }
                    }
                    assert_eq!(dec.verdict(), Ok(()), "client sent bare CR/LF");
                    rec.messages.push(out);
                }
                Step::Trickle { bytes, every } => {
                    let mut dec = DataDecoder::new(64 << 20, BareLineEndings::Reject);
                    let mut out = Vec::new();
                    let mut pending = std::mem::take(&mut buf);
                    let mut small = vec![0u8; bytes];
                    loop {
                        match dec.feed(&pending, &mut out) {
                            DataProgress::Done { consumed } => {
                                buf = pending[consumed..].to_vec();
                                break;
                            }
                            DataProgress::NeedMore => {
                                tokio::time::sleep(every).await;
                                match server.read(&mut small).await {
                                    Ok(n) if n > 0 => pending = small[..n].to_vec(),
                                    _ => return rec,
                                }
                            }
                        }
                    }
                    rec.messages.push(out);
                }
                Step::Chunk => {
                    let line = loop {
                        if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            break String::from_utf8_lossy(&line).trim_end().to_string();
                        }
                        let n = server.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "client closed while server expected BDAT");
                        buf.extend_from_slice(&chunk[..n]);
                    };
                    let mut words = line.split(' ');
                    assert_eq!(
                        words.next(),
                        Some("BDAT"),
                        "expected BDAT, client sent {line:?}"
                    );
                    let size: usize = words.next().unwrap().parse().unwrap();
                    let last = match words.next() {
                        None => false,
                        Some("LAST") => true,
                        Some(w) => panic!("BDAT with {w:?}"),
                    };
                    while buf.len() < size {
                        let n = server.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "client closed in a BDAT chunk");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    bdat.extend(buf.drain(..size));
                    if last {
                        rec.messages.push(std::mem::take(&mut bdat));
                    }
                    rec.lines.push(line);
                }
                Step::Hang => {
                    std::future::pending::<()>().await;
                }
                Step::Close => break,
            }
        }
        rec
    });
    (client, handle)
}

pub fn session(stream: DuplexStream) -> Session<DuplexStream> {
    let mut opts = SessionOptions::new("client.test");
    opts.timeouts = Timeouts::default();
    Session::new(stream, opts)
}
