//! Content filters: the `[[milters]]` of one SMTP session, asked in order at each step.
//!
//! Each milter gets its own connection per SMTP session (as Postfix does), opened before the
//! greeting and replayed (CONNECT, HELO) at the next MAIL if it was lost. At each step the
//! first milter that does not say continue decides; a milter that accepted is asked nothing
//! more about the message. At the end of the message the milters run one after the other on
//! the message as the earlier ones left it ([`Draft`]): each sees the earlier ones' changes.
//! A milter's changes are applied only once its final verdict is in, so a milter that fails
//! half-way leaves nothing of itself in the message.
//!
//! A milter that cannot be asked (down, too slow, nonsense on the wire) is handled by its
//! `on_failure`: `tempfail` answers the step 451 4.7.1, `accept` goes on without it for the
//! rest of the transaction. Either way the session goes on serving.

mod draft;
mod macros;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use tern_config::{Config, MilterAddress, MilterConfig, OnFailure};
use tern_delivery::intake::Verified;
use tern_delivery::{Accepted, AcceptedRecipient, RcptDecision};
use tern_milter::{
    Command, EndOfMessage, Endpoint, MilterConn, MilterError, Modification, NulFree, Step, Verdict,
    MILTER_CHUNK_SIZE,
};
use tern_proto::address::{parse_forward_path, parse_reverse_path};
use tern_proto::{ForwardPath, Reply, ReversePath};
use tern_queue::{SpoolFile, StoreError};

use crate::policy;
use crate::replies;
use crate::session::{ConnInfo, FilterStep, FilterVerdict, ListenerKind, Session};

pub use draft::Draft;

/// What the milters decided at the end of a message.
#[derive(Debug)]
pub enum MessageVerdict {
    /// Store it (with the changes already applied to the accepted message and its body).
    Store,
    /// Refuse it with this reply.
    Reject(Reply),
    /// Tell the client 250 and store nothing.
    Discard,
}

/// What a milter is still asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    No,
    /// It accepted (or failed with `on_failure = "accept"`) for this transaction.
    Transaction,
    /// It accepted the connection.
    Connection,
}

struct Slot {
    cfg: MilterConfig,
    conn: Option<MilterConn>,
    skip: Skip,
}

/// The milters of one SMTP session.
pub struct FilterChain {
    slots: Vec<Slot>,
    cfg: Arc<Config>,
    info: ConnInfo,
    helo: Option<String>,
    /// A MAIL went to the milters and its transaction has not ended with an end of message:
    /// the next MAIL or HELO sends SMFIC_ABORT first.
    in_transaction: bool,
    /// A milter discarded at connect or HELO: every message of the session is discarded.
    discard_all: bool,
}

impl FilterChain {
    /// The chain for a session of this listener; `None` when no milter applies to it.
    pub fn for_session(cfg: &Arc<Config>, info: &ConnInfo) -> Option<Self> {
        let listener = match info.kind {
            ListenerKind::Smtp => tern_config::MilterListener::Smtp,
            ListenerKind::Submission => tern_config::MilterListener::Submission,
            ListenerKind::Submissions => tern_config::MilterListener::Submissions,
        };
        let slots: Vec<Slot> = cfg
            .milters
            .iter()
            .filter(|m| m.applies_to(listener))
            .map(|m| Slot {
                cfg: m.clone(),
                conn: None,
                skip: Skip::No,
            })
            .collect();
        (!slots.is_empty()).then(|| Self {
            slots,
            cfg: cfg.clone(),
            info: info.clone(),
            helo: None,
            in_transaction: false,
            discard_all: false,
        })
    }

    /// Before the greeting: connects every milter and shows it the client. `Err` is the reply
    /// to greet with before closing (a milter refused the connection). A milter that cannot
    /// be reached is not an error yet: MAIL answers for it (so the client hears a 451 it
    /// retries on, not a dropped connection).
    pub async fn connect(&mut self) -> Result<(), Reply> {
        for i in 0..self.slots.len() {
            match self.open(i).await {
                Ok(Verdict::Continue) => {}
                Ok(Verdict::Accept) => self.slots[i].skip = Skip::Connection,
                Ok(Verdict::Discard) => {
                    self.discard_all = true;
                    self.slots[i].skip = Skip::Connection;
                }
                Ok(Verdict::TempFail) => return Err(replies::filter_connect_tempfail()),
                Ok(Verdict::Reject | Verdict::Skip) => {
                    return Err(replies::filter_connect_rejected())
                }
                Ok(Verdict::Reply(r)) => return Err(r.to_reply()),
                Err(e) => {
                    // Not answered here: MAIL reconnects and answers for it.
                    let _ = self.failed(i, "connect", &e);
                }
            }
        }
        Ok(())
    }

