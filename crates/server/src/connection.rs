//! One SMTP connection without I/O: bytes in, replies and effects out.
//!
//! [`Connection`] owns the [`Session`], the command-line framing ([`LineReader`], RFC 5321
//! 4.5.3.1.4) and, during DATA, the [`DataDecoder`] with the message buffer. The driver (and the
//! fuzz harness, and the transcript tests) only move bytes and carry out the [`Effect`]s: it
//! [`feed`](Connection::feed)s what it read, then [`poll`](Connection::poll)s until `None`,
//! then reads again with the deadline [`wants`](Connection::wants) names.
//!
//! Replies are batched as RFC 2920 3.1 asks: everything answered from one read goes out in one
//! [`Effect::Write`], emitted when no complete command is left (the server is about to wait for
//! the client) or before an effect that waits for something else (TLS handshake, password
//! check, storage). An effect that needs an answer carries a ticket that only its resolution
//! takes back, and until it is resolved no further input is processed.

use std::sync::Arc;

use tern_auth::SpfOutcome;
use tern_config::Config;
use tern_delivery::NotStored;
use tern_proto::sasl::Credentials;
use tern_proto::{
    DataDecoder, DataProgress, DataRejection, HeaderScanner, LineEvent, LineReader, Reply,
    MAX_PARAM_LINE,
};
use tracing::info;

use crate::replies;
use crate::session::{
    Accepted, Action, Chunk, DataEnd, FilterStep, FilterVerdict, MessageFacts, Session, SpfQuery,
};
use crate::store::StoreError;

/// What the caller must do next.
#[derive(Debug)]
pub enum Effect {
    /// Send these bytes (one or more complete replies) to the client.
    Write(Vec<u8>),
    /// The 220 has been written: run the TLS handshake, then
    /// [`Connection::tls_established`]. Everything the client sent before the handshake has been
    /// discarded (RFC 3207 5, CVE-2011-0411).
    StartTls(TlsTicket),
    /// Check these credentials, then [`Connection::auth_verified`].
    Verify(Credentials, VerifyTicket),
    /// Check SPF for this MAIL FROM (with the server's verifier, RFC 7208), then
    /// [`Connection::spf_checked`].
    CheckSpf(SpfQuery, SpfTicket),
    /// Show this step to the content filters (`[[milters]]`), then [`Connection::filtered`].
    Filter(FilterStep, FilterTicket),
    /// Make this message durable, then [`Connection::stored`] with the result. The body is the
    /// client's data without the trace header in `accepted.received`.
    Store(Box<Accepted>, DataBody, StoreTicket),
    /// The message being received is large: put these bytes on disk (see [`SpoolOp`]). No
    /// answer is needed unless the write fails ([`Connection::spool_failed`]).
    Spool(SpoolOp),
    /// Send these last bytes (best effort: the client may not read) and close the connection.
    Close(Vec<u8>, CloseReason),
}

/// The message of an [`Effect::Store`].
#[derive(Debug)]
pub enum DataBody {
    /// All of it: it never grew past the spill threshold, so no file was made.
    Memory(Vec<u8>),
    /// Its beginning went out in [`SpoolOp::Append`]s; these are its last bytes.
    Spooled { tail: Vec<u8> },
}

/// What to do with the spool file of the message being received (one at a time per
/// connection).
#[derive(Debug)]
pub enum SpoolOp {
    /// Append to it, creating it first if this message has none yet.
    Append(Vec<u8>),
    /// The message will be refused (too large, bare line ending) or its data was abandoned:
    /// remove the file now rather than keep the disk space until the session ends.
    Discard,
}

/// Decoded message bytes a connection keeps in memory before they go to the spool file: a
/// message smaller than this never touches the disk until it is stored.
pub const SPILL_THRESHOLD: usize = 64 * 1024;

/// Proof that an [`Effect::StartTls`] is outstanding; only the connection makes one.
#[derive(Debug)]
pub struct TlsTicket(());

/// Proof that an [`Effect::Verify`] is outstanding.
#[derive(Debug)]
pub struct VerifyTicket(());

