//! Telling the sender (RFC 3464 delivery status notifications): a bounce when recipients failed,
//! a warning when they are still being retried. The DSN goes to the original envelope sender
//! with the null reverse-path (RFC 5321 4.5.5), routed like any inbound recipient (the router),
//! straight into the Maildir when the sender is local, otherwise into the queue like any other
//! outgoing message. Blocking (async callers use `spawn_blocking`).
//!
//! [`Notifier::fail`] is the one "fail and notify" step, used by delivery rounds and by
//! `tern queue bounce` alike: the recipients are marked failed and the DSN is made durable
//! *before* the caller records the entry, so a crash in between sends the DSN twice, never
//! zero times.
//!
//! A message that is itself a notification (null sender) is never answered with a bounce: its
//! failure report goes to the local postmaster, and only to local mailboxes, so two servers can
//! never bounce notifications back and forth.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, info, warn};

use crate::dsn::{self, Action, RecipientReport, Report};
use crate::router::{self, RcptDecision, Target};
use crate::LocalDelivery;
use tern_config::Config;
use tern_proto::{Address, ForwardPath};
use tern_queue::{
    DsnRet, Envelope, Event, Notice, NoticeKind, QueueId, QueueStore, Recipient, RecipientStatus,
    StoredReply,
};

/// What a round or `tern queue bounce` needs to send notifications.
pub struct Notifier {
    cfg: Arc<Config>,
    queue: Arc<dyn QueueStore>,
    local: LocalDelivery,
}

impl Notifier {
    pub fn new(cfg: Arc<Config>, queue: Arc<dyn QueueStore>) -> Self {
        // Each mailbox's own tmp/: this also runs in `tern queue`, which must not touch the
        // server's staging area.
        let local = LocalDelivery::unstaged(&cfg);
        Self { cfg, queue, local }
    }

    /// Marks each `(address, reply)` recipient of `env` failed (now) and sends the sender one
    /// bounce about them. On `Ok` the bounce is durable (or deliberately not sent, see [`emit`])
    /// and the caller records the envelope; on `Err` `env` is as it was and nothing was sent.
    pub fn fail(
        &self,
        env: &mut Envelope,
        failures: &[(String, StoredReply)],
        message: &[u8],
    ) -> io::Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let before = env.recipients.clone();
        let now = SystemTime::now();
        for (address, reply) in failures {
            if let Some(r) = env.recipients.iter_mut().find(|r| r.address == *address) {
                r.status = RecipientStatus::Failed {
                    at: now,
                    reply: reply.clone(),
                };
            }
        }
        let addresses: Vec<String> = failures.iter().map(|(a, _)| a.clone()).collect();
        match self.emit(env, &addresses, DsnKind::Failed, message) {
            Ok(sent) => {
                if let Some(dsn_id) = sent {
                    metrics::counter!(tern_metrics::BOUNCES).increment(1);
                    // Recorded with the envelope update the caller makes anyway.
                    env.events.push(Event::Notified {
                        at: now,
                        kind: NoticeKind::Bounce,
                        recipients: addresses,
                        dsn_id: dsn_id.to_string(),
                    });
                }
                Ok(())
            }
            Err(e) => {
                env.recipients = before;
                Err(e)
            }
        }
    }

    /// Sends one DSN of `kind` about `recipients` (see [`emit`]).
    pub fn emit(
        &self,
        env: &Envelope,
        recipients: &[String],
        kind: DsnKind,
        message: &[u8],
    ) -> io::Result<Option<QueueId>> {
        emit(
            &self.cfg,
            self.queue.as_ref(),
            &self.local,
            env,
            recipients,
            kind,
            message,
        )
    }
}

/// Which notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// The recipients failed for good (Action: failed).
    Failed,
    /// The recipients are still being retried (Action: delayed; queue.delay_warning).
    Delayed,
    /// The recipients' mailboxes have the message (Action: delivered; NOTIFY=SUCCESS).
    Delivered,
    /// A next hop without DSN took the message (Action: relayed; NOTIFY=SUCCESS).
    Relayed,
}

impl DsnKind {
    /// The NOTIFY condition (RFC 3461 4.1) that asks for this kind.
    fn notice(self) -> Notice {
        match self {
            DsnKind::Failed => Notice::Failure,
            DsnKind::Delayed => Notice::Delay,
            DsnKind::Delivered | DsnKind::Relayed => Notice::Success,
        }
    }
}