    /// One SMTP step (HELO, MAIL, RCPT, DATA) through the milters.
    pub async fn step(&mut self, step: &FilterStep, session: &Session) -> FilterVerdict {
        match step {
            FilterStep::Helo { name } => {
                self.end_transaction().await;
                self.helo = Some(name.clone());
            }
            FilterStep::Mail { .. } => {
                self.end_transaction().await;
                self.in_transaction = true;
                if self.discard_all {
                    return FilterVerdict::Discard;
                }
                for i in 0..self.slots.len() {
                    let slot = &mut self.slots[i];
                    if slot.skip == Skip::Transaction {
                        slot.skip = Skip::No;
                    }
                    if slot.skip == Skip::No && slot.conn.is_none() {
                        // Lost (or never reached): connect again and replay the session.
                        if let Err(e) = self.reopen(i).await {
                            if let Some(v) = self.failed(i, "connect", &e) {
                                return v;
                            }
                        }
                    }
                }
            }
            FilterStep::Rcpt { .. } | FilterStep::Data => {}
        }
        let (kind, command, macros) = macros::for_step(step, session);
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.skip != Skip::No {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                // Lost earlier. At HELO, MAIL reconnects and answers for it; later in a
                // transaction it stays failed: nothing passes it unfiltered under tempfail.
                if matches!(step, FilterStep::Helo { .. })
                    || slot.cfg.on_failure == OnFailure::Accept
                {
                    continue;
                }
                return FilterVerdict::Reject(replies::filter_tempfail());
            };
            match conn.step(kind, macros.clone(), command.clone(), None).await {
                Ok(Verdict::Continue | Verdict::Skip) => {}
                Ok(Verdict::Accept) => {
                    slot.skip = if matches!(step, FilterStep::Helo { .. }) {
                        Skip::Connection
                    } else {
                        Skip::Transaction
                    };
                }
                Ok(Verdict::Discard) => {
                    if matches!(step, FilterStep::Helo { .. }) {
                        self.discard_all = true;
                        continue;
                    }
                    return FilterVerdict::Discard;
                }
                Ok(v) => {
                    let name = slot.cfg.name.clone();
                    let r = rejection(v, replies::filter_command_rejected());
                    info!(client = %self.info.peer, milter = %name, step = step_label(step),
                        reply = %r, "content filter refused a command");
                    return FilterVerdict::Reject(r);
                }
                Err(e) => {
                    if let Some(v) = self.failed(i, step_label(step), &e) {
                        return v;
                    }
                }
            }
        }
        FilterVerdict::Continue
    }

    /// The end of the message: each milter in turn gets the header fields, the body and the
    /// end of message, and its changes are applied before the next one sees the message.
    pub async fn message(
        &mut self,
        accepted: &mut Accepted,
        verified: &mut Verified,
        spool: impl Fn() -> Result<SpoolFile, StoreError> + Clone + Send + 'static,
    ) -> Result<MessageVerdict, StoreError> {
        // The transaction ends here whatever the verdict.
        self.in_transaction = false;
        if self.discard_all {
            return Ok(MessageVerdict::Discard);
        }
        if self.slots.iter().all(|s| s.skip != Skip::No) {
            return Ok(MessageVerdict::Store);
        }
        let prefix = std::mem::take(&mut accepted.received);
        let body = std::mem::replace(
            &mut verified.body,
            tern_queue::MessageBody::Memory(Vec::new()),
        );
        let max_header = self.cfg.limits.max_header_size;
        let mut draft = tokio::task::spawn_blocking(move || Draft::new(prefix, body, max_header))
            .await
            .map_err(|e| StoreError::new(format!("filter task failed: {e}")))?
            .map_err(|e| StoreError::from_io("reading the spooled message", &e))?;
        let mut verdict = MessageVerdict::Store;
        let mut quarantine: Option<(String, String)> = None;
        for i in 0..self.slots.len() {
            if self.slots[i].skip != Skip::No {
                continue;
            }
            let deadline = Instant::now() + self.slots[i].cfg.message_timeout;
            let on_failure = self.slots[i].cfg.on_failure;
            let Some(conn) = self.slots[i].conn.as_mut() else {
                // Failed earlier in this transaction.
                if on_failure == OnFailure::Accept {
                    continue;
                }
                verdict = MessageVerdict::Reject(replies::filter_tempfail());
                break;
            };
            let max = self.cfg.limits.max_message_size;
            match send_message(conn, &draft, &accepted.id, deadline, max).await {
                Ok(eom) => {
                    let name = self.slots[i].cfg.name.clone();
                    match self.apply(&name, eom, &mut draft, accepted) {
                        Ok(None) => {}
                        Ok(Some(Outcome::Quarantine(reason))) => {
                            quarantine.get_or_insert((name, reason));
                        }
                        Ok(Some(Outcome::Verdict(v))) => {
                            verdict = v;
                            break;
                        }
                        Err(why) => {
                            let e = MilterError::Protocol(why);
                            if let Some(v) = self.failed(i, "end of message", &e) {
                                verdict = to_message_verdict(v);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(v) = self.failed(i, "end of message", &e) {
                        verdict = to_message_verdict(v);
                        break;
                    }
                }
            }
        }
        if let MessageVerdict::Store = verdict {
            if let Some((milter, reason)) = quarantine {
                info!(queue_id = %accepted.id, milter = %milter, reason = %reason,
                    "content filter quarantined the message: local copies go to .Junk, remote ones are held");
                verified.folder = tern_delivery::maildir::Folder::Junk;
                verified.stored.quarantined = true;
                verified.hold = true;
            }
            if accepted.recipients.is_empty() {
                info!(queue_id = %accepted.id, "content filters removed every recipient");
                return Ok(MessageVerdict::Discard);
            }
        }
        let (prefix, body) = tokio::task::spawn_blocking(move || draft.finish(spool))
            .await
            .map_err(|e| StoreError::new(format!("filter task failed: {e}")))??;
        accepted.received = prefix;
        verified.body = body;
        Ok(verdict)
    }

    /// The session is over: SMFIC_QUIT to every milter.
    pub async fn quit(self) {
        for slot in self.slots {
            if let Some(conn) = slot.conn {
                conn.quit().await;
            }
        }
    }

    /// One milter's end-of-message answer: its verdict, or its changes applied. `Err` is a
    /// change that cannot be made, which fails the milter (and nothing of it is applied).
    fn apply(
        &self,
        name: &str,
        eom: EndOfMessage,
        draft: &mut Draft,
        accepted: &mut Accepted,
    ) -> Result<Option<Outcome>, String> {
        match eom.verdict {
            Verdict::Accept | Verdict::Continue | Verdict::Skip => {}
            Verdict::Discard => {
                info!(queue_id = %accepted.id, milter = %name, "content filter discarded the message");
                return Ok(Some(Outcome::Verdict(MessageVerdict::Discard)));
            }
            v => {
                let r = rejection(v, replies::filter_content_rejected());
                info!(queue_id = %accepted.id, milter = %name, reply = %r,
                    "content filter rejected the message");
                return Ok(Some(Outcome::Verdict(MessageVerdict::Reject(r))));
            }
        }
        // Envelope changes are worked out first, on a copy, so that a bad one leaves the
        // message as it was.
        let mut sender = accepted.sender.clone();
        let mut recipients = accepted.recipients.clone();
        for m in &eom.modifications {
            match m {
                Modification::ChangeFrom { sender: s, .. } => {
                    let path = bracketed(s);
                    match parse_reverse_path(&path) {
                        Ok((ReversePath::Null, _)) => sender = None,
                        Ok((p, _)) => sender = p.address().map(|a| a.to_string()),
                        Err(e) => return Err(format!("change of sender to {path}: {e}")),
                    }
                }
                Modification::AddRcpt { recipient, .. } => {
                    let path = bracketed(recipient);
                    let (fp, _) = parse_forward_path(&path)
                        .map_err(|e| format!("added recipient {path}: {e}"))?;
                    // A milter is the operator's own: what it adds may be relayed.
                    match policy::decide_recipient(&self.cfg, &fp, true) {
                        RcptDecision::Accept(targets) => {
                            let address = match &fp {
                                ForwardPath::Postmaster => {
                                    policy::postmaster_address(&self.cfg).to_string()
                                }
                                ForwardPath::Mailbox(a) => a.to_string(),
                            };
                            if recipients.len() >= self.cfg.limits.max_recipients {
                                warn!(queue_id = %accepted.id, milter = %name, recipient = %path,
                                    "content filter added a recipient beyond limits.max_recipients; not added");
                            } else if !recipients
                                .iter()
                                .any(|r| r.address.eq_ignore_ascii_case(&address))
                            {
                                recipients.push(AcceptedRecipient {
                                    address,
                                    targets,
                                    dsn: Default::default(),
                                });
                            }
                        }
                        _ => warn!(queue_id = %accepted.id, milter = %name, recipient = %path,
                            "content filter added a recipient with no mailbox here; not added"),
                    }
                }
                Modification::DeleteRcpt(r) => {
                    let path = bracketed(r);
                    let address = path.trim_matches(['<', '>']);
                    recipients.retain(|r| !r.address.eq_ignore_ascii_case(address));
                }
                _ => {}
            }
        }
        draft.apply(&eom.modifications)?;
        accepted.sender = sender;
        accepted.recipients = recipients;
        Ok(eom.quarantine.map(Outcome::Quarantine))
    }

    /// Connects milter `i` and shows it the client (CONNECT).
    async fn open(&mut self, i: usize) -> Result<Verdict, MilterError> {
        let slot = &mut self.slots[i];
        let timeout = slot.cfg.timeout;
        let mut conn = connect(&slot.cfg.address, timeout).await?;
        let refused = conn.negotiated().refused_actions;
        if !refused.is_empty() {
            warn!(milter = %slot.cfg.name, actions = refused.bits(),
                "milter asked for actions tern does not offer");
        }
        let (command, macros) = macros::connect(&self.info, &self.cfg);
        let verdict = conn
            .step(Step::Connect, Some(macros), command, None)
            .await?;
        slot.conn = Some(conn);
        Ok(verdict)
    }

    /// Connects milter `i` again and replays CONNECT and HELO (their verdicts were given
    /// on the first connection; a refusal now refuses the transaction).
    async fn reopen(&mut self, i: usize) -> Result<(), MilterError> {
        let verdict = self.open(i).await?;
        let mut verdict = Some(verdict);
        if let (Some(name), Some(conn)) = (self.helo.clone(), self.slots[i].conn.as_mut()) {
            if matches!(verdict, Some(Verdict::Continue)) {
                let (command, macros) = macros::helo(&name, &self.info);
                verdict = Some(conn.step(Step::Helo, Some(macros), command, None).await?);
            }
        }
        match verdict {
            Some(Verdict::Continue) | None => Ok(()),
            Some(Verdict::Accept) => {
                self.slots[i].skip = Skip::Connection;
                Ok(())
            }
            Some(v) => {
                self.slots[i].conn = None;
                Err(MilterError::Protocol(format!(
                    "refused the replayed connection ({v:?})"
                )))
            }
        }
    }

    /// SMFIC_ABORT when a transaction ended without its end of message.
    async fn end_transaction(&mut self) {
        if !std::mem::take(&mut self.in_transaction) {
            return;
        }
        for slot in &mut self.slots {
            if let Some(conn) = slot.conn.as_mut() {
                if conn.abort().await.is_err() {
                    slot.conn = None;
                }
            }
        }
    }

    /// Milter `i` failed: its connection is dropped, and its `on_failure` decides. `Some` is
    /// the verdict to answer the step with (`tempfail`); `None` goes on without it.
    fn failed(&mut self, i: usize, step: &str, e: &MilterError) -> Option<FilterVerdict> {
        let slot = &mut self.slots[i];
        slot.conn = None;
        match slot.cfg.on_failure {
            OnFailure::Tempfail => {
                warn!(client = %self.info.peer, milter = %slot.cfg.name, step, error = %e,
                    on_failure = "tempfail", "milter failed");
                (step != "connect" || self.in_transaction)
                    .then(|| FilterVerdict::Reject(replies::filter_tempfail()))
            }
            OnFailure::Accept => {
                warn!(client = %self.info.peer, milter = %slot.cfg.name, step, error = %e,
                    on_failure = "accept", "milter failed; going on without it");
                slot.skip = Skip::Transaction;
                None
            }
        }
    }
}

enum Outcome {
    Quarantine(String),
    Verdict(MessageVerdict),
}

fn to_message_verdict(v: FilterVerdict) -> MessageVerdict {
    match v {
        FilterVerdict::Reject(r) => MessageVerdict::Reject(r),
        FilterVerdict::Discard => MessageVerdict::Discard,
        FilterVerdict::Continue => MessageVerdict::Store,
    }
}

/// The reply for a refusing verdict.
fn rejection(v: Verdict, default: Reply) -> Reply {
    match v {
        Verdict::TempFail => replies::filter_tempfail(),
        Verdict::Reply(r) => r.to_reply(),
        _ => default,
    }
}

fn step_label(step: &FilterStep) -> &'static str {
    match step {
        FilterStep::Helo { .. } => "helo",
        FilterStep::Mail { .. } => "mail",
        FilterStep::Rcpt { .. } => "rcpt",
        FilterStep::Data => "data",
    }
}

/// An address as milters write it, with or without its angle brackets.
fn bracketed(s: &NulFree) -> String {
    let s = s.to_string_lossy();
    let s = s.trim();
    if s.starts_with('<') {
        s.to_string()
    } else {
        format!("<{s}>")
    }
}

async fn connect(address: &MilterAddress, timeout: Duration) -> Result<MilterConn, MilterError> {
    let endpoint = match address {
        MilterAddress::Inet(a) => Endpoint::Inet(*a),
        MilterAddress::Unix(p) => Endpoint::Unix(p),
    };
    MilterConn::connect(endpoint, timeout).await
}

/// Headers, end of headers, body and end of message to one milter, within its whole-message
/// deadline.
async fn send_message(
    conn: &mut MilterConn,
    draft: &Draft,
    id: &str,
    deadline: Instant,
    max_body: u64,
) -> Result<EndOfMessage, MilterError> {
    let run = async {
        for (name, value) in draft.headers() {
            let command = Command::Header {
                name: NulFree::lossy(name.as_bytes()),
                value: NulFree::lossy(&value),
            };
            let v = conn
                .step(Step::Header, None, command, Some(deadline))
                .await?;
            if v != Verdict::Continue {
                return Ok(early(v));
            }
        }
        let v = conn
            .step(
                Step::EndOfHeaders,
                None,
                Command::EndOfHeaders,
                Some(deadline),
            )
            .await?;
        if v != Verdict::Continue {
            return Ok(early(v));
        }
        if conn.negotiated().sends(Step::Body) {
            let mut reader = draft.body()?;
            let mut buf = vec![0u8; MILTER_CHUNK_SIZE];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                let chunk = tern_milter::BodyChunk::new(buf[..n].to_vec())
                    .map_err(|e| MilterError::Protocol(e.to_string()))?;
                match conn
                    .step(Step::Body, None, Command::Body(chunk), Some(deadline))
                    .await?
                {
                    Verdict::Continue => {}
                    Verdict::Skip => break,
                    v => return Ok(early(v)),
                }
            }
        }
        conn.end_of_message(Some(macros::end_of_message(id)), deadline, max_body)
            .await
    };
    match tokio::time::timeout_at(deadline, run).await {
        Ok(r) => r,
        Err(_) => Err(MilterError::Timeout("message")),
    }
}

/// A verdict before the end of message (at a header or the body): final, with no changes.
fn early(verdict: Verdict) -> EndOfMessage {
    EndOfMessage {
        verdict,
        modifications: Vec::new(),
        quarantine: None,
    }
}