/// Proof that an [`Effect::CheckSpf`] is outstanding.
#[derive(Debug)]
pub struct SpfTicket(());

/// Proof that an [`Effect::Filter`] is outstanding.
#[derive(Debug)]
pub struct FilterTicket(());

/// Proof that an [`Effect::Store`] is outstanding.
#[derive(Debug)]
pub struct StoreTicket(());

/// Why the connection closes, for the connection log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent QUIT (221).
    Quit,
    /// The server refused to go on (421: too many errors, AUTH failures, an HTTP client).
    Refused,
    /// A command or data deadline, or the session time limit, passed (421 4.4.2).
    Timeout,
    /// The server is shutting down (421 4.3.2).
    Shutdown,
}

/// Which of the RFC 5321 4.5.3.2 timeouts applies to the wait for input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `limits.command_timeout`, for one command line from when the server starts waiting for
    /// it until its LF (not per read: a client trickling bytes must not hold the session).
    Command,
    /// `limits.data_timeout`, for the whole message from the 354 to the final dot.
    Data,
}

/// What the connection waits for. Two equal values mean the same wait continues: the deadline
/// computed when it began still holds. A new value (the next line, the start or end of the
/// data) starts a new deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    deadline: Deadline,
    /// Counts the lines, data sections and handshakes completed, so that each wait is distinct.
    epoch: u64,
}

impl Wants {
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }
}

/// The bytes of a message being received (by DATA or BDAT) and what is learnt of them on
/// the way.
#[derive(Debug)]
struct Sink {
    /// Message bytes not yet handed out in an [`SpoolOp::Append`].
    body: Vec<u8>,
    /// The header-section facts, worked out as the bytes pass (they may be on disk already).
    header: HeaderScanner,
    ascii: bool,
    /// Some bytes went out to the spool file.
    spilled: bool,
    /// The spool file is gone (discarded, or a write failed): nothing more is kept.
    dropped: bool,
    /// A spool write failed; the message is answered with this once its end is read.
    failed: Option<StoreError>,
}

impl Sink {
    fn new() -> Self {
        Self {
            body: Vec::new(),
            header: HeaderScanner::new(),
            ascii: true,
            spilled: false,
            dropped: false,
            failed: None,
        }
    }

    /// The bytes from `start` on are new in `body`.
    fn saw(&mut self, start: usize) {
        let new = &self.body[start..];
        self.header.feed(new);
        self.ascii &= new.is_ascii();
        if self.dropped {
            // Nothing more is kept: the message can only be refused.
            self.body.clear();
        }
    }

    /// The spool operation the message needs now, if any: discard the file once the message
    /// is sure to be refused (`doomed`), append once `spill_at` bytes are buffered.
    fn spill(&mut self, spill_at: usize, doomed: bool) -> Option<SpoolOp> {
        if self.dropped {
            return None;
        }
        if doomed {
            self.dropped = true;
            self.body.clear();
            return self.spilled.then_some(SpoolOp::Discard);
        }
        if self.body.is_empty() || self.body.len() < spill_at {
            return None;
        }
        self.spilled = true;
        Some(SpoolOp::Append(std::mem::take(&mut self.body)))
    }

    /// A spool write failed: nothing more is kept, the end of the message gets `error`.
    fn failed(&mut self, error: StoreError) {
        self.failed.get_or_insert(error);
        self.dropped = true;
        self.body.clear();
    }
}

/// A message being received after DATA's 354.
#[derive(Debug)]
struct DataPhase {
    decoder: DataDecoder,
    sink: Sink,
    /// The end-of-data marker was seen; what followed it is back in the connection's input.
    done: bool,
}

impl DataPhase {
    fn new(decoder: DataDecoder) -> Self {
        Self {
            decoder,
            sink: Sink::new(),
            done: false,
        }
    }

    /// Feeds client bytes to the decoder; the header scanner sees what it appends.
    fn feed(&mut self, input: &[u8]) -> DataProgress {
        let start = self.sink.body.len();
        let progress = self.decoder.feed(input, &mut self.sink.body);
        self.sink.saw(start);
        progress
    }
}