/// Past this size a failure report returns the headers even under RET=FULL (RFC 3461 4.3
/// lets an MTA truncate): a bounce must get through where the message itself did not.
pub const MAX_RETURNED_MESSAGE: u64 = 10 << 20;

/// Sends one DSN about `recipients` (addresses of `env.recipients`, whose status holds the reply:
/// `Failed { reply }` for [`DsnKind::Failed`], `Deferred { last_reply }` for [`DsnKind::Delayed`])
/// of the queued message `env`, whose content (at least its header section) is `message`.
///
/// On `Ok(Some(dsn_id))` the DSN is durable: fsync'd into the Maildir(s) or committed to the
/// queue; `Ok(None)`: there was deliberately nothing to send (no such recipients; a warning about a notification; a
/// double bounce with no local postmaster mailbox, logged). On `Err` nothing was delivered or
/// queued, so the caller can try again without sending it twice.
pub fn emit(
    cfg: &Config,
    queue: &dyn QueueStore,
    local: &LocalDelivery,
    env: &Envelope,
    recipients: &[String],
    kind: DsnKind,
    message: &[u8],
) -> io::Result<Option<QueueId>> {
    let now = SystemTime::now();
    let reports = recipient_reports(cfg, env, recipients, kind);
    if reports.is_empty() {
        debug!(id = %env.id, "no recipients to report on: no DSN");
        return Ok(None);
    }
    if env.sender.is_none() && matches!(kind, DsnKind::Delivered | DsnKind::Relayed) {
        // RFC 3461 5.2.1: no success notification about a notification.
        return Ok(None);
    }
    if env.sender.is_none() && kind == DsnKind::Delayed {
        // Nobody waits for a notification; the postmaster hears about it if it fails for good.
        debug!(id = %env.id, "no delay warning for a message with the null sender");
        return Ok(None);
    }

    let (to, mut targets) = destination(cfg, env);
    if env.sender.is_some() {
        // A domain under `delivery = "lmtp"`: its mailboxes are the LMTP server's, so a
        // notification for a local sender there is queued for it like other local mail. One
        // about a notification (null sender) stays in tern's own Maildir (the postmaster's,
        // under data_dir): queued, and refused by the LMTP server, its failure would be
        // notified again, without end.
        let (lmtp, maildir): (Vec<String>, Vec<String>) = std::mem::take(&mut targets.local)
            .into_iter()
            .partition(|key| local.via_lmtp(key));
        targets.local = maildir;
        targets.remote.extend(lmtp);
    }
    if targets.local.is_empty() && targets.remote.is_empty() {
        warn!(
            id = %env.id,
            postmaster = %to,
            "the DSN about a message with the null sender (a failed notification) cannot go to a \
             local postmaster mailbox: dropped; define the postmaster of a local domain"
        );
        return Ok(None);
    }

    let id_text = env.id.to_string();
    // RFC 3461 4.3: RET=FULL returns the whole message with a failure (not with other kinds).
    let full = (kind == DsnKind::Failed
        && env.dsn.ret == Some(DsnRet::Full)
        && env.size <= MAX_RETURNED_MESSAGE)
        .then(|| queue.read_message(&env.id))
        .and_then(|read| match read {
            Ok(m) => Some(m),
            Err(e) => {
                warn!(id = %env.id, error = %e, "DSN: cannot read the message to return (RET=FULL); returning its headers");
                None
            }
        });
    let bytes = dsn::build(&Report {
        reporting_mta: &cfg.hostname,
        to: &to,
        arrival_date: env.received_at,
        queue_id: Some(&id_text),
        recipients: &reports,
        original: full.as_deref().unwrap_or(message),
        return_full: full.is_some(),
        envid: env.dsn.envid.as_deref(),
        date: now,
    });
    let dsn_id = QueueId::generate();

    let received = format!(
        "Received: by {} (tern) id {dsn_id};\r\n\t{}\r\n",
        cfg.hostname,
        tern_proto::message::rfc5322_date(now)
    );
    let delivered = local
        .deliver(
            targets.local.iter().map(String::as_str),
            None,
            &received,
            &bytes,
        )
        .map_err(|e| {
            io::Error::new(
                e.io_error().kind(),
                format!("delivering the DSN locally: {e}"),
            )
        })?;
    if !targets.remote.is_empty() {
        let recipients = targets
            .remote
            .iter()
            .map(|address| Recipient {
                dsn: Default::default(),
                address: address.clone(),
                original: None,
                status: RecipientStatus::Pending,
            })
            .collect();
        let entry = Envelope {
            // The To: header and the addresses in the report carry the sender's address.
            smtputf8: !to.is_ascii() || targets.remote.iter().any(|a| !a.is_ascii()),
            eight_bit: !bytes.is_ascii(),
            ..Envelope::new(dsn_id.clone(), None, recipients, now, bytes.len() as u64)
        };
        if let Err(e) = queue.commit(&entry, &bytes) {
            // All or nothing: `delivered` drops and takes the local copies back, so that the
            // caller's retry does not deliver them twice.
            return Err(io::Error::new(
                e.kind(),
                format!("queueing the DSN for {}: {e}", env.id),
            ));
        }
    }
    info!(
        id = %env.id,
        dsn_id = %dsn_id,
        kind = ?kind,
        to = %to,
        recipients = reports.len(),
        local = targets.local.len(),
        queued = targets.remote.len(),
        "DSN sent"
    );
    delivered.keep();
    if !targets.local.is_empty() {
        // A notification stored in a local mailbox is a local delivery like any other.
        metrics::counter!(tern_metrics::DELIVERY_ATTEMPTS, "outcome" => "delivered",
            "domain_class" => "local")
        .increment(targets.local.len() as u64);
    }
    Ok(Some(dsn_id))
}

