//! One mail transaction on an open session: checks what the message needs against what the server
//! offers, then MAIL / RCPT... / DATA (one RFC 2920 group when PIPELINING is offered, lock-step
//! otherwise), the dot-stuffed body, and one outcome per recipient. In LMTP mode
//! ([`crate::SessionOptions::lmtp`], RFC 2033) the same commands go out, pipelined the same way,
//! and the final dot is answered once per accepted recipient.
//!
//! When the server offers CHUNKING (RFC 3030) the body goes in `BDAT <n> [LAST]` chunks of at
//! most [`BDAT_CHUNK`] octets instead of DATA: line endings made CRLF as for DATA, but no
//! dot-stuffing and no final dot; the reply to the LAST chunk is the per-message outcome.

use tern_proto::{BodyType, Command, DotStuffer, MailParams, RcptParams, Reply, Severity};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::envelope::{rcpt_key, Envelope, MessageTraits};
use crate::error::{ClientError, Stage};
use crate::outcome::{Delivery, Failure, Outcome};
use crate::session::Session;
use crate::transcript::Direction;

/// Body bytes handed to one write (each write has its own data-block timeout).
pub const CHUNK: usize = 64 * 1024;

/// The most message octets in one BDAT chunk (RFC 3030): the most a BDAT transfer holds in
/// memory, besides one [`BodySource`] piece.
pub const BDAT_CHUNK: usize = 1024 * 1024;

/// Room kept before a BDAT chunk's octets for its command line (`BDAT <20 digits> LAST\r\n`
/// is 32 octets), so that line and chunk go out in one write without copying the chunk.
const BDAT_HEAD: usize = 32;

/// Where the bytes of a message come from while it is sent: memory ([`SliceBody`]) or a file
/// read a piece at a time (the relay's spool), so that sending a large message never needs it
/// whole in memory.
pub trait BodySource: Send {
    /// Octets in the whole message (for progress reports).
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next piece of the message, at most [`CHUNK`] octets; `None` at the end.
    fn next_chunk(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Vec<u8>>>> + Send;
}

/// A message in memory as a [`BodySource`].
pub struct SliceBody<'a> {
    rest: &'a [u8],
    len: u64,
}

impl<'a> SliceBody<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        Self {
            rest: message,
            len: message.len() as u64,
        }
    }
}

impl BodySource for SliceBody<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (chunk, rest) = self.rest.split_at(self.rest.len().min(CHUNK));
        self.rest = rest;
        Ok(Some(chunk.to_vec()))
    }
}

/// When the body started and how much of it (dot-stuffed) is written.
struct BodyClock {
    start: Instant,
    written: u64,
}

impl BodyClock {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            written: 0,
        }
    }
}

/// What happened to the transaction as a whole; recipients refused at RCPT keep their own reply.
enum Verdict {
    /// The final dot got this reply (2xx, 4xx or 5xx).
    Final(Reply),
    /// LMTP (RFC 2033 4.2): the final dot got one reply per accepted recipient, in RCPT order;
    /// the first reply, and each accepted recipient's outcome.
    PerRecipient(Reply, Vec<Outcome>),
    /// The transaction failed before or instead of the final reply.
    Failed(Outcome),
    /// No recipient was accepted; nothing to add.
    NoRecipients,
}

/// The octets of the BDAT chunks still to send: at most one chunk and one source piece,
/// after [`BDAT_HEAD`] octets of room for the command line.
struct Chunker {
    buf: Vec<u8>,
    crlf: DotStuffer,
    /// The source is exhausted (and the normalizer finished).
    eof: bool,
    /// For the progress hook: the message's size, and the chunk octets sent so far.
    total: u64,
    sent: u64,
}