/// A message arriving in BDAT chunks (RFC 3030). It outlives each chunk: between chunks the
/// connection reads commands. The chunks' octets are counted, never scanned for an end
/// marker nor unstuffed (that is what makes BDAT immune to smuggling); only the line endings
/// are made what DATA stores: under `smtp.bare_line_endings = "normalize"` each bare CR and
/// bare LF is stored as CRLF (so a copy relayed with DATA never carries one to the next hop),
/// under `"reject"` the message is refused at its LAST chunk as DATA is at its dot.
#[derive(Debug)]
struct BdatMessage {
    sink: Sink,
    /// Octets received in its chunks so far.
    size: u64,
    mode: tern_proto::BareLineEndings,
    /// The last octet so far was a CR: whether it is bare depends on the next one (a CRLF
    /// may be split between chunks).
    cr: bool,
    /// A bare CR or LF was seen.
    bare: bool,
}

impl BdatMessage {
    fn new(mode: tern_proto::BareLineEndings) -> Self {
        Self {
            sink: Sink::new(),
            size: 0,
            mode,
            cr: false,
            bare: false,
        }
    }

    /// The message is sure to be refused: nothing more need be kept.
    fn doomed(&self) -> bool {
        self.bare && self.mode == tern_proto::BareLineEndings::Reject
    }

    /// Octets of a chunk, as received.
    fn push(&mut self, mut input: &[u8]) {
        self.size = self.size.saturating_add(input.len() as u64);
        let start = self.sink.body.len();
        let out = &mut self.sink.body;
        while !input.is_empty() {
            if self.cr {
                self.cr = false;
                out.extend_from_slice(b"\r\n");
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
                // A bare CR; the octet after it is looked at as any other.
                self.bare = true;
            }
            match memchr::memchr2(b'\r', b'\n', input) {
                None => {
                    out.extend_from_slice(input);
                    break;
                }
                Some(at) => {
                    out.extend_from_slice(&input[..at]);
                    if input[at] == b'\r' {
                        self.cr = true;
                    } else {
                        out.extend_from_slice(b"\r\n");
                        self.bare = true;
                    }
                    input = &input[at + 1..];
                }
            }
        }
        self.sink.saw(start);
    }

    /// The LAST chunk is in: a CR at the very end was bare.
    fn finish(&mut self) {
        if std::mem::take(&mut self.cr) {
            let start = self.sink.body.len();
            self.sink.body.extend_from_slice(b"\r\n");
            self.bare = true;
            self.sink.saw(start);
        }
    }

    fn verdict(&self) -> Result<(), DataRejection> {
        if self.doomed() {
            Err(DataRejection::BareLineEnding)
        } else {
            Ok(())
        }
    }
}

/// What becomes of the octets of the BDAT chunk being read.
#[derive(Debug)]
enum ChunkUse {
    /// They are the next part of the message.
    Keep,
    /// They would take the message over `limits.max_message_size`: dropped, and so is the
    /// message, with a 552 once the chunk is read.
    TooBig,
    /// The BDAT was refused: they are dropped, then this reply goes out.
    Refused(Reply),
}

/// The octets of a BDAT chunk being read.
#[derive(Debug)]
struct ChunkPhase {
    /// Octets of the chunk still to come.
    remaining: u64,
    size: u64,
    last: bool,
    kind: ChunkUse,
}

/// The client's bytes not yet processed. Only one command line at a time goes to the
/// [`LineReader`]: what follows a BDAT line is chunk data, not commands, and must still be
/// here when that line is parsed.
#[derive(Debug, Default)]
struct Input {
    buf: Vec<u8>,
    /// `buf[..pos]` is processed.
    pos: usize,
}