/// The report blocks for the recipients asked about, in the envelope's order of `recipients`.
fn recipient_reports(
    cfg: &Config,
    env: &Envelope,
    recipients: &[String],
    kind: DsnKind,
) -> Vec<RecipientReport> {
    let mut out = Vec::with_capacity(recipients.len());
    for addr in recipients {
        let Some(r) = env.recipients.iter().find(|r| r.address == *addr) else {
            warn!(id = %env.id, recipient = %addr, "DSN: no such recipient in the envelope");
            continue;
        };
        let (reply, at) = match &r.status {
            RecipientStatus::Failed { reply, at } | RecipientStatus::Delivered { reply, at } => {
                (reply.clone(), Some(*at))
            }
            RecipientStatus::Deferred { last_reply, .. } => (last_reply.clone(), None),
            other => {
                warn!(id = %env.id, recipient = %addr, status = ?other, "DSN: recipient has no reply to report");
                continue;
            }
        };
        // RFC 3461 4.1: only what NOTIFY asks for (absent: failures and delays).
        if !r.dsn.wants(kind.notice()) {
            debug!(id = %env.id, recipient = %addr, kind = ?kind, "DSN: not asked for (NOTIFY)");
            continue;
        }
        let latest = env.attempts_log.iter().rev().find(|a| a.recipient == *addr);
        let action = match kind {
            DsnKind::Failed => Action::Failed,
            DsnKind::Delayed => Action::Delayed,
            DsnKind::Delivered => Action::Delivered,
            DsnKind::Relayed => Action::Relayed,
        };
        // RFC 3464 Remote-MTA / Diagnostic-Code come from the reply's own origin: a remote
        // host's reply names that host; a status tern decided on (the administrator's bounce,
        // a loop, the queue's lifetime ending) names none.
        out.push(RecipientReport {
            final_recipient: r.address.clone(),
            original_recipient: r.original.clone(),
            orcpt: r.dsn.orcpt.clone(),
            action,
            reply,
            last_attempt: latest.map(|a| a.at).or(at),
            will_retry_until: (action == Action::Delayed)
                .then(|| env.received_at.checked_add(cfg.queue.max_age))
                .flatten(),
        });
    }
    out
}

/// Where a DSN goes, split like inbound mail: local mailbox keys and remote addresses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Targets {
    local: Vec<String>,
    remote: Vec<String>,
}

