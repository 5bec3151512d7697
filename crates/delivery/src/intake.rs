//! Intake: where an accepted message goes before the 250. Local recipients go straight into
//! their Maildir (the Maildir rename is itself the durable commit, so there is no
//! spool-then-copy), remote recipients into the durable queue for the relay. Both are fsync'd
//! before [`MessageStore::store`] returns. Our own mail is DKIM-signed here, once, before
//! either copy is written, so that every copy carries the same signature over the bytes that
//! leave (RFC 6376 5: sign as late as possible, but nothing after tern changes the message).
//! The queue tells its subscribers (the relay's
//! scheduler) about the new entry; intake knows nothing of the relay.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tern_auth::{ArcSealer, Signer, Verifier};
use tern_queue::{
    Envelope, Event, MessageBody, QueueId, QueueStore, Recipient, RecipientStatus, SpoolFile,
    StoreError,
};

use tern_config::Config;

use crate::accepted::Inbound;
pub use crate::accepted::{Accepted, AcceptedRecipient};
use crate::checks::{Checked, InboundChecks, NotStored, Stored};
use crate::forward;
use crate::local::LocalDelivery;
use crate::maildir::Folder;
use crate::router::Target;

/// The session's port to durable storage (OpenSMTPD's separation of smtpd and queue): the
/// session never touches the disk itself.
pub trait MessageStore: Send + Sync + 'static {
    /// Makes the message durable (fsync'd) for every recipient; only then may the session
    /// answer 250. `body` is the client's data, without the trace header in `accepted.received`:
    /// in memory for a small message, in a spool file for a large one. A message marked
    /// [`Inbound::Verify`] is verified first and may be refused ([`NotStored::Refused`]).
    /// The same as [`MessageStore::verify`] then [`MessageStore::commit`].
    fn store(
        &self,
        mut accepted: Accepted,
        body: MessageBody,
    ) -> impl Future<Output = Result<Stored, NotStored>> + Send {
        async move {
            let verified = self.verify(&mut accepted, body).await?;
            self.commit(accepted, verified).await
        }
    }

    /// The checks before the message is stored: a message marked [`Inbound::Verify`] is
    /// verified (and may be refused), and gets its Authentication-Results in
    /// `accepted.received`. Content filters run between this and [`MessageStore::commit`], so
    /// they see the results.
    fn verify(
        &self,
        accepted: &mut Accepted,
        body: MessageBody,
    ) -> impl Future<Output = Result<Verified, NotStored>> + Send;

    /// Makes the verified message durable for every recipient (see [`MessageStore::store`]).
    fn commit(
        &self,
        accepted: Accepted,
        verified: Verified,
    ) -> impl Future<Output = Result<Stored, NotStored>> + Send;

    /// A new file to stream a large body into while it arrives (blocking I/O: call it off
    /// the async threads). The body handed to [`MessageStore::store`] as
    /// [`MessageBody::Spooled`] comes from here.
    fn spool(&self) -> Result<SpoolFile, StoreError>;
}

/// The server's [`MessageStore`]: Maildir for local targets, the queue for remote ones.
pub struct Intake {
    queue: Arc<dyn QueueStore>,
    local: Arc<LocalDelivery>,
    signer: Arc<Signer>,
    /// The configuration whose `[srs]` rewrites the sender of forwarded copies
    /// ([`crate::forward`]); `None` keeps every sender.
    srs: Option<Arc<Config>>,
    /// Inbound verification; `None` verifies nothing (tools, tests).
    checks: Option<Arc<InboundChecks>>,
    /// ARC-seals the forwarded copies of verified mail ([`crate::forward`]); `None` seals
    /// nothing.
    sealer: Option<Arc<ArcSealer>>,
    /// Routes the "delivered" notifications of local deliveries that asked for them
    /// (NOTIFY=SUCCESS, RFC 3461); `None` sends none (tools, tests).
    notices: Option<Arc<Config>>,
}

impl Intake {
    /// An intake that signs nothing; see [`Intake::with_signer`].
    pub fn new(queue: Arc<dyn QueueStore>, local: LocalDelivery) -> Self {
        Self {
            queue,
            local: Arc::new(local),
            signer: Arc::new(Signer::default()),
            srs: None,
            checks: None,
            sealer: None,
            notices: None,
        }
    }