impl Chunker {
    fn new(total: u64) -> Self {
        // Grows with the message, to at most about one chunk and one piece.
        Self {
            buf: vec![0; BDAT_HEAD],
            crlf: DotStuffer::line_endings_only(),
            eof: false,
            total,
            sent: 0,
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - BDAT_HEAD
    }

    /// Reads from `body` until a whole chunk is buffered or the message is over; then says
    /// how many octets the next chunk has and whether it is the LAST one. A chunk of exactly
    /// [`BDAT_CHUNK`] octets is never LAST (the end is not known yet): a message whose size is
    /// a multiple of it ends with `BDAT 0 LAST`.
    async fn fill<B: BodySource>(&mut self, body: &mut B) -> std::io::Result<(usize, bool)> {
        while !self.eof && self.pending() < BDAT_CHUNK {
            match body.next_chunk().await? {
                Some(piece) => {
                    self.crlf.feed(&piece, &mut self.buf);
                }
                None => {
                    self.crlf.finish_lines(&mut self.buf);
                    self.eof = true;
                }
            }
        }
        let n = self.pending().min(BDAT_CHUNK);
        Ok((n, self.eof && n == self.pending()))
    }

    /// The command line and the first `n` buffered octets, as one slice.
    fn wire(&mut self, n: usize, last: bool) -> (Command, &[u8]) {
        let cmd = Command::Bdat {
            size: n as u64,
            last,
        };
        let line = cmd.to_line();
        // At most 32 octets (a u64 has at most 20 digits); n is at most BDAT_CHUNK anyway.
        let start = BDAT_HEAD - line.len().min(BDAT_HEAD);
        self.buf[start..BDAT_HEAD].copy_from_slice(&line[..BDAT_HEAD - start]);
        (cmd, &self.buf[start..BDAT_HEAD + n])
    }

    /// Drops the `n` octets just sent.
    fn consume(&mut self, n: usize) {
        self.buf.drain(BDAT_HEAD..BDAT_HEAD + n);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Sends one message to every envelope recipient. Never fails as a whole: each recipient gets
    /// its own outcome (network errors and timeouts are temporary failures). Afterwards the
    /// session is ready for the next message if [`Session::is_usable`].
    pub async fn send_message(&mut self, envelope: &Envelope, message: &[u8]) -> Delivery {
        let traits = MessageTraits::scan(message);
        self.send_message_from(envelope, traits, &mut SliceBody::new(message))
            .await
    }

    /// [`Session::send_message`] for a message read in pieces from `body`, whose `traits` the
    /// caller measured beforehand (MAIL's SIZE and BODY parameters come before the body).
    pub async fn send_message_from<B: BodySource>(
        &mut self,
        envelope: &Envelope,
        traits: MessageTraits,
        body: &mut B,
    ) -> Delivery {
        let keys: Vec<String> = envelope.rcpts.iter().map(rcpt_key).collect();
        let mut delivery = Delivery {
            per_recipient: Vec::with_capacity(keys.len()),
            data_reply: None,
        };
        if keys.is_empty() {
            return delivery;
        }
        let (rejected, mut verdict) = match self.prepare(envelope, traits) {
            Err(e) => (
                vec![None; keys.len()],
                Verdict::Failed(Outcome::from_error(e)),
            ),
            // RFC 3030: BDAT whenever it is offered (tern never converts a message, so nothing
            // stands in its way; BINARYMIME is not used). LMTP keeps DATA: RFC 2033 defines the
            // per-recipient replies after the final dot only.
            Ok(mail) if self.chunking() => self.transact_bdat(envelope, mail, body).await,
            Ok(mail) => self.transact(envelope, mail, body).await,
        };
        let mut lmtp = Vec::new().into_iter();
        match &mut verdict {
            Verdict::Final(r) => delivery.data_reply = Some(r.clone()),
            Verdict::PerRecipient(r, outcomes) => {
                delivery.data_reply = Some(r.clone());
                lmtp = std::mem::take(outcomes).into_iter();
            }
            _ => {}
        }
        for (key, rejection) in keys.into_iter().zip(rejected) {
            let outcome = match (rejection, &verdict) {
                (Some(o), _) => o,
                (None, Verdict::Final(r)) => Outcome::from_reply(Stage::DataEnd, r.clone()),
                // The accepted recipients take the LMTP replies in order; there is one for
                // each (lmtp_replies fills in the ones it could not read).
                (None, Verdict::PerRecipient(..)) => lmtp
                    .next()
                    .unwrap_or_else(|| Outcome::from_error(ClientError::Unusable)),
                (None, Verdict::Failed(o)) => o.clone(),
                (None, Verdict::NoRecipients) => Outcome::from_error(ClientError::Unusable),
            };
            delivery.per_recipient.push((key, outcome));
        }
        delivery
    }

    /// Decides the MAIL parameters, refusing early what the server can never take.
    fn prepare(&self, envelope: &Envelope, traits: MessageTraits) -> Result<Command, ClientError> {
        if !self.is_usable() {
            return Err(ClientError::Unusable);
        }
        let caps = self.capabilities().cloned().unwrap_or_default();
        let needs_utf8 = envelope.needs_smtputf8();
        // RFC 6531 3.4: non-ASCII addresses can't be sent to a server without SMTPUTF8.
        if needs_utf8 && !caps.smtputf8 {
            return Err(ClientError::NeedsSmtpUtf8);
        }
        // RFC 8689 4.2.1: only over TLS, to a server that offers REQUIRETLS; whether the
        // certificate was verified is the caller's policy (it asked for verified TLS).
        if envelope.requiretls && !(caps.requiretls && self.is_tls()) {
            return Err(ClientError::NeedsRequireTls);
        }
        // RFC 6152 3: 8-bit data only with BODY=8BITMIME; we don't downgrade (tern send
        // builds 7-bit-clean MIME, so only raw sendmail input can get here).
        if traits.eight_bit && !caps.eight_bit_mime {
            return Err(ClientError::Needs8BitMime);
        }
        // RFC 1870 6: don't send what the server already said it won't take (0 = no limit).
        if let Some(limit) = caps.size.filter(|l| *l > 0) {
            if traits.wire_size > limit {
                return Err(ClientError::TooBig {
                    size: traits.wire_size,
                    limit,
                });
            }
        }
        let params = MailParams {
            size: caps.size.map(|_| traits.wire_size),
            body: (traits.eight_bit && caps.eight_bit_mime).then_some(BodyType::EightBitMime),
            // RFC 6532 UTF-8 header fields are declared when the server can take them.
            smtputf8: needs_utf8 || (traits.eight_bit_headers && caps.smtputf8),
            auth: None,
            // RFC 3461 5.2: passed on only to a server that offers DSN.
            ret: envelope.dsn.ret.filter(|_| caps.dsn),
            envid: envelope.dsn.envid.clone().filter(|_| caps.dsn),
            requiretls: envelope.requiretls,
        };
        Ok(Command::Mail {
            from: envelope.from.clone(),
            params,
        })
    }

    /// True when the message goes in BDAT chunks: the server offers CHUNKING (SMTP only).
    fn chunking(&self) -> bool {
        !self.opts.lmtp && self.capabilities().is_some_and(|c| c.chunking)
    }

    /// One RCPT command per envelope recipient, with its DSN parameters when DSN is offered.
    fn rcpt_commands(&self, envelope: &Envelope) -> Vec<Command> {
        let dsn = self.capabilities().is_some_and(|c| c.dsn);
        envelope
            .rcpts
            .iter()
            .enumerate()
            .map(|(i, to)| Command::Rcpt {
                to: to.clone(),
                params: match envelope.dsn.rcpts.get(i) {
                    Some(p) if dsn => p.clone(),
                    _ => RcptParams::default(),
                },
            })
            .collect()
    }

    /// The transaction with the body in BDAT chunks (RFC 3030). With PIPELINING, MAIL, the
    /// RCPTs and the first chunk go before any reply is read (RFC 3030 4.2, RFC 2920 3.1);
    /// otherwise MAIL and each RCPT in lock-step, and no octet of the message is read or sent
    /// unless a recipient was accepted. Further chunks go one at a time, each after the
    /// previous one's reply, so at most one chunk is ever held in memory.
    async fn transact_bdat<B: BodySource>(
        &mut self,
        envelope: &Envelope,
        mail: Command,
        body: &mut B,
    ) -> (Vec<Option<Outcome>>, Verdict) {
        let pipelining = self.capabilities().is_some_and(|c| c.pipelining);
        let mut rejected: Vec<Option<Outcome>> = vec![None; envelope.rcpts.len()];
        let rcpts = self.rcpt_commands(envelope);
        let t = self.opts.timeouts;
        let mut chunks = Chunker::new(body.len());
        let mut clock;

        if pipelining {
            // The first chunk is read before anything is sent: a source that fails here
            // leaves the session untouched.
            let (size, last) = match chunks.fill(body).await {
                Ok(next) => next,
                Err(e) => {
                    return (
                        rejected,
                        Verdict::Failed(Outcome::from_error(ClientError::Source(
                            std::sync::Arc::new(e),
                        ))),
                    )
                }
            };
            let mut group = mail.to_line();
            self.log(Direction::Client, &mail.to_string());
            for r in &rcpts {
                self.log(Direction::Client, &r.to_string());
                group.extend_from_slice(&r.to_line());
            }
            if let Err(e) = self.write_raw(Stage::Mail, &group, t.mail).await {
                return (rejected, Verdict::Failed(Outcome::from_error(e)));
            }
            clock = BodyClock::start();
            if let Err(e) = self.send_chunk(&mut chunks, size, last, &mut clock).await {
                return (rejected, Verdict::Failed(Outcome::from_error(e)));
            }
            // RFC 2920 3.2: the replies in order, one per command.
            let mail_reply = match self.read_reply(Stage::Mail, t.mail).await {
                Ok(r) => r,
                Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
            };
            for slot in rejected.iter_mut() {
                match self.read_reply(Stage::Rcpt, t.rcpt).await {
                    Ok(r) if r.is_positive() => {}
                    Ok(r) => *slot = Some(Outcome::from_reply(Stage::Rcpt, r)),
                    Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
                }
            }
            let chunk_reply = match self.read_reply(chunk_stage(last), t.data_end).await {
                Ok(r) => r,
                Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
            };
            if !mail_reply.is_positive() {
                // Every RCPT and the BDAT were answered "bad sequence"; MAIL's reply is the cause.
                rejected.iter_mut().for_each(|s| *s = None);
                self.reset_after_failure().await;
                return (
                    rejected,
                    Verdict::Failed(Outcome::from_reply(Stage::Mail, mail_reply)),
                );
            }
            if rejected.iter().all(Option::is_some) {
                // No recipient: the server dropped the chunk (RFC 3030 2: 503/554 to BDAT).
                self.reset_after_failure().await;
                return (rejected, Verdict::NoRecipients);
            }
            if let Some(verdict) = self.chunk_verdict(chunk_reply, last).await {
                return (rejected, verdict);
            }
        } else {
            if let Some(verdict) = self.lockstep_envelope(&mail, &rcpts, &mut rejected).await {
                return (rejected, verdict);
            }
            clock = BodyClock::start();
        }

        loop {
            let (size, last) = match chunks.fill(body).await {
                Ok(next) => next,
                Err(e) => {
                    // Between chunks: nothing half-sent, RSET ends the transaction cleanly.
                    self.reset_after_failure().await;
                    return (
                        rejected,
                        Verdict::Failed(Outcome::from_error(ClientError::Source(
                            std::sync::Arc::new(e),
                        ))),
                    );
                }
            };
            if let Err(e) = self.send_chunk(&mut chunks, size, last, &mut clock).await {
                return (rejected, Verdict::Failed(Outcome::from_error(e)));
            }
            let reply = match self.read_reply(chunk_stage(last), t.data_end).await {
                Ok(r) => r,
                Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
            };
            if let Some(verdict) = self.chunk_verdict(reply, last).await {
                return (rejected, verdict);
            }
        }
    }

    /// Writes one `BDAT <n> [LAST]` line and its octets, under the data-block timeout and the
    /// minimum data rate as [`Session::write_body`] has them.
    /// MAIL, then each RCPT, one at a time (no PIPELINING): the refused recipients are marked
    /// in `rejected`. `Some` when the transaction ends here (MAIL refused, no recipient left,
    /// the connection lost), with RSET sent where the session is still usable.
    async fn lockstep_envelope(
        &mut self,
        mail: &Command,
        rcpts: &[Command],
        rejected: &mut [Option<Outcome>],
    ) -> Option<Verdict> {
        let t = self.opts.timeouts;
        let mail_reply = match self.command(Stage::Mail, mail, t.mail).await {
            Ok(r) => r,
            Err(e) => return Some(Verdict::Failed(Outcome::from_error(e))),
        };
        if !mail_reply.is_positive() {
            self.reset_after_failure().await;
            return Some(Verdict::Failed(Outcome::from_reply(
                Stage::Mail,
                mail_reply,
            )));
        }
        for (slot, cmd) in rejected.iter_mut().zip(rcpts) {
            match self.command(Stage::Rcpt, cmd, t.rcpt).await {
                Ok(r) if r.is_positive() => {}
                Ok(r) => *slot = Some(Outcome::from_reply(Stage::Rcpt, r)),
                Err(e) => return Some(Verdict::Failed(Outcome::from_error(e))),
            }
        }
        if rejected.iter().all(Option::is_some) {
            self.reset_after_failure().await;
            return Some(Verdict::NoRecipients);
        }
        None
    }

    async fn send_chunk(
        &mut self,
        chunks: &mut Chunker,
        size: usize,
        last: bool,
        clock: &mut BodyClock,
    ) -> Result<(), ClientError> {
        let (total, before) = (chunks.total, chunks.sent);
        let (cmd, bytes) = chunks.wire(size, last);
        self.log(Direction::Client, &cmd.to_string());
        let line = bytes.len() - size;
        let mut written = 0;
        // In writes of at most CHUNK octets, as DATA's body: each under its own data-block
        // timeout, with a progress report after each.
        for piece in bytes.chunks(CHUNK) {
            self.write_body(piece, clock).await?;
            written += piece.len();
            // Chunk octets count CRLFs made of bare LFs; the report stays within the total.
            let sent = if last && written == bytes.len() {
                total
            } else {
                (before + written.saturating_sub(line) as u64).min(total)
            };
            if let Some(p) = self.progress.as_mut() {
                p(sent, total);
            }
        }
        chunks.consume(size);
        chunks.sent = before + size as u64;
        Ok(())
    }

    /// What a chunk's reply means: `None` to go on with the next chunk (a 2xx to one that is
    /// not the last). The reply to LAST is the message's outcome, as the final dot's is. Any
    /// other reply ends the transaction (RFC 3030 2: no more chunks may follow), and RSET
    /// makes sure the server has left it before the session carries another message.
    async fn chunk_verdict(&mut self, reply: Reply, last: bool) -> Option<Verdict> {
        if last {
            if !reply.is_positive() {
                self.reset_after_failure().await;
            }
            return Some(Verdict::Final(reply));
        }
        if reply.is_positive() {
            return None;
        }
        self.reset_after_failure().await;
        Some(Verdict::Failed(Outcome::from_reply(Stage::DataBody, reply)))
    }

    async fn transact<B: BodySource>(
        &mut self,
        envelope: &Envelope,
        mail: Command,
        body: &mut B,
    ) -> (Vec<Option<Outcome>>, Verdict) {
        let pipelining = self.capabilities().is_some_and(|c| c.pipelining);
        let n = envelope.rcpts.len();
        let mut rejected: Vec<Option<Outcome>> = vec![None; n];
        let rcpts = self.rcpt_commands(envelope);
        let t = self.opts.timeouts;

        // MAIL, RCPT..., DATA: RFC 2920 3.1 lets all of them go in one write, DATA last.
        let data_reply = if pipelining {
            let mut group = mail.to_line();
            self.log(Direction::Client, &mail.to_string());
            for r in &rcpts {
                self.log(Direction::Client, &r.to_string());
                group.extend_from_slice(&r.to_line());
            }
            self.log(Direction::Client, "DATA");
            group.extend_from_slice(b"DATA\r\n");
            if let Err(e) = self.write_raw(Stage::Mail, &group, t.mail).await {
                return (rejected, Verdict::Failed(Outcome::from_error(e)));
            }
            // RFC 2920 3.2: read the replies in order, one per command.
            let mail_reply = match self.read_reply(Stage::Mail, t.mail).await {
                Ok(r) => r,
                Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
            };
            let mut failure = None;
            for slot in rejected.iter_mut() {
                match self.read_reply(Stage::Rcpt, t.rcpt).await {
                    Ok(r) if r.is_positive() => {}
                    Ok(r) => *slot = Some(Outcome::from_reply(Stage::Rcpt, r)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let data = match failure {
                Some(e) => Err(e),
                None => self.read_reply(Stage::Data, t.data).await,
            };
            if !mail_reply.is_positive() {
                // Every RCPT and the DATA were answered "bad sequence"; the MAIL reply is the cause.
                rejected.iter_mut().for_each(|s| *s = None);
                if matches!(&data, Ok(r) if r.code() == 354) {
                    self.abort_data().await;
                }
                self.reset_after_failure().await;
                return (
                    rejected,
                    Verdict::Failed(Outcome::from_reply(Stage::Mail, mail_reply)),
                );
            }
            match data {
                Ok(r) => r,
                Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
            }
        } else {
            if let Some(verdict) = self.lockstep_envelope(&mail, &rcpts, &mut rejected).await {
                return (rejected, verdict);
            }
            match self.command(Stage::Data, &Command::Data, t.data).await {
                Ok(r) => r,
                Err(e) => return (rejected, Verdict::Failed(Outcome::from_error(e))),
            }
        };

        if rejected.iter().all(Option::is_some) {
            // RFC 2920 3.1: the server accepted DATA although every RCPT failed; end the
            // empty message with a lone dot instead of sending the content.
            if data_reply.code() == 354 {
                self.abort_data().await;
            }
            self.reset_after_failure().await;
            return (rejected, Verdict::NoRecipients);
        }
        if data_reply.code() != 354 {
            self.reset_after_failure().await;
            // RFC 5321 4.3.2: DATA succeeds only with 354. A 2xx here is no acceptance: no
            // byte of the message was sent (found by the `client_reply` fuzz target; taken as
            // a 250, the message counted as delivered and was lost). Any other non-5xx reply
            // is temporary, as `from_reply` has it.
            let outcome = match data_reply.severity() {
                Severity::Positive => Outcome::TemporaryFailure(Failure::Reply {
                    stage: Stage::Data,
                    reply: data_reply,
                }),
                _ => Outcome::from_reply(Stage::Data, data_reply),
            };
            return (rejected, Verdict::Failed(outcome));
        }
        match self.send_body(body).await {
            Ok(r) if self.opts.lmtp => {
                let accepted = rejected.iter().filter(|s| s.is_none()).count();
                let outcomes = self.lmtp_replies(&r, accepted).await;
                (rejected, Verdict::PerRecipient(r, outcomes))
            }
            Ok(r) => (rejected, Verdict::Final(r)),
            Err(e) => (rejected, Verdict::Failed(Outcome::from_error(e))),
        }
    }

    /// RFC 2033 4.2: after the final dot an LMTP server sends one reply for each recipient
    /// whose RCPT succeeded, in RCPT order, each deciding that recipient alone (a 452 for one
    /// mailbox defers only that one). `first` is the reply already read. A reply that cannot
    /// be read (timeout, closed connection, 421) leaves that recipient and the rest
    /// temporarily failed: the server may have delivered some of them, but without its word
    /// a retry (a possible duplicate) is the only way not to lose mail.
    async fn lmtp_replies(&mut self, first: &Reply, accepted: usize) -> Vec<Outcome> {
        let limit = self.opts.timeouts.data_end;
        let mut outcomes = Vec::with_capacity(accepted);
        outcomes.push(Outcome::from_reply(Stage::DataEnd, first.clone()));
        while outcomes.len() < accepted {
            match self.read_reply(Stage::DataEnd, limit).await {
                Ok(r) => outcomes.push(Outcome::from_reply(Stage::DataEnd, r)),
                Err(e) => {
                    outcomes.resize(accepted, Outcome::from_error(e));
                    break;
                }
            }
        }
        outcomes
    }

    /// Streams the dot-stuffed message and reads the reply to the final dot.
    async fn send_body<B: BodySource>(&mut self, message: &mut B) -> Result<Reply, ClientError> {
        let t = self.opts.timeouts;
        let total = message.len();
        self.log(
            Direction::Client,
            &format!("<message, {total} octets, dot-stuffed>"),
        );
        let mut stuffer = DotStuffer::new();
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
        let mut sent = 0u64;
        let mut body = BodyClock::start();
        loop {
            let chunk = match message.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // Mid-body: the server cannot be brought back to a clean state but by closing.
                Err(e) => {
                    self.broken = true;
                    return Err(ClientError::Source(std::sync::Arc::new(e)));
                }
            };
            out.clear();
            stuffer.feed(&chunk, &mut out);
            self.write_body(&out, &mut body).await?;
            sent += chunk.len() as u64;
            if let Some(p) = self.progress.as_mut() {
                p(sent, total);
            }
        }
        out.clear();
        stuffer.finish(&mut out);
        self.log(Direction::Client, ".");
        self.write_body(&out, &mut body).await?;
        self.read_reply(Stage::DataEnd, t.data_end).await
    }

    /// Writes one block of the body within the data-block timeout (RFC 5321 4.5.3.2.5) and,
    /// when a [`crate::MinDataRate`] is set, by the time the rate allows for everything
    /// written so far plus this block, whichever comes first. Missing the rate's deadline is
    /// [`ClientError::TooSlow`]; the session is unusable afterwards either way (the server is
    /// mid-body and there is no way back to a clean state but closing).
    async fn write_body(&mut self, bytes: &[u8], body: &mut BodyClock) -> Result<(), ClientError> {
        let block = self.opts.timeouts.data_block;
        let after = body.written + bytes.len() as u64;
        let now = Instant::now();
        let floor = self.opts.min_data_rate.and_then(|rate| {
            let deadline = rate.deadline(body.start, after)?;
            // Only when it comes before the data-block timeout does the rate decide.
            let block_ends = now.checked_add(block)?;
            (deadline < block_ends).then_some((rate, deadline))
        });
        let result = match floor {
            None => self.write_raw(Stage::DataBody, bytes, block).await,
            Some((rate, deadline)) => {
                let left = deadline.saturating_duration_since(now);
                match self.write_raw(Stage::DataBody, bytes, left).await {
                    Err(ClientError::Timeout { .. }) => Err(ClientError::TooSlow {
                        sent: body.written,
                        after: body.start.elapsed(),
                        min: rate.bytes_per_sec,
                    }),
                    other => other,
                }
            }
        };
        if result.is_ok() {
            body.written = after;
        }
        result
    }

    /// Ends a DATA we must not fill with a lone dot; its reply does not matter.
    async fn abort_data(&mut self) {
        let t = self.opts.timeouts;
        self.log(Direction::Client, ".");
        if self
            .write_raw(Stage::DataBody, b".\r\n", t.data_block)
            .await
            .is_ok()
        {
            let _ = self.read_reply(Stage::DataEnd, t.data_end).await;
        }
    }

    /// Leaves the connection in a clean state for the next message (errors mark it unusable).
    async fn reset_after_failure(&mut self) {
        if self.is_usable() {
            let _ = self.rset().await;
        }
    }
}

/// The stage of a chunk's reply: the LAST one answers for the message, as the final dot does.
fn chunk_stage(last: bool) -> Stage {
    if last {
        Stage::DataEnd
    } else {
        Stage::DataBody
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{BareLineEndings, DataDecoder, DataProgress};

    /// What DATA delivers: the message dot-stuffed, then decoded by the server's decoder.
    fn via_data(message: &[u8]) -> Vec<u8> {
        let wire = DotStuffer::encode(message);
        let mut dec = DataDecoder::new(1 << 20, BareLineEndings::Reject);
        let mut out = Vec::new();
        assert!(matches!(
            dec.feed(&wire, &mut out),
            DataProgress::Done { .. }
        ));
        out
    }

    #[test]
    fn bdat_octets_are_what_data_delivers_in_any_split() {
        let inputs: [&[u8]; 7] = [
            b"",
            b"a",
            b"a\r\n.b\r\n..\r\n.\r\n",
            b"bare\nlf\nno end",
            b"bare\rcr\r\r\n\n",
            b"x\r",
            b"\r\n\r\n.",
        ];
        for input in inputs {
            let want = via_data(input);
            for cut in 0..=input.len() {
                let mut n = DotStuffer::line_endings_only();
                let mut out = Vec::new();
                n.feed(&input[..cut], &mut out);
                n.feed(&input[cut..], &mut out);
                n.finish_lines(&mut out);
                assert_eq!(out, want, "{input:?} cut at {cut}");
            }
        }
    }
}