/// The DSN's To: address and its targets: the sender, resolved through users and aliases like
/// any inbound recipient ([`router::decide_recipient`]); the postmaster when there is no sender
/// or the local sender does not exist.
fn destination(cfg: &Config, env: &Envelope) -> (String, Targets) {
    if let Some(sender) = &env.sender {
        match Address::parse(sender) {
            // Our own SRS address (the sender of a forwarded copy) is not sent out to come
            // back: the router turns it into the original sender right here.
            Ok(addr)
                if !router::is_local_domain(cfg, addr.domain())
                    && !router::is_srs_address(cfg, &addr) =>
            {
                return (
                    sender.clone(),
                    Targets {
                        local: Vec::new(),
                        remote: vec![sender.clone()],
                    },
                );
            }
            Ok(addr) => match router::decide_recipient(cfg, &ForwardPath::Mailbox(addr), true) {
                RcptDecision::Accept(found) => return (sender.clone(), split(found)),
                other => warn!(
                    id = %env.id,
                    sender = %sender,
                    decision = ?other,
                    "the sender is in a local domain but has no mailbox: DSN to the postmaster"
                ),
            },
            Err(e) => warn!(
                id = %env.id,
                sender = %sender,
                error = %e,
                "the sender is not a valid address: DSN to the postmaster"
            ),
        }
    }
    let postmaster = router::postmaster_address(cfg).to_string();
    let mut targets = match router::decide_recipient(cfg, &ForwardPath::Postmaster, false) {
        RcptDecision::Accept(found) => split(found),
        _ => Targets::default(),
    };
    // Only local mailboxes: a notification about a failed notification that is itself relayed
    // could fail and be reported again, forever.
    if !targets.remote.is_empty() {
        warn!(
            id = %env.id,
            dropped = %targets.remote.join(","),
            "postmaster alias members in remote domains do not get notifications about failed notifications"
        );
        targets.remote.clear();
    }
    (postmaster, targets)
}