    /// Sends the sender a "delivered" DSN for local recipients that asked for one
    /// (NOTIFY=SUCCESS), routed with `cfg` like any notification.
    pub fn with_notices(self, cfg: Arc<Config>) -> Self {
        Self {
            notices: Some(cfg),
            ..self
        }
    }

    /// Verifies the messages marked [`Inbound::Verify`] with this verifier (shared with the
    /// SPF check at MAIL FROM); a spooled body is read back for it up to `max_message_size`.
    pub fn with_verifier(self, verifier: Arc<Verifier>, max_message_size: u64) -> Self {
        Self {
            checks: Some(Arc::new(InboundChecks::new(verifier, max_message_size))),
            ..self
        }
    }

    /// Signs the messages marked [`Accepted::sign`] with these `[[dkim]]` keys.
    pub fn with_signer(self, signer: Arc<Signer>) -> Self {
        Self { signer, ..self }
    }

    /// ARC-seals (RFC 8617) the copies that local aliases forward off-host, for mail that was
    /// verified ([`Inbound::Verify`]); they get a queue entry of their own for it.
    pub fn with_arc_sealer(self, sealer: Option<Arc<ArcSealer>>) -> Self {
        Self { sealer, ..self }
    }

    /// Gives copies that local aliases forward off-host the SRS sender of `cfg.srs`.
    pub fn with_srs(self, cfg: Arc<Config>) -> Self {
        Self {
            srs: Some(cfg),
            ..self
        }
    }

    /// [`MessageStore::store`] without the async wrapper (blocking I/O).
    pub fn store_blocking(&self, acc: &Accepted, body: MessageBody) -> Result<(), StoreError> {
        let srs = self.srs.as_deref();
        store_blocking(
            self.queue.as_ref(),
            &self.local,
            &self.signer,
            srs,
            acc,
            body,
            Folder::Inbox,
            false,
            None,
        )
    }

    /// The verification step before the blocking store (port-25 mail from outside): refuses
    /// the message, or adds our Authentication-Results after tern's Received (in the trace
    /// every copy carries), says where local copies go, and makes the ARC set for the
    /// forwarded copies if there are any.
    async fn verify_inbound(
        &self,
        accepted: &mut Accepted,
        body: MessageBody,
    ) -> Result<Verified, NotStored> {
        let (Inbound::Verify { spf }, Some(checks)) = (&accepted.inbound, &self.checks) else {
            return Ok(Verified::unchecked(body));
        };
        // Sealing costs an RSA signature: only for messages with a forwarded copy.
        let sealer = self.sealer.as_deref().filter(|_| has_forwarded(accepted));
        let Checked {
            authentication_results,
            arc_seal,
            body,
            folder,
            stored,
        } = checks
            .run(accepted, spf.as_deref(), body, &self.queue, sealer)
            .await?;
        accepted.via.checks = crate::accepted::Via::summarize(&authentication_results);
        accepted.received.push_str(&authentication_results);
        Ok(Verified {
            body,
            folder,
            stored,
            hold: false,
            arc_seal,
        })
    }
}

/// A message [`MessageStore::verify`] let through, for [`MessageStore::commit`]: a content
/// filter may replace the body or move the local copies to another folder in between.
#[derive(Debug)]
pub struct Verified {
    pub body: MessageBody,
    /// Where local copies go.
    pub folder: Folder,
    /// What the log line says about it.
    pub stored: Stored,
    /// The queue entry for remote recipients is created held (a content filter quarantined
    /// the message): it waits for `tern queue release`.
    pub hold: bool,
    /// The ARC set for the forwarded copies' entry only.
    arc_seal: Option<String>,
}

impl Verified {
    /// A message that needs no verification (tests, tools).
    pub fn unchecked(body: MessageBody) -> Self {
        Self {
            body,
            folder: Folder::Inbox,
            stored: Stored::default(),
            hold: false,
            arc_seal: None,
        }
    }
}

/// A copy goes off-host because of an alias: a remote target that is not the address the
/// client gave (what becomes [`Recipient::original`]).
fn has_forwarded(acc: &Accepted) -> bool {
    acc.recipients.iter().any(|r| {
        r.targets
            .iter()
            .any(|t| matches!(t, Target::Remote(addr) if *addr != r.address))
    })
}

impl MessageStore for Intake {
    async fn verify(
        &self,
        accepted: &mut Accepted,
        body: MessageBody,
    ) -> Result<Verified, NotStored> {
        self.verify_inbound(accepted, body).await
    }