impl Input {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The first `n` pending bytes are processed.
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= 4096 && self.pos * 2 >= self.buf.len() {
            // Compacted once half is processed: a long pipelined batch costs linear time.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// The bytes up to and including the next LF (all of them if there is none).
    fn next_line_len(&self) -> usize {
        let pending = self.pending();
        memchr::memchr(b'\n', pending).map_or(pending.len(), |nl| nl + 1)
    }
}

/// Octets of a chunk taken into the message per step, so that the buffer between spool
/// writes stays bounded whatever was pipelined.
const CHUNK_STEP: usize = 64 * 1024;

/// Message bytes a BDAT message keeps in memory while the connection waits for the next
/// chunk's command (under the command deadline, without the DATA memory share); more goes
/// to the spool file at the end of each chunk.
const BDAT_IDLE_KEEP: usize = 4096;

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading message data after the 354.
    Data(DataPhase),
    /// Reading the octets of a BDAT chunk.
    Chunk(ChunkPhase),
    /// An [`Effect::StartTls`] is out.
    AwaitTls,
    /// An [`Effect::Verify`] is out.
    AwaitVerify,
    /// An [`Effect::CheckSpf`] is out.
    AwaitSpf,
    /// An [`Effect::Filter`] is out.
    AwaitFilter,
    /// An [`Effect::Store`] is out.
    AwaitStore,
    /// The [`Effect::Close`] was emitted (or is about to be); nothing more happens.
    Closed,
}

pub struct Connection {
    session: Session,
    cfg: Arc<Config>,
    reader: LineReader,
    input: Input,
    phase: Phase,
    /// The BDAT message being received (between and during its chunks).
    bdat: Option<Box<BdatMessage>>,
    /// The spool file of an abandoned message must go before anything else happens (the next
    /// message's first append would otherwise extend it).
    discard_spool: bool,
    /// Replies not yet handed out in an [`Effect::Write`].
    out: Vec<u8>,
    /// `out` must go out before anything else is processed.
    flush: bool,
    /// The effect to emit once `out` has been flushed.
    pending: Option<Box<Effect>>,
    epoch: u64,
    accepted: u32,
    rejected: u32,
    /// Decoded bytes kept in memory before they go to the spool file.
    spill_at: usize,
}

impl Connection {
    pub fn new(session: Session) -> Self {
        let cfg = session.config().clone();
        Self {
            session,
            cfg,
            reader: LineReader::new(MAX_PARAM_LINE),
            input: Input::default(),
            phase: Phase::Command,
            bdat: None,
            discard_spool: false,
            out: Vec::new(),
            flush: false,
            pending: None,
            epoch: 0,
            accepted: 0,
            rejected: 0,
            spill_at: SPILL_THRESHOLD,
        }
    }

    /// How many decoded bytes of a message stay in memory before they go to the spool file
    /// (the driver lowers it when the server's DATA memory budget is spent; 0 spools every
    /// piece as it arrives).
    pub fn set_spill_threshold(&mut self, bytes: usize) {
        self.spill_at = bytes;
    }

