//! Inbound verification at the end of DATA, for port-25 mail from outside (never authenticated
//! submission, never `relay.trusted_networks`): runs the [`Verifier`] before the message is
//! committed (every DKIM signature, RFC 6376; the ARC chain, RFC 8617; DMARC, RFC 7489, with
//! the SPF result of MAIL FROM, or SPF now, RFC 7208, when MAIL did not check it), turns the
//! disposition into what intake does (deliver; deliver with local copies in the Maildir++
//! folder `.Junk/`; refuse with the engine's reply), and prepares the header: every
//! `Authentication-Results` field claiming our authserv-id is removed (RFC 8601 5) and ours
//! goes into the trace, right after tern's `Received:`.
//!
//! DKIM needs the message as one slice: a spooled body is read back, bounded by
//! `limits.max_message_size` (the size DATA already enforced), on the blocking pool, and at
//! most [`MAX_SPOOLED_READS`] at once, so that clients sending large messages together cannot
//! make the server hold more than that many of them in memory.
//!
//! The header rewrite of a spooled body: the header section is at the start of the file. When
//! it holds none of our fields (the usual case) the file is used untouched and only the trace
//! prefix gets our field. When a field must go, a new spool file is written: the rewritten
//! header fields, then a streamed copy of the old file from the end of its header fields (in
//! chunks: the body is never in memory for this), and the old file is dropped. A prefix plus
//! an offset into the old file would save the copy, but the queue's message format (prefix +
//! file) would have to learn offsets; forged fields are rare and one streamed copy is cheap.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use tern_auth::verify::LogFields;
use tern_auth::verify::SmtpReply;
use tern_auth::{
    strip_our_authentication_results, ArcSealer, Disposition, NotSealed, SpfOutcome, Verifier,
};
use tern_proto::HeaderSection;
use tern_queue::{MessageBody, QueueStore, Spooled, StoreError};
use tokio::sync::Semaphore;

use crate::accepted::Accepted;
pub use crate::accepted::Inbound;
use crate::maildir::Folder;

/// Spooled (large) messages read back into memory for verification at the same time.
pub const MAX_SPOOLED_READS: usize = 4;

/// Chunk size of the streamed copy when a spooled header is rewritten.
const COPY_CHUNK: usize = 64 * 1024;

/// What intake did with a message it stored, for the log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The verification results; `None` when the message was not verified ([`Inbound::Skip`]).
    pub auth: Option<LogFields>,
    /// DMARC asked for quarantine: the local copies went into `.Junk/`.
    pub quarantined: bool,
}

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum NotStored {
    /// Storage failed (the session answers 451/452/554 by its kind).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Verification refused it: the reply the engine chose (550 5.7.1 for a DMARC `p=reject`
    /// failure with `checks.dmarc_reject`, 451 4.7.1 for a DNS failure under `p=reject`).
    #[error("{}", .0.reply)]
    Refused(Refusal),
    /// A content filter (`[[milters]]`) refused it with this reply.
    #[error("{0}")]
    Filtered(tern_proto::Reply),
}

/// A message refused by verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: SmtpReply,
    pub auth: LogFields,
}

/// A verified message, ready for the blocking store.
#[derive(Debug)]
pub(crate) struct Checked {
    /// Our `Authentication-Results:` field, folded, ending in CRLF.
    pub authentication_results: String,
    /// The ARC set (RFC 8617) for the forwarded copies, when a sealer was given and the
    /// message could be sealed: three fields, each ending in CRLF.
    pub arc_seal: Option<String>,
    /// The body, without any field that claimed our authserv-id.
    pub body: MessageBody,
    /// Where local copies go.
    pub folder: Folder,
    pub stored: Stored,
}

/// The verifier of a server and the bounds of its reads.
pub(crate) struct InboundChecks {
    verifier: Arc<Verifier>,
    spooled_reads: Semaphore,
    max_read: u64,
}

impl InboundChecks {
    pub(crate) fn new(verifier: Arc<Verifier>, max_message_size: u64) -> Self {
        Self {
            verifier,
            spooled_reads: Semaphore::new(MAX_SPOOLED_READS),
            max_read: max_message_size,
        }
    }