    async fn commit(&self, accepted: Accepted, verified: Verified) -> Result<Stored, NotStored> {
        let Verified {
            body,
            folder,
            stored,
            hold,
            arc_seal,
        } = verified;
        let queue = self.queue.clone();
        let local = self.local.clone();
        let signer = self.signer.clone();
        let srs = self.srs.clone();
        let notices = self.notices.clone();
        tokio::task::spawn_blocking(move || {
            let srs = srs.as_deref();
            // Read only when a notification will quote it.
            let asked = notices.is_some()
                && accepted
                    .recipients
                    .iter()
                    .any(|r| r.dsn.wants(tern_queue::Notice::Success));
            let head = if asked { body_head(&body) } else { Vec::new() };
            store_blocking(
                queue.as_ref(),
                &local,
                &signer,
                srs,
                &accepted,
                body,
                folder,
                hold,
                arc_seal.as_deref(),
            )?;
            if let Some(cfg) = notices.as_deref() {
                notify_delivered(cfg, queue.as_ref(), &local, &accepted, &head);
            }
            Ok::<(), StoreError>(())
        })
        .await
        .map_err(|e| StoreError::new(format!("storage task failed: {e}")))??;
        Ok(stored)
    }

    fn spool(&self) -> Result<SpoolFile, StoreError> {
        self.queue
            .spool()
            .map_err(|e| StoreError::from_io("spooling", &e))
    }
}

/// `arc_seal`: the ARC set for the forwarded copies, which then get an entry of their own with
/// it after the trace fields (local copies and the other remote copies never carry it).
#[allow(clippy::too_many_arguments)]
fn store_blocking(
    queue: &dyn QueueStore,
    local: &LocalDelivery,
    signer: &Signer,
    srs: Option<&Config>,
    acc: &Accepted,
    body: MessageBody,
    folder: Folder,
    hold: bool,
    arc_seal: Option<&str>,
) -> Result<(), StoreError> {
    let trace = trace_fields(signer, acc, &body)?;
    // Each target once, even when several recipients or aliases lead to it.
    let mut locals: Vec<&str> = Vec::new();
    // Queued recipients, each with whether it is a local mailbox (under LMTP).
    let mut remotes: BTreeMap<&str, (&AcceptedRecipient, bool)> = BTreeMap::new();
    for rcpt in &acc.recipients {
        for target in &rcpt.targets {
            match target {
                // A domain under `delivery = "lmtp"`: the mailbox key (`local@domain`, after
                // alias expansion) is queued like a remote address, so the queue holds the mail
                // while the LMTP server is down; the relay hands it over (RFC 2033).
                Target::Local(key) if local.via_lmtp(key) => {
                    remotes.entry(key).or_insert((rcpt, true));
                }
                Target::Local(key) => locals.push(key),
                Target::Remote(addr) => {
                    remotes.entry(addr).or_insert((rcpt, false));
                }
            }
        }
    }
    locals.sort_unstable();
    locals.dedup();

    let delivered = local
        .deliver_in(
            folder,
            locals.iter().copied(),
            acc.sender.as_deref(),
            &trace,
            &body,
        )
        .map_err(|e| StoreError::from_io("local delivery", e.io_error()))?;
    if !remotes.is_empty() {
        let id: QueueId = acc
            .id
            .parse()
            .map_err(|_| StoreError::Permanent(format!("invalid queue id {}", acc.id)))?;
        let mut envelope = Envelope {
            id,
            sender: acc.sender.clone(),
            recipients: remotes
                .into_iter()
                .map(|(address, (rcpt, mailbox))| Recipient {
                    dsn: rcpt.dsn.clone(),
                    // A local mailbox is no forwarded copy (which `original` marks for SRS and
                    // the ARC seal, crate::forward), even when an alias led to it.
                    original: (!mailbox && rcpt.address != address).then(|| rcpt.address.clone()),
                    address: address.to_string(),
                    status: RecipientStatus::Pending,
                })
                .collect(),
            received_at: SystemTime::now(),
            client_ip: Some(acc.client_ip),
            helo: Some(acc.helo.clone()),
            size: trace.len() as u64 + body.len(),
            prefix: String::new(),
            smtputf8: acc.smtputf8,
            eight_bit: acc.eight_bit,
            held: hold,
            delay_warned: false,
            attempts_log: Vec::new(),
            events: Default::default(),
            dsn: acc.dsn.clone(),
            requiretls: acc.requiretls,
        };
        // The timeline's first event rides on the commit's own write (no fsync of its own).
        envelope.events.push(Event::Received {
            at: envelope.received_at,
            listener: acc.via.listener.to_string(),
            client_ip: Some(acc.client_ip),
            helo: Some(acc.helo.clone()),
            tls: acc.via.tls.clone(),
            auth: acc.via.auth.clone(),
            checks: acc.via.checks.clone(),
        });
        if hold {
            envelope.events.push(Event::Held {
                at: envelope.received_at,
                by: "content filter (quarantine)".into(),
            });
        }
        // Forwarded copies with an SRS sender or an ARC seal become an entry of their own,
        // committed first; the seal goes after the trace fields of that entry only.
        let forwarded_trace = match arc_seal {
            Some(seal) => format!("{trace}{seal}"),
            None => trace.clone(),
        };
        let (extra, trace) = match forward::split_off(srs, &mut envelope, arc_seal.is_some()) {
            forward::Split::Extra(extra) => (Some(*extra), trace),
            forward::Split::Whole => (None, forwarded_trace.clone()),
            forward::Split::Mixed => (None, trace),
        };
        envelope.size = trace.len() as u64 + body.len();
        let forwarded = forward::commit_extra(queue, extra, &forwarded_trace, &body)?;
        // On failure `delivered` (and `forwarded`) drop here and take the local copies back:
        // the client gets a 4xx and retries the whole message.
        let committed = match body {
            MessageBody::Memory(bytes) => {
                queue.commit_parts(&envelope, &[trace.as_bytes(), &bytes])
            }
            // The spool file becomes the queue's message file; the trace goes in front of it.
            MessageBody::Spooled(file) => queue.commit_spooled(
                &Envelope {
                    prefix: trace,
                    ..envelope
                },
                file,
            ),
        };
        committed.map_err(|e| StoreError::from_io("queue commit", &e))?;
        forwarded.keep();
    }
    delivered.keep();
    if !locals.is_empty() {
        // Local copies are final the moment they are stored (RFC 3461 "delivered").
        metrics::counter!(tern_metrics::DELIVERY_ATTEMPTS, "outcome" => "delivered",
            "domain_class" => "local")
        .increment(locals.len() as u64);
    }
    Ok(())
}