    /// The 220 to send before anything else.
    pub fn greeting(&self) -> Vec<u8> {
        self.session.greeting().to_bytes()
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Messages stored and messages refused (at the end of data or by the store) so far.
    pub fn accepted(&self) -> u32 {
        self.accepted
    }

    pub fn rejected(&self) -> u32 {
        self.rejected
    }

    /// What the connection waits for once [`poll`](Self::poll) returned `None`: input under
    /// this deadline, or `None` while an effect is outstanding or after the close.
    pub fn wants(&self) -> Option<Wants> {
        let deadline = match &self.phase {
            Phase::Command => Deadline::Command,
            Phase::Data(d) if !d.done => Deadline::Data,
            // RFC 5321 4.5.3.2's data timeout, for the whole chunk.
            Phase::Chunk(_) => Deadline::Data,
            _ => return None,
        };
        Some(Wants {
            deadline,
            epoch: self.epoch,
        })
    }

    /// Bytes from the client. They are only buffered here; [`poll`](Self::poll) processes them.
    pub fn feed(&mut self, input: &[u8]) {
        match &mut self.phase {
            Phase::Data(d) if !d.done => {
                if let DataProgress::Done { consumed } = d.feed(input) {
                    d.done = true;
                    // Bytes after the end marker are the next pipelined commands.
                    self.input.push(&input[consumed..]);
                }
            }
            Phase::Command
            | Phase::Data(_)
            | Phase::Chunk(_)
            | Phase::AwaitVerify
            | Phase::AwaitSpf
            | Phase::AwaitFilter
            | Phase::AwaitStore => self.input.push(input),
            // RFC 3207 5: plaintext sent before the handshake completes is never executed.
            Phase::AwaitTls | Phase::Closed => {}
        }
    }

    /// The next effect, or `None` when the connection waits: for input ([`wants`](Self::wants)
    /// says under which deadline), for an outstanding effect's resolution, or for nothing (closed).
    pub fn poll(&mut self) -> Option<Effect> {
        loop {
            if std::mem::take(&mut self.flush) && !self.out.is_empty() {
                return Some(Effect::Write(std::mem::take(&mut self.out)));
            }
            if std::mem::take(&mut self.discard_spool) {
                return Some(Effect::Spool(SpoolOp::Discard));
            }
            if let Some(effect) = self.pending.take() {
                return Some(*effect);
            }
            if let Phase::Data(DataPhase { done: true, .. }) = self.phase {
                if let Phase::Data(d) = std::mem::replace(&mut self.phase, Phase::Command) {
                    self.epoch += 1;
                    self.end_data(d);
                }
                continue;
            }
            if let Phase::Data(d) = &mut self.phase {
                if !d.done {
                    if let Some(op) = d.sink.spill(self.spill_at, d.decoder.is_doomed()) {
                        return Some(Effect::Spool(op));
                    }
                }
            }
            if let Phase::Chunk(c) = &mut self.phase {
                let pending = self.input.pending();
                let n = pending
                    .len()
                    .min(CHUNK_STEP)
                    .min(usize::try_from(c.remaining).unwrap_or(usize::MAX));
                if n > 0 {
                    if let (ChunkUse::Keep, Some(m)) = (&c.kind, self.bdat.as_mut()) {
                        m.push(&pending[..n]);
                    }
                    c.remaining -= n as u64;
                    self.input.consume(n);
                }
                if let (ChunkUse::Keep, Some(m)) = (&c.kind, self.bdat.as_mut()) {
                    let doomed = m.doomed();
                    if let Some(op) = m.sink.spill(self.spill_at, doomed) {
                        return Some(Effect::Spool(op));
                    }
                }
                if c.remaining > 0 {
                    if self.input.pending().is_empty() {
                        return self.write_queued();
                    }
                    continue;
                }
                if let Phase::Chunk(c) = std::mem::replace(&mut self.phase, Phase::Command) {
                    self.epoch += 1;
                    self.end_chunk(c);
                }
                continue;
            }
            match self.phase {
                Phase::Command => {
                    // One line at a time: what follows a BDAT line is not for the reader.
                    let n = self.input.next_line_len();
                    if n > 0 {
                        self.reader.push(&self.input.pending()[..n]);
                        self.input.consume(n);
                    }
                    match self.reader.next_line() {
                        Some(event) => {
                            self.epoch += 1;
                            let action = match event {
                                LineEvent::Line(line) => self.session.handle_line(&line),
                                LineEvent::TooLong => self.session.line_too_long(),
                            };
                            self.act_or_chunk(action);
                        }
                        // RFC 2920 3.1: about to wait for the client, so everything answered
                        // goes out.
                        None => return self.write_queued(),
                    }
                }
                Phase::Data(_) => return self.write_queued(),
                Phase::Chunk(_) => continue,
                Phase::AwaitTls
                | Phase::AwaitVerify
                | Phase::AwaitSpf
                | Phase::AwaitFilter
                | Phase::AwaitStore
                | Phase::Closed => return None,
            }
        }
    }

    /// The handshake after [`Effect::StartTls`] succeeded; the session starts over (RFC 3207 4.2).
    pub fn tls_established(&mut self, _ticket: TlsTicket, description: String) {
        if !matches!(self.phase, Phase::AwaitTls) {
            return;
        }
        self.reader.clear();
        self.input.clear();
        self.session.tls_established(description);
        self.check_bdat();
        self.phase = Phase::Command;
        self.epoch += 1;
    }

    /// The outcome of [`Effect::Verify`]: the authenticated user, or `None`.
    pub fn auth_verified(&mut self, _ticket: VerifyTicket, user: Option<String>) {
        if !matches!(self.phase, Phase::AwaitVerify) {
            return;
        }
        self.phase = Phase::Command;
        match self.session.auth_verified(user) {
            // The session never asks twice; answering is all that is left to do.
            Action::Verify(_) => self.queue(&replies::local_error()),
            action => self.act(action),
        }
    }

    /// No password check could be started for [`Effect::Verify`] (every check slot is busy).
    pub fn auth_busy(&mut self, _ticket: VerifyTicket) {
        if !matches!(self.phase, Phase::AwaitVerify) {
            return;
        }
        self.phase = Phase::Command;
        let action = self.session.auth_busy();
        self.act(action);
    }

    /// The outcome of [`Effect::CheckSpf`] (`None` when no SPF check was made).
    pub fn spf_checked(&mut self, _ticket: SpfTicket, outcome: Option<SpfOutcome>) {
        if !matches!(self.phase, Phase::AwaitSpf) {
            return;
        }
        self.phase = Phase::Command;
        match self.session.spf_checked(outcome) {
            // The session asks once per MAIL; answering is all that is left to do.
            Action::CheckSpf(_) => self.queue(&replies::local_error()),
            action => self.act(action),
        }
    }

    /// The content filters' verdict on [`Effect::Filter`].
    pub fn filtered(&mut self, _ticket: FilterTicket, verdict: FilterVerdict) {
        if !matches!(self.phase, Phase::AwaitFilter) {
            return;
        }
        self.phase = Phase::Command;
        match self.session.filtered(verdict) {
            // The session asks once per command; answering is all that is left to do.
            Action::Filter(_) => self.queue(&replies::local_error()),
            action => self.act_or_chunk(action),
        }
    }

    /// The outcome of [`Effect::Store`]; the session chooses the reply.
    pub fn stored(&mut self, _ticket: StoreTicket, result: Result<(), NotStored>) {
        if !matches!(self.phase, Phase::AwaitStore) {
            return;
        }
        if result.is_ok() {
            self.accepted += 1;
        } else {
            self.rejected += 1;
        }
        let reply = self.session.stored(result);
        self.queue(&reply);
        self.phase = Phase::Command;
    }

    /// The spool write of an [`Effect::Spool`] failed (a full disk): the rest of the message is
    /// read and dropped, and its end is answered with this error (452 4.3.1 for a full disk).
    pub fn spool_failed(&mut self, error: StoreError) {
        if let Phase::Data(d) = &mut self.phase {
            d.sink.failed(error);
        } else if let Some(m) = &mut self.bdat {
            m.sink.failed(error);
        }
    }

    /// The deadline of [`wants`](Self::wants) passed: 421 and close.
    pub fn timeout(&mut self) {
        let reply = self.session.timeout_reply();
        self.close(reply, CloseReason::Timeout);
    }

    /// `limits.max_session_time` is over: 421 and close, whatever the connection was doing.
    pub fn session_expired(&mut self) {
        let reply = replies::session_too_long(&self.cfg.hostname);
        self.close(reply, CloseReason::Timeout);
    }

    /// The server is shutting down: 421 and close. Whatever is outstanding is abandoned (a
    /// message not yet stored is not acknowledged, so the client will send it again).
    pub fn shutdown(&mut self) {
        let reply = self.session.shutdown_reply();
        self.close(reply, CloseReason::Shutdown);
    }

    fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    fn write_queued(&mut self) -> Option<Effect> {
        if self.out.is_empty() {
            None
        } else {
            Some(Effect::Write(std::mem::take(&mut self.out)))
        }
    }

    fn close(&mut self, reply: Reply, reason: CloseReason) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.queue(&reply);
        self.flush = false;
        self.pending = Some(Box::new(Effect::Close(
            std::mem::take(&mut self.out),
            reason,
        )));
        self.phase = Phase::Closed;
    }