    /// Verifies the message of `acc` (whose [`Accepted::inbound`] said `Verify` with `spf`),
    /// and with a `sealer` (the message has forwarded copies) makes their ARC set.
    /// DNS trouble never fails this (the engine makes it `temperror`); reading or rewriting a
    /// spooled body can, as a temporary storage error.
    pub(crate) async fn run(
        &self,
        acc: &Accepted,
        spf: Option<&SpfOutcome>,
        body: MessageBody,
        queue: &Arc<dyn QueueStore>,
        sealer: Option<&ArcSealer>,
    ) -> Result<Checked, NotStored> {
        let v = &self.verifier;
        let mail_from = acc.sender.as_deref().unwrap_or("");
        let computed;
        let spf = match spf {
            Some(s) => Some(s),
            None => {
                computed = v.check_spf_mail(acc.client_ip, &acc.helo, mail_from).await;
                computed.as_ref()
            }
        };
        let (body, read) = self.read(body).await?;
        let message = match (&body, &read) {
            (MessageBody::Memory(b), _) => b.as_slice(),
            (MessageBody::Spooled(_), Some(r)) => r.as_slice(),
            (MessageBody::Spooled(_), None) => &[],
        };
        let verdict = v
            .check_message_sealed(acc.client_ip, &acc.helo, mail_from, spf, message, sealer)
            .await;
        let auth = verdict.log_fields();
        let arc_seal = match verdict.arc_seal {
            Some(Ok(seal)) => {
                tracing::debug!(id = %acc.id, instance = seal.instance, cv = seal.cv.as_str(), "ARC sealed");
                Some(seal.fields)
            }
            Some(Err(why)) => {
                // The copies leave unsealed: the message is not refused for it.
                match &why {
                    NotSealed::Failed(reason) => {
                        tracing::warn!(id = %acc.id, reason = %reason, "ARC sealing failed; forwarded copies leave unsealed")
                    }
                    other => {
                        tracing::debug!(id = %acc.id, why = ?other, "forwarded copies not ARC-sealed")
                    }
                }
                None
            }
            None => None,
        };
        let folder = match verdict.disposition {
            Disposition::Deliver => Folder::Inbox,
            Disposition::Quarantine => Folder::Junk,
            Disposition::Reject(reply) | Disposition::TempFail(reply) => {
                drop(read);
                // Unlinking a large spool file is blocking work.
                tokio::task::spawn_blocking(move || drop(body));
                return Err(NotStored::Refused(Refusal { reply, auth }));
            }
        };
        let header = HeaderSection::find(message);
        let fields_end = header.fields().len();
        let stripped = strip_our_authentication_results(header.fields(), v.authserv_id());
        // Removing fields is all the strip does: same length, same header.
        let rewrite = (stripped.len() != fields_end).then_some(stripped);
        let body = match (body, rewrite) {
            (body, None) => body,
            (MessageBody::Memory(old), Some(mut new)) => {
                new.extend_from_slice(&old[fields_end..]);
                MessageBody::Memory(new)
            }
            (MessageBody::Spooled(old), Some(new)) => {
                drop(read);
                let queue = queue.clone();
                tokio::task::spawn_blocking(move || {
                    rewrite_spooled(queue.as_ref(), &old, &new, fields_end as u64)
                })
                .await
                .map_err(|e| StoreError::new(format!("header rewrite task failed: {e}")))?
                .map_err(|e| StoreError::from_io("rewriting the spooled header", &e))?
            }
        };
        Ok(Checked {
            authentication_results: verdict.authentication_results,
            arc_seal,
            body,
            folder,
            stored: Stored {
                auth: Some(auth),
                quarantined: folder == Folder::Junk,
            },
        })
    }

    /// A spooled body's bytes, read on the blocking pool under one of the read permits.
    async fn read(&self, body: MessageBody) -> Result<(MessageBody, Option<Vec<u8>>), StoreError> {
        let MessageBody::Spooled(spooled) = body else {
            return Ok((body, None));
        };
        let _permit = self
            .spooled_reads
            .acquire()
            .await
            .map_err(|_| StoreError::new("verification reads closed"))?;
        let max = self.max_read;
        let (spooled, read) = tokio::task::spawn_blocking(move || {
            let read = read_bounded(&spooled, max);
            (spooled, read)
        })
        .await
        .map_err(|e| StoreError::new(format!("verification read task failed: {e}")))?;
        let read = read.map_err(|e| StoreError::from_io("reading the spooled message", &e))?;
        Ok((MessageBody::Spooled(spooled), Some(read)))
    }
}

/// At most `max` octets of a spooled body (DATA refused anything larger, so this is all of it).
fn read_bounded(spooled: &Spooled, max: u64) -> io::Result<Vec<u8>> {
    let len = spooled.len().min(max);
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    spooled.open()?.take(len).read_to_end(&mut out)?;
    Ok(out)
}