/// How much of a message a success notification quotes: its header section, at most this.
const NOTICE_HEAD: usize = 64 * 1024;

/// The start of the body (for a notification's copy of the header section).
fn body_head(body: &MessageBody) -> Vec<u8> {
    match body {
        MessageBody::Memory(b) => b[..b.len().min(NOTICE_HEAD)].to_vec(),
        MessageBody::Spooled(f) => {
            use std::io::Read;
            let mut head = Vec::new();
            if let Ok(file) = f.open() {
                let _ = file.take(NOTICE_HEAD as u64).read_to_end(&mut head);
            }
            head
        }
    }
}

/// RFC 3461 4.1 NOTIFY=SUCCESS for recipients whose mailbox here has the message now: one
/// "delivered" DSN to the sender. The mail is stored, so a notification that cannot be is
/// logged, never a reason to refuse the message.
fn notify_delivered(
    cfg: &Config,
    queue: &dyn QueueStore,
    local: &LocalDelivery,
    acc: &Accepted,
    head: &[u8],
) {
    let asked: Vec<&AcceptedRecipient> = acc
        .recipients
        .iter()
        .filter(|r| r.dsn.wants(tern_queue::Notice::Success))
        // Under LMTP no local copy was stored here: the relay reports on those once delivered.
        .filter(|r| {
            r.targets
                .iter()
                .any(|t| matches!(t, Target::Local(key) if !local.via_lmtp(key)))
        })
        .collect();
    if asked.is_empty() || acc.sender.is_none() {
        return;
    }
    let Ok(id) = acc.id.parse::<QueueId>() else {
        return;
    };
    let now = SystemTime::now();
    let reply = tern_queue::StoredReply::local(
        250,
        Some(tern_proto::EnhancedCode::new(2, 0, 0)),
        "delivered to the mailbox",
    );
    let env = Envelope {
        dsn: acc.dsn.clone(),
        ..Envelope::new(
            id,
            acc.sender.clone(),
            asked
                .iter()
                .map(|r| Recipient {
                    address: r.address.clone(),
                    original: None,
                    status: RecipientStatus::Delivered {
                        at: now,
                        reply: reply.clone(),
                    },
                    dsn: r.dsn.clone(),
                })
                .collect(),
            now,
            head.len() as u64,
        )
    };
    let addresses: Vec<String> = asked.iter().map(|r| r.address.clone()).collect();
    let mut message = acc.received.as_bytes().to_vec();
    message.extend_from_slice(head);
    if let Err(e) = crate::notify::emit(
        cfg,
        queue,
        local,
        &env,
        &addresses,
        crate::notify::DsnKind::Delivered,
        &message,
    ) {
        tracing::error!(id = %acc.id, error = %e, "cannot send the success notification (NOTIFY=SUCCESS)");
    }
}