    /// The DATA decoder for the next message. The one place it is built.
    fn data_decoder(&self) -> DataDecoder {
        crate::data::decoder(&self.cfg)
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Reply(r) => self.queue(&r),
            Action::Close(r) => {
                let reason = if r.code() == 221 {
                    CloseReason::Quit
                } else {
                    CloseReason::Refused
                };
                self.close(r, reason);
            }
            Action::StartData(r) => {
                self.queue(&r);
                // The 354 (with any replies queued before it) goes out before the data is
                // processed, as the old driver loop did.
                self.flush = true;
                let mut d = DataPhase::new(self.data_decoder());
                // Data pipelined right behind the DATA command is already buffered (in the
                // reader, which holds nothing past the DATA line, and in the input).
                let mut progress = self.reader.drain_into(&mut d.decoder, &mut d.sink.body);
                d.sink.saw(0);
                if progress == DataProgress::NeedMore {
                    progress = d.feed(self.input.pending());
                    let consumed = match progress {
                        DataProgress::Done { consumed } => consumed,
                        DataProgress::NeedMore => self.input.pending().len(),
                    };
                    self.input.consume(consumed);
                }
                d.done = matches!(progress, DataProgress::Done { .. });
                self.phase = Phase::Data(d);
                self.epoch += 1;
            }
            Action::StartTls(r) => {
                self.queue(&r);
                self.flush = true;
                // RFC 3207 5 / CVE-2011-0411: whatever was pipelined after STARTTLS arrived in
                // plaintext and must never be executed.
                self.reader.clear();
                self.input.clear();
                self.phase = Phase::AwaitTls;
                self.pending = Some(Box::new(Effect::StartTls(TlsTicket(()))));
            }
            Action::Verify(creds) => {
                // The replies so far go out before the (slow, maybe delayed) check.
                self.flush = true;
                self.phase = Phase::AwaitVerify;
                self.pending = Some(Box::new(Effect::Verify(creds, VerifyTicket(()))));
            }
            Action::CheckSpf(query) => {
                // The replies so far go out before the DNS lookups.
                self.flush = true;
                self.phase = Phase::AwaitSpf;
                self.pending = Some(Box::new(Effect::CheckSpf(query, SpfTicket(()))));
            }
            Action::Filter(step) => {
                // The replies so far go out before the filters are asked.
                self.flush = true;
                self.phase = Phase::AwaitFilter;
                self.pending = Some(Box::new(Effect::Filter(step, FilterTicket(()))));
            }
        }
    }

    /// A command's action, unless it was a BDAT: then its chunk is read first.
    fn act_or_chunk(&mut self, action: Action) {
        match self.session.take_chunk() {
            Some(chunk) => self.start_chunk(chunk),
            None => self.act(action),
        }
        self.check_bdat();
    }

    /// A BDAT was answered by the session: its octets come next.
    fn start_chunk(&mut self, chunk: Chunk) {
        let kind = match chunk.refused {
            Some(reply) => ChunkUse::Refused(reply),
            None => {
                let mode = crate::data::line_endings(self.cfg.smtp.bare_line_endings);
                let m = self
                    .bdat
                    .get_or_insert_with(|| Box::new(BdatMessage::new(mode)));
                if m.size.saturating_add(chunk.size) > self.cfg.limits.max_message_size {
                    ChunkUse::TooBig
                } else {
                    ChunkUse::Keep
                }
            }
        };
        self.phase = Phase::Chunk(ChunkPhase {
            remaining: chunk.size,
            size: chunk.size,
            last: chunk.last,
            kind,
        });
        self.epoch += 1;
    }

    /// `tern_messages_received_total` for a message answered here, without the store (the
    /// driver counts those it hands to the store).
    fn count_message(&self, outcome: &'static str) {
        metrics::counter!(tern_metrics::MESSAGES_RECEIVED,
            "listener" => self.session.conn().kind.name(), "outcome" => outcome)
        .increment(1);
    }

    /// The session left its BDAT transaction (RSET, HELO/EHLO, a new TLS session): the message
    /// received so far is dropped, and its spool file removed.
    fn check_bdat(&mut self) {
        if self.bdat.is_some() && !self.session.in_bdat() {
            self.drop_bdat();
        }
    }

    fn drop_bdat(&mut self) {
        if let Some(m) = self.bdat.take() {
            if m.sink.spilled && !m.sink.dropped {
                self.discard_spool = true;
            }
        }
    }

    /// The last octet of a BDAT chunk was read: its reply, or the end of the message.
    fn end_chunk(&mut self, c: ChunkPhase) {
        match c.kind {
            ChunkUse::Refused(reply) => self.queue(&reply),
            ChunkUse::TooBig => {
                let size = self
                    .bdat
                    .as_ref()
                    .map_or(0, |m| m.size)
                    .saturating_add(c.size);
                self.drop_bdat();
                self.session.bdat_failed();
                self.rejected += 1;
                self.count_message("rejected");
                let reply = replies::too_big();
                info!(client_ip = %self.session.conn().peer.ip(), size, outcome = "rejected",
                    reply = %reply, "message rejected");
                self.queue(&reply);
            }
            ChunkUse::Keep if c.last => {
                let Some(mut m) = self.bdat.take() else {
                    self.queue(&replies::local_error());
                    return;
                };
                m.finish();
                let verdict = m.verdict();
                let size = usize::try_from(m.size).unwrap_or(usize::MAX);
                self.end_message(m.sink, size, verdict);
            }
            ChunkUse::Keep => {
                if let Some(m) = &mut self.bdat {
                    // The wait for the next chunk's command holds no DATA memory share.
                    let doomed = m.doomed();
                    let keep = BDAT_IDLE_KEEP.min(self.spill_at);
                    if let Some(op) = m.sink.spill(keep.saturating_add(1), doomed) {
                        self.pending = Some(Box::new(Effect::Spool(op)));
                    }
                }
                self.queue(&replies::chunk_received(c.size));
            }
        }
    }

    fn end_data(&mut self, d: DataPhase) {
        let size = d.decoder.size();
        let verdict = d.decoder.verdict();
        self.end_message(d.sink, size, verdict);
    }

    /// The whole message is in (DATA's final dot, BDAT's LAST chunk): the session's checks,
    /// then the store.
    fn end_message(&mut self, mut d: Sink, size: usize, verdict: Result<(), DataRejection>) {
        let facts = MessageFacts {
            header_end: d.header.end(size as u64),
            received: d.header.received_count(),
            ascii: d.ascii,
        };
        match self.session.finish_data(verdict, &facts) {
            DataEnd::Reject(reply) => {
                self.rejected += 1;
                self.count_message("rejected");
                info!(client_ip = %self.session.conn().peer.ip(), size, outcome = "rejected",
                    reply = %reply, "message rejected");
                self.queue(&reply);
                if d.spilled && !d.dropped {
                    self.discard_spool = true;
                }
            }
            DataEnd::Discard(reply) => {
                // The filters' discard: the client is told the message was taken.
                self.accepted += 1;
                self.count_message("accepted");
                info!(client_ip = %self.session.conn().peer.ip(), size, outcome = "discarded",
                    "message discarded by a content filter");
                self.queue(&reply);
                if d.spilled && !d.dropped {
                    self.discard_spool = true;
                }
            }
            DataEnd::Store(accepted) => {
                if let Some(error) = d.failed.take() {
                    // The spool write failed: nothing was kept, so nothing can be stored.
                    self.rejected += 1;
                    self.count_message("rejected");
                    let reply = self.session.stored(Err(error.into()));
                    info!(client_ip = %self.session.conn().peer.ip(), size,
                        outcome = "store-failed", reply = %reply, "message not stored");
                    self.queue(&reply);
                    return;
                }
                let body = if d.spilled {
                    DataBody::Spooled { tail: d.body }
                } else {
                    DataBody::Memory(d.body)
                };
                self.flush = true;
                self.phase = Phase::AwaitStore;
                self.pending = Some(Box::new(Effect::Store(
                    Box::new(accepted),
                    body,
                    StoreTicket(()),
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests;
