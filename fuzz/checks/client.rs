//! Invariant checks for the tern-client fuzz target `client_reply`, shared by
//! `fuzz/fuzz_targets/client_reply.rs` and the corpus replay in
//! `crates/client/tests/fuzz_corpus.rs`: arbitrary server bytes drive a real
//! `tern_client::Session` (banner, EHLO, optional AUTH, one transaction, RSET, QUIT) over an
//! in-memory stream. Each function panics on a violation; docs/fuzzing.md lists the invariants.
#![allow(dead_code)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tern_client::{
    AuthChannel, ClientError, Credentials, Envelope, Session, SessionOptions,
    MAX_BUFFERED_REPLY_BYTES,
};
use tern_proto::reply::MAX_REPLY_TOTAL;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The server side: hands the fuzz input out in chunks (sizes from a xorshift seeded by the
/// mode byte), then end of stream; records every byte the client writes.
struct Scripted {
    input: Vec<u8>,
    pos: usize,
    state: u32,
    max_chunk: usize,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.state ^= me.state << 13;
        me.state ^= me.state >> 17;
        me.state ^= me.state << 5;
        let want = (me.state as usize % me.max_chunk) + 1;
        let rest = &me.input[me.pos..];
        let n = want.min(rest.len()).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// One runtime for every input: the stream never returns Pending, so no timer ever fires.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// The message: 7-bit, or with one 8-bit octet (bit 2), which needs 8BITMIME.
fn message(eight_bit: bool) -> Vec<u8> {
    let mut m = b"Subject: fuzz\r\n\r\nline one\r\n.leading dot\r\n".to_vec();
    if eight_bit {
        m.extend_from_slice(b"caf\xc3\xa9\r\n");
    }
    m
}

/// Input: a mode byte (bit 0: chunks of 1-7 octets, else 1-300; bit 1: AUTH with AuthChannel::Any;
/// bit 2: an 8-bit body; bit 3: a non-ASCII recipient, which needs SMTPUTF8; bit 4: a third
/// recipient), then what the server sends.
pub fn client_reply(input: &[u8]) {
    run(input);
}

/// [`client_reply`], returning what the client wrote (the replay test checks that the seeds
/// reach where they are meant to).
pub fn run(input: &[u8]) -> Vec<u8> {
    let Some((&mode, server)) = input.split_first() else {
        return Vec::new();
    };
    let written = Arc::new(Mutex::new(Vec::new()));
    let stream = Scripted {
        input: server.to_vec(),
        pos: 0,
        state: u32::from(mode) | 0x9e37_7900,
        max_chunk: if mode & 1 == 1 { 7 } else { 300 },
        written: written.clone(),
    };
    let mut opts = SessionOptions::new("client.test");
    if mode & 2 != 0 {
        opts.auth_channel = AuthChannel::Any;
    }
    let mut rcpts = vec!["a@x.test", "b@x.test"];
    if mode & 8 != 0 {
        rcpts[1] = "bj\u{f6}rn@x.test";
    }
    if mode & 16 != 0 {
        rcpts.push("postmaster");
    }
    let envelope = Envelope::parse("s@y.test", rcpts.iter().copied()).expect("fixed addresses");
    let body = message(mode & 4 != 0);
    RUNTIME.with(|rt| {
        rt.block_on(drive(
            Session::new(stream, opts),
            &envelope,
            &body,
            mode & 2 != 0,
            &written,
        ))
    });
    let wire = std::mem::take(&mut *written.lock().unwrap_or_else(PoisonError::into_inner));
    wire_commands(&wire);
    wire
}

/// Octets the client has written so far.
fn sent(written: &Mutex<Vec<u8>>) -> usize {
    written.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// After each step: the buffer is bounded, and a session that is no longer usable sends nothing
/// more (a further command fails with `Unusable` without a byte written).
async fn step_done(s: &mut Session<Scripted>, written: &Mutex<Vec<u8>>) -> bool {
    assert!(
        s.buffered_reply_bytes() <= MAX_BUFFERED_REPLY_BYTES,
        "{} octets buffered",
        s.buffered_reply_bytes()
    );
    if s.is_usable() {
        return false;
    }
    let before = sent(written);
    assert!(matches!(s.rset().await, Err(ClientError::Unusable)));
    assert_eq!(sent(written), before, "an unusable session wrote");
    true
}

async fn drive(
    mut s: Session<Scripted>,
    envelope: &Envelope,
    body: &[u8],
    auth: bool,
    written: &Mutex<Vec<u8>>,
) {
    let banner = s.banner().await;
    if let Ok(r) = &banner {
        assert_eq!(r.code(), 220, "banner() accepted {r}");
    }
    if banner.is_err() || step_done(&mut s, written).await {
        return;
    }
    match s.ehlo().await {
        Ok(caps) => {
            // Whatever the server claimed, the capability set is usable as is.
            let _ = (caps.size, caps.supports_auth("PLAIN"), caps.pipelining);
        }
        Err(_) => return,
    }
    if step_done(&mut s, written).await {
        return;
    }
    if auth {
        let creds = Credentials {
            authzid: None,
            username: "user".into(),
            password: "pw".into(),
        };
        if let Ok(r) = s.auth(&creds).await {
            assert_eq!(r.code(), 235, "auth() accepted {r}");
        }
        if step_done(&mut s, written).await {
            return;
        }
    }
    let delivery = s.send_message(envelope, body).await;
    assert_eq!(delivery.per_recipient.len(), envelope.rcpts.len());
    if delivery.per_recipient.iter().any(|(_, o)| o.is_accepted()) {
        let data = delivery
            .data_reply
            .as_ref()
            .expect("accepted without a final reply");
        assert!(data.is_positive(), "accepted on {data}");
    }
    if let Some(r) = &delivery.data_reply {
        // A reply the client kept is one the parser allowed: bounded in total.
        let text: usize = r.lines().iter().map(String::len).sum();
        assert!(text <= MAX_REPLY_TOTAL, "{text} octets of reply text");
    }
    if step_done(&mut s, written).await {
        return;
    }
    let _ = s.rset().await;
    if step_done(&mut s, written).await {
        return;
    }
    let _ = s.quit().await;
}

/// Everything the client wrote is CRLF-terminated lines without a bare CR or LF: commands of at
/// most 512 octets (RFC 5321 4.5.3.1.4) and message lines of at most 1000 (4.5.3.1.6).
fn wire_commands(wire: &[u8]) {
    if wire.is_empty() {
        return;
    }
    assert!(
        wire.ends_with(b"\r\n"),
        "client output does not end in CRLF"
    );
    let mut in_data = false;
    // Each piece up to a LF must end in CR; the last piece (after the final CRLF) is empty.
    for line in wire[..wire.len() - 1].split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or_else(|| {
            panic!(
                "bare LF in client output: {:?}",
                String::from_utf8_lossy(line)
            )
        });
        assert!(!line.contains(&b'\r'), "bare CR in client output");
        let limit = if in_data { 998 } else { 510 };
        assert!(line.len() <= limit, "{}-octet line", line.len());
        if in_data && line == b"." {
            in_data = false;
        } else if !in_data && line.eq_ignore_ascii_case(b"DATA") {
            in_data = true;
        }
    }
}