/// tern's `Received:` and, for our own mail, the DKIM-Signature fields: in that order, so the
/// signatures sit next to the header fields they cover and the Received is outside them (a
/// trace field is added by every hop and never signed). A signing failure refuses the message
/// for now (451) rather than let it leave unsigned.
fn trace_fields(signer: &Signer, acc: &Accepted, body: &MessageBody) -> Result<String, StoreError> {
    if !acc.sign || signer.is_empty() {
        return Ok(acc.received.clone());
    }
    // Signing needs the message as one slice: a spooled one is read back for it. Only our
    // own users' and trusted hosts' mail is signed, and the store's blocking pool bounds how
    // many such reads run at once.
    let read;
    let bytes = match body {
        MessageBody::Memory(b) => b.as_slice(),
        MessageBody::Spooled(s) => {
            read = s
                .read_all()
                .map_err(|e| StoreError::from_io("reading the spooled message", &e))?;
            read.as_slice()
        }
    };
    let signatures = signer
        .sign(bytes)
        .map_err(|e| StoreError::new(e.to_string()))?;
    let signatures = std::str::from_utf8(&signatures)
        .map_err(|_| StoreError::new("DKIM-Signature fields are not ASCII"))?;
    Ok(format!("{}{signatures}", acc.received))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tern_config::{Config, DkimConfig};
    use tern_queue::FsStore;

    const RECEIVED: &str = "Received: by mx.tern.test (tern) id 1;\r\n\tdate\r\n";
    const BODY: &[u8] = b"From: <alice@tern.test>\r\nSubject: x\r\n\r\nhi\r\n";

    fn setup(dir: &Path) -> (Intake, Arc<FsStore>) {
        let text = format!(
            "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        );
        let cfg = Config::from_toml_str(&text, Path::new("t.toml")).unwrap();
        let key_file = dir.join("ed.key");
        std::fs::write(
            &key_file,
            tern_auth::generate_key(tern_auth::KeyAlgorithm::Ed25519).unwrap(),
        )
        .unwrap();
        let signer = Signer::from_config(&[DkimConfig {
            domain: "tern.test".into(),
            selector: "ed".into(),
            key_file,
            headers: vec!["From".into(), "Subject".into()],
            subdomains: false,
        }])
        .unwrap();
        let queue = Arc::new(FsStore::open(dir).unwrap());
        let intake =
            Intake::new(queue.clone(), LocalDelivery::unstaged(&cfg)).with_signer(Arc::new(signer));
        (intake, queue)
    }

    fn accepted(id: &str, sign: bool) -> Accepted {
        Accepted {
            dsn: Default::default(),
            requiretls: false,
            id: id.into(),
            sender: Some("alice@tern.test".into()),
            recipients: vec![AcceptedRecipient {
                dsn: Default::default(),
                address: "bob@remote.test".into(),
                targets: vec![
                    Target::Local("dave@tern.test".into()),
                    Target::Remote("bob@remote.test".into()),
                ],
            }],
            received: RECEIVED.into(),
            smtputf8: false,
            eight_bit: false,
            helo: "client.test".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            sign,
            inbound: Inbound::Skip,
            via: Default::default(),
        }
    }

    fn local_copies(dir: &Path) -> Vec<Vec<u8>> {
        let new = crate::local::mailbox_of(dir, "dave@tern.test").join("new");
        let mut files: Vec<_> = std::fs::read_dir(new)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    #[test]
    fn with_lmtp_local_mailboxes_are_queued_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n[local]\ndomains = [\"tern.test\"]\ndelivery = \"lmtp\"\nlmtp = \"unix:/run/dovecot/lmtp\"\n",
            dir.path().display().to_string()
        );
        let cfg = Config::from_toml_str(&text, Path::new("t.toml")).unwrap();
        let queue = Arc::new(FsStore::open(dir.path()).unwrap());
        let intake = Intake::new(queue.clone(), LocalDelivery::unstaged(&cfg));
        let id = QueueId::generate();
        let mut acc = accepted(id.as_str(), false);
        // An alias (bob@remote.test named by the client here) leading to a local mailbox.
        acc.recipients[0].address = "Team@tern.test".into();
        intake
            .store_blocking(&acc, MessageBody::Memory(BODY.to_vec()))
            .unwrap();
        let env = queue.load(&id).unwrap();
        let rcpts: Vec<(&str, Option<&str>)> = env
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.original.as_deref()))
            .collect();
        // The mailbox key is queued without `original` (no forwarded copy: no SRS, no ARC).
        assert_eq!(
            rcpts,
            [
                ("bob@remote.test", Some("Team@tern.test")),
                ("dave@tern.test", None)
            ]
        );
        assert!(!crate::local::mailbox_of(dir.path(), "dave@tern.test").exists());
    }

    #[test]
    fn signed_once_into_the_maildir_copy_and_the_queued_copy_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = setup(dir.path());
        let id = QueueId::generate();
        intake
            .store_blocking(
                &accepted(id.as_str(), true),
                MessageBody::Memory(BODY.to_vec()),
            )
            .unwrap();

        let queued = queue.read_message(&id).unwrap();
        let text = String::from_utf8(queued.clone()).unwrap();
        let after_received = text.strip_prefix(RECEIVED).unwrap();
        assert!(
            after_received.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=ed; d=tern.test;"),
            "{text}"
        );
        assert!(queued.ends_with(BODY));
        // The Maildir copy carries the very same signature after its own trace prefix (the file
        // has LF line ends; the message travels with CRLF).
        let local = crate::maildir::lf_to_crlf(&local_copies(dir.path())[0]);
        assert!(
            local.ends_with(&queued),
            "{}",
            String::from_utf8_lossy(&local)
        );
        assert_eq!(queue.load(&id).unwrap().size, queued.len() as u64);
    }

    #[test]
    fn not_ours_not_signed() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = setup(dir.path());
        let id = QueueId::generate();
        intake
            .store_blocking(
                &accepted(id.as_str(), false),
                MessageBody::Memory(BODY.to_vec()),
            )
            .unwrap();
        let queued = queue.read_message(&id).unwrap();
        assert_eq!(queued, [RECEIVED.as_bytes(), BODY].concat());
        assert!(!String::from_utf8_lossy(&local_copies(dir.path())[0]).contains("DKIM-Signature"));
    }

    /// A body streamed to disk lands in the Maildir (LF) and in the queue (by rename, with the
    /// trace as the envelope's prefix) exactly as the same body from memory does.
    #[test]
    fn a_spooled_body_is_stored_like_one_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, queue) = setup(dir.path());
        let big: Vec<u8> = [BODY, &b"line of text\r\n".repeat(20_000)].concat();
        let (a, b) = (QueueId::generate(), QueueId::generate());
        intake
            .store_blocking(
                &accepted(a.as_str(), true),
                MessageBody::Memory(big.clone()),
            )
            .unwrap();
        let mut file = intake.spool().unwrap();
        for piece in big.chunks(4093) {
            file.append(piece).unwrap();
        }
        intake
            .store_blocking(
                &accepted(b.as_str(), true),
                MessageBody::Spooled(file.finish().unwrap()),
            )
            .unwrap();
        let (from_memory, spooled) = (
            queue.read_message(&a).unwrap(),
            queue.read_message(&b).unwrap(),
        );
        assert!(spooled.ends_with(&big));
        // Same signature (same key, same bytes): only the Received field and its id differ.
        let sig = |m: &[u8]| {
            let t = String::from_utf8_lossy(m).into_owned();
            t[t.find("DKIM-Signature").unwrap()..]
                .split("bh=")
                .nth(1)
                .unwrap()[..20]
                .to_string()
        };
        assert_eq!(sig(&from_memory), sig(&spooled));
        let copies = local_copies(dir.path());
        assert_eq!(copies.len(), 2);
        let strip = |c: &[u8]| {
            let c = crate::maildir::lf_to_crlf(c);
            let at = c.windows(BODY.len()).position(|w| w == BODY).unwrap();
            c[at..].to_vec()
        };
        assert_eq!(strip(&copies[0]), big);
        assert_eq!(strip(&copies[1]), big);
        assert!(std::fs::read_dir(dir.path().join("queue/incoming"))
            .unwrap()
            .next()
            .is_none());
    }
}