/// A new spool file holding `fields` (the rewritten header fields) and then `old` from octet
/// `from` on (its empty line and body), copied in chunks; fdatasync'd like any spooled body.
fn rewrite_spooled(
    queue: &dyn QueueStore,
    old: &Spooled,
    fields: &[u8],
    from: u64,
) -> io::Result<MessageBody> {
    let mut new = queue.spool()?;
    new.append(fields)?;
    let mut src = old.open()?;
    src.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        new.append(&buf[..n])?;
    }
    Ok(MessageBody::Spooled(new.finish()?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use tern_auth::verify::ResolverSettings;
    use tern_config::Config;
    use tern_queue::FsStore;

    use super::*;
    use crate::intake::{AcceptedRecipient, Intake, MessageStore};
    use crate::local::{mailbox_of, LocalDelivery};
    use crate::router::Target;

    const HOST: &str = "mx.tern.test";
    const FORGED: &[u8] = b"Authentication-Results: mx.tern.test; dmarc=pass\r\n";
    const MESSAGE: &[u8] = b"From: <a@sender.test>\r\nAuthentication-Results: other.test; spf=pass\r\nSubject: x\r\n\r\nbody\r\n";

    fn config(dir: &Path) -> Config {
        let text = format!(
            "hostname = \"{HOST}\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        );
        Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    /// A verifier whose nameserver does not answer (nothing listens on loopback port 9): every
    /// lookup is `temperror`, no policy is known, so every message is delivered.
    fn verifier() -> Arc<Verifier> {
        let mut settings = ResolverSettings::new(vec!["127.0.0.1:9".parse().unwrap()]);
        settings.query_timeout = Duration::from_secs(1);
        settings.deadline = Duration::from_secs(3);
        Arc::new(Verifier::new(&settings, tern_config::defaults::CHECKS, HOST).unwrap())
    }

    fn accepted(id: &str) -> Accepted {
        Accepted {
            dsn: Default::default(),
            requiretls: false,
            id: id.into(),
            sender: Some("a@sender.test".into()),
            recipients: vec![AcceptedRecipient {
                dsn: Default::default(),
                address: "dave@tern.test".into(),
                targets: vec![
                    Target::Local("dave@tern.test".into()),
                    Target::Remote("bob@remote.test".into()),
                ],
            }],
            received: format!("Received: by {HOST} (tern) id 1;\r\n\tdate\r\n"),
            smtputf8: false,
            eight_bit: false,
            helo: "client.test".into(),
            client_ip: "192.0.2.1".parse().unwrap(),
            sign: false,
            inbound: Inbound::Verify { spf: None },
            via: Default::default(),
        }
    }

    fn local_copy(dir: &Path) -> Vec<u8> {
        let new = mailbox_of(dir, "dave@tern.test").join("new");
        let file = std::fs::read_dir(new)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        crate::maildir::lf_to_crlf(&std::fs::read(file).unwrap())
    }

    /// Our field goes in after the Received of every copy, the forged one is gone, the other
    /// authserv-id's field stays, the rest is byte for byte the same: in memory and spooled.
    #[tokio::test]
    async fn the_forged_field_goes_ours_comes_after_received_in_memory_and_spooled() {
        for spooled in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let queue = Arc::new(FsStore::open(dir.path()).unwrap());
            let intake = Intake::new(queue.clone(), LocalDelivery::unstaged(&config(dir.path())))
                .with_verifier(verifier(), 1 << 20);
            let message = [FORGED, MESSAGE].concat();
            let body = if spooled {
                let mut f = intake.spool().unwrap();
                f.append(&message).unwrap();
                MessageBody::Spooled(f.finish().unwrap())
            } else {
                MessageBody::Memory(message)
            };
            let id = tern_queue::QueueId::generate();
            let stored = intake.store(accepted(id.as_str()), body).await.unwrap();
            assert_eq!(
                stored.auth.map(|f| f.dkim),
                Some("none"),
                "spooled={spooled}"
            );
            assert!(!stored.quarantined);
            let queued = String::from_utf8(queue.read_message(&id).unwrap()).unwrap();
            let after_received = queued.split_once("\tdate\r\n").unwrap().1;
            assert!(
                after_received.starts_with(&format!("Authentication-Results: {HOST};")),
                "{queued}"
            );
            assert!(
                queued.ends_with(std::str::from_utf8(MESSAGE).unwrap()),
                "{queued}"
            );
            assert_eq!(
                queued
                    .matches("Authentication-Results: mx.tern.test")
                    .count(),
                1
            );
            let local = local_copy(dir.path());
            assert!(local.ends_with(queued.as_bytes()), "spooled={spooled}");
            // Nothing left behind in incoming/: the old spool file went with the rewrite.
            assert_eq!(
                std::fs::read_dir(dir.path().join("queue/incoming"))
                    .unwrap()
                    .count(),
                0
            );
        }
    }

    #[tokio::test]
    async fn a_message_not_marked_for_checks_is_stored_as_it_came() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(FsStore::open(dir.path()).unwrap());
        let intake = Intake::new(queue.clone(), LocalDelivery::unstaged(&config(dir.path())))
            .with_verifier(verifier(), 1 << 20);
        let id = tern_queue::QueueId::generate();
        let acc = Accepted {
            dsn: Default::default(),
            requiretls: false,
            inbound: Inbound::Skip,
            ..accepted(id.as_str())
        };
        let message = [FORGED, MESSAGE].concat();
        let stored = intake
            .store(acc.clone(), MessageBody::Memory(message.clone()))
            .await
            .unwrap();
        assert_eq!(stored, Stored::default());
        assert_eq!(
            queue.read_message(&id).unwrap(),
            [acc.received.as_bytes(), &message].concat()
        );
    }

    /// A verified message with a local, a direct remote and an alias-forwarded remote copy: the
    /// ARC set (cv=none: no chain before; unsigned, so no DNS is needed) goes after our
    /// Authentication-Results in the forwarded copy's entry only.
    #[tokio::test]
    async fn only_the_forwarded_entry_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("arc.pem");
        std::fs::write(
            &key_file,
            tern_auth::generate_key(tern_auth::KeyAlgorithm::Rsa2048).unwrap(),
        )
        .unwrap();
        let text = format!(
            "hostname = \"{HOST}\"\ndata_dir = {:?}\n[[dkim]]\ndomain = \"tern.test\"\n\
             selector = \"arc\"\nkey_file = {:?}\n",
            dir.path().display().to_string(),
            key_file.display().to_string()
        );
        let cfg = Config::from_toml_str(&text, Path::new("t.toml")).unwrap();
        let sealer = tern_auth::ArcSealer::from_config(&cfg)
            .unwrap()
            .map(Arc::new);
        assert!(sealer.is_some());
        let queue = Arc::new(FsStore::open(dir.path()).unwrap());
        let intake = Intake::new(queue.clone(), LocalDelivery::unstaged(&cfg))
            .with_verifier(verifier(), 1 << 20)
            .with_arc_sealer(sealer);
        let id = tern_queue::QueueId::generate();
        let mut acc = accepted(id.as_str());
        let to = |address: &str, target: Target| AcceptedRecipient {
            dsn: Default::default(),
            address: address.into(),
            targets: vec![target],
        };
        acc.recipients = vec![
            to("dave@tern.test", Target::Local("dave@tern.test".into())),
            to("bob@remote.test", Target::Remote("bob@remote.test".into())),
            to("fwd@tern.test", Target::Remote("far@remote.test".into())),
        ];
        intake
            .store(acc, MessageBody::Memory(MESSAGE.to_vec()))
            .await
            .unwrap();
        let ids = queue.list().unwrap();
        assert_eq!(ids.len(), 2, "{ids:?}");
        let direct = String::from_utf8(queue.read_message(&id).unwrap()).unwrap();
        assert!(!direct.contains("ARC-"), "{direct}");
        let other = ids.iter().find(|i| **i != id).unwrap();
        let forwarded = String::from_utf8(queue.read_message(other).unwrap()).unwrap();
        let env = queue.load(other).unwrap();
        assert_eq!(env.size, forwarded.len() as u64);
        assert_eq!(env.recipients[0].address, "far@remote.test");
        let after_ar = forwarded
            .split_once(&format!("Authentication-Results: {HOST}; dkim=none;"))
            .unwrap()
            .1;
        let arc = &after_ar[after_ar.find("ARC-Seal: i=1;").unwrap()..];
        assert!(arc.contains("cv=none"), "{forwarded}");
        assert!(arc.contains("ARC-Message-Signature: i=1;"), "{forwarded}");
        assert!(
            arc.contains(&format!(
                "ARC-Authentication-Results: i=1; {HOST}; dkim=none;"
            )),
            "{forwarded}"
        );
        assert!(forwarded.ends_with(std::str::from_utf8(MESSAGE).unwrap()));
        assert!(!String::from_utf8_lossy(&local_copy(dir.path())).contains("ARC-"));
    }

    /// `.Junk/` is a Maildir++ folder inside a Maildir: both made on demand, with the marker,
    /// with and without the server's staging area.
    #[test]
    fn quarantined_copies_go_into_the_junk_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        for (local, key) in [
            (LocalDelivery::unstaged(&cfg), "a@tern.test"),
            (LocalDelivery::open_staged(&cfg).unwrap(), "b@tern.test"),
        ] {
            let d = local
                .deliver_in(Folder::Junk, [key], None, "Received: x\r\n", MESSAGE)
                .unwrap();
            let root = mailbox_of(dir.path(), key);
            let junk = root.join(".Junk");
            assert_eq!(d.paths()[0].parent().unwrap(), junk.join("new"));
            d.keep();
            for sub in ["tmp", "new", "cur"] {
                assert!(junk.join(sub).is_dir(), "{key}: .Junk/{sub}");
                assert!(root.join(sub).is_dir(), "{key}: {sub}");
            }
            assert!(junk.join("maildirfolder").is_file());
            assert_eq!(std::fs::read_dir(root.join("new")).unwrap().count(), 0);
        }
    }
}