fn split(found: Vec<Target>) -> Targets {
    let mut t = Targets::default();
    for target in found {
        match target {
            Target::Local(key) => t.local.push(key),
            Target::Remote(addr) => t.remote.push(addr),
        }
    }
    t.local.sort();
    t.local.dedup();
    t.remote.sort();
    t.remote.dedup();
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};
    use tern_queue::{Attempt, FsStore};

    const MESSAGE: &[u8] =
        b"From: <alice@tern.test>\r\nTo: <bob@remote.test>\r\nSubject: hello\r\n\r\nbody text\r\n";

    fn config(data_dir: &Path, extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n{extra}",
            data_dir.display().to_string()
        );
        Config::from_toml_str(&text, Path::new("test.toml")).unwrap()
    }

    fn local_config(data_dir: &Path) -> Config {
        config(
            data_dir,
            "[local]\ndomains = [\"tern.test\"]\ncatch_all = false\n\n\
             [[users]]\nname = \"alice@tern.test\"\n\n\
             [[users]]\nname = \"root@tern.test\"\n\n\
             [aliases]\n\"postmaster@tern.test\" = [\"root@tern.test\", \"boss@remote.test\"]\n\
             \"list@tern.test\" = [\"alice@tern.test\", \"carol@remote.test\"]\n",
        )
    }

    /// bob's failure, as the relay stores a remote reply.
    fn from_mx2() -> StoredReply {
        StoredReply::remote(
            550,
            Some(tern_proto::EnhancedCode::new(5, 1, 1)),
            "no such user",
            tern_queue::Remote {
                host: "mx2.remote.test".into(),
                addr: Some("192.0.2.2".parse().unwrap()),
                stage: Some(tern_queue::Stage::Rcpt),
            },
        )
    }

    fn envelope(sender: Option<&str>) -> Envelope {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Envelope {
            id: QueueId::generate(),
            sender: sender.map(Into::into),
            recipients: vec![
                Recipient {
                    dsn: Default::default(),
                    address: "bob@remote.test".into(),
                    original: Some("Bob@Remote.test".into()),
                    status: RecipientStatus::Failed {
                        at: t + Duration::from_secs(60),
                        reply: from_mx2(),
                    },
                },
                Recipient {
                    dsn: Default::default(),
                    address: "dave@far.test".into(),
                    original: None,
                    status: RecipientStatus::Deferred {
                        attempts: 2,
                        last_reply: StoredReply::from_legacy("451 4.4.1 connection refused"),
                        next_attempt: t + Duration::from_secs(600),
                    },
                },
                Recipient {
                    dsn: Default::default(),
                    address: "erin@remote.test".into(),
                    original: None,
                    status: RecipientStatus::Pending,
                },
            ],
            received_at: t,
            client_ip: None,
            helo: None,
            size: MESSAGE.len() as u64,
            prefix: String::new(),
            smtputf8: false,
            eight_bit: false,
            held: false,
            delay_warned: false,
            dsn: Default::default(),
            requiretls: false,
            attempts_log: vec![
                Attempt {
                    at: t + Duration::from_secs(30),
                    recipient: "bob@remote.test".into(),
                    host: Some("mx1.remote.test".into()),
                    reply: StoredReply::from_legacy("451 4.3.0 try later"),
                    tls: None,
                },
                Attempt {
                    at: t + Duration::from_secs(60),
                    recipient: "bob@remote.test".into(),
                    host: Some("mx2.remote.test".into()),
                    reply: from_mx2(),
                    tls: None,
                },
            ],
            events: Default::default(),
        }
    }

    fn mailbox_files(data_dir: &Path, domain: &str, user: &str) -> Vec<Vec<u8>> {
        let new = data_dir
            .join("mailboxes")
            .join(domain)
            .join(user)
            .join("new");
        let Ok(rd) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        // Files hold LF; the DSN's CRLF form is what the assertions below describe.
        rd.map(|e| crate::maildir::lf_to_crlf(&std::fs::read(e.unwrap().path()).unwrap()))
            .collect()
    }

    fn queued(queue: &FsStore) -> Vec<(Envelope, Vec<u8>)> {
        queue
            .list()
            .unwrap()
            .iter()
            .map(|id| (queue.load(id).unwrap(), queue.read_message(id).unwrap()))
            .collect()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn remote_sender_gets_a_queued_dsn_with_the_null_sender() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(Some("sender@elsewhere.test"));
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();

        let entries = queued(&queue);
        assert_eq!(entries.len(), 1);
        let (e, msg) = &entries[0];
        assert_eq!(e.sender, None);
        assert_ne!(e.id, env.id);
        assert_eq!(e.recipients.len(), 1);
        assert_eq!(e.recipients[0].address, "sender@elsewhere.test");
        assert_eq!(e.recipients[0].status, RecipientStatus::Pending);
        assert_eq!(e.size, msg.len() as u64);
        assert!(!e.held && !e.smtputf8 && !e.eight_bit);
        let s = text(msg);
        assert!(s.contains("\r\nTo: <sender@elsewhere.test>\r\n"), "{s}");
        assert!(s.contains("\r\nSubject: Undelivered Mail Returned to Sender\r\n"));
        assert!(s.contains(&format!("\r\nX-Queue-ID: {}\r\n", env.id)));
        // Remote-MTA: the host NAME the reply came from; Diagnostic-Code: exactly its reply.
        assert!(
            s.contains("\r\nRemote-MTA: dns; mx2.remote.test\r\n"),
            "{s}"
        );
        assert!(s.contains("\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(s.contains("\r\nOriginal-Recipient: rfc822; Bob@Remote.test\r\n"));
        assert!(s.contains("\r\nStatus: 5.1.1\r\n"));
        assert!(s.contains("\r\nSubject: hello\r\n"));
        assert!(!s.contains("body text"));
        // Nothing was delivered locally.
        assert!(!dir.path().join("mailboxes").exists());
    }

    #[test]
    fn a_reply_tern_made_up_names_no_remote_mta() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let mut env = envelope(Some("alice@tern.test"));
        env.recipients[0].status = RecipientStatus::Failed {
            at: env.received_at,
            reply: StoredReply::local(
                554,
                Some(tern_proto::EnhancedCode::new(5, 0, 0)),
                "bounced by the administrator",
            ),
        };
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        let files = mailbox_files(dir.path(), "tern.test", "alice");
        let s = text(&files[0]);
        assert!(s.contains("\r\nStatus: 5.0.0\r\n"), "{s}");
        assert!(
            !s.contains("Remote-MTA") && !s.contains("Diagnostic-Code"),
            "{s}"
        );
        assert!(
            s.contains(
                "(originally <Bob@Remote.test>):\r\n    554 5.0.0 bounced by the administrator\r\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn local_sender_gets_it_in_the_maildir() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(Some("Alice@TERN.test"));
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        assert!(queued(&queue).is_empty());
        let files = mailbox_files(dir.path(), "tern.test", "alice");
        assert_eq!(files.len(), 1);
        let s = text(&files[0]);
        assert!(
            s.starts_with("Return-Path: <>\r\nDelivered-To: alice@tern.test\r\nReceived: by mx.tern.test (tern) id "),
            "{s}"
        );
        assert!(s.contains("\r\nTo: <Alice@TERN.test>\r\n"));
        assert!(s.contains("multipart/report; report-type=delivery-status;"));
    }

    #[test]
    fn local_sender_alias_with_remote_member_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(Some("list@tern.test"));
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        assert_eq!(mailbox_files(dir.path(), "tern.test", "alice").len(), 1);
        let entries = queued(&queue);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.recipients[0].address, "carol@remote.test");
        assert_eq!(entries[0].0.sender, None);
    }

    #[test]
    fn unknown_local_sender_goes_to_the_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(Some("nobody@tern.test"));
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        assert_eq!(mailbox_files(dir.path(), "tern.test", "root").len(), 1);
        assert!(
            queued(&queue).is_empty(),
            "never relayed to the remote member"
        );
    }

    #[test]
    fn null_sender_never_bounces_back_only_to_the_local_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(None);
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        // postmaster@tern.test -> root@tern.test (local) and boss@remote.test (dropped).
        let files = mailbox_files(dir.path(), "tern.test", "root");
        assert_eq!(files.len(), 1);
        let s = text(&files[0]);
        assert!(s.contains("\r\nTo: <postmaster@tern.test>\r\n"), "{s}");
        assert!(s.starts_with("Return-Path: <>\r\nDelivered-To: root@tern.test\r\n"));
        assert!(queued(&queue).is_empty());

        // A warning about a notification is not sent at all.
        let delayed = envelope(None);
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &delayed,
            &["dave@far.test".into()],
            DsnKind::Delayed,
            MESSAGE,
        )
        .unwrap();
        assert_eq!(mailbox_files(dir.path(), "tern.test", "root").len(), 1);
    }

    #[test]
    fn postmaster_without_alias_is_the_postmaster_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "[local]\ndomains = [\"tern.test\"]\n");
        let queue = FsStore::open(dir.path()).unwrap();
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &envelope(None),
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        assert_eq!(
            mailbox_files(dir.path(), "tern.test", "postmaster").len(),
            1
        );
    }

    #[test]
    fn no_local_postmaster_drops_the_double_bounce() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "[local]\ndomains = []\n");
        let queue = FsStore::open(dir.path()).unwrap();
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &envelope(None),
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        assert!(queued(&queue).is_empty());
        assert!(!dir.path().join("mailboxes").exists());
    }

    #[test]
    fn delayed_warning_reports_deferred_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(Some("alice@tern.test"));
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["dave@far.test".into()],
            DsnKind::Delayed,
            MESSAGE,
        )
        .unwrap();
        let files = mailbox_files(dir.path(), "tern.test", "alice");
        assert_eq!(files.len(), 1);
        let s = text(&files[0]);
        assert!(s.contains("\r\nSubject: Delayed Mail (still being retried)\r\n"));
        assert!(
            s.contains("\r\nAction: delayed\r\nStatus: 4.4.1\r\n"),
            "{s}"
        );
        // max_age 5 days after arrival (2027-01-15 08:00).
        assert!(s.contains("\r\nWill-Retry-Until: Wed, 20 Jan 2027 08:00:00 +0000\r\n"));
        // No attempt logged with a host: no Remote-MTA, no SMTP diagnostic.
        assert!(!s.contains("Remote-MTA"));
        assert!(!s.contains("Diagnostic-Code"));
    }

    #[test]
    fn nothing_to_report_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        let env = envelope(Some("alice@tern.test"));
        // erin is pending (no reply yet), zed is not a recipient at all.
        emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["erin@remote.test".into(), "zed@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap();
        assert!(mailbox_files(dir.path(), "tern.test", "alice").is_empty());
        assert!(queued(&queue).is_empty());
    }

    #[test]
    fn queue_failure_takes_back_local_copies() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let queue = FsStore::open(dir.path()).unwrap();
        // Make the spool unwritable: the message file cannot be created.
        std::fs::remove_dir_all(dir.path().join("queue").join("msg")).unwrap();
        std::fs::write(dir.path().join("queue").join("msg"), b"").unwrap();
        let env = envelope(Some("list@tern.test"));
        let err = emit(
            &cfg,
            &queue,
            &LocalDelivery::unstaged(&cfg),
            &env,
            &["bob@remote.test".into()],
            DsnKind::Failed,
            MESSAGE,
        )
        .unwrap_err();
        assert!(err.to_string().contains("queueing the DSN"), "{err}");
        assert!(mailbox_files(dir.path(), "tern.test", "alice").is_empty());
    }
}
