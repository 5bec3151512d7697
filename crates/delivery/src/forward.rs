//! Forwarded copies in the queue. A recipient whose copy goes off-host because of a local alias
//! (a remote target reached through another address, [`Recipient::original`]) is sent with the
//! SRS sender of [`srs::forwarded_sender`]; a remote recipient the client named itself keeps the
//! client's sender. One queue entry has one sender (RFC 5321 3.3: one MAIL FROM per
//! transaction), so a message with both kinds becomes two entries: the forwarded recipients
//! move to an entry of their own, with its own queue id.

use std::time::SystemTime;

use tern_config::Config;
use tern_queue::{Envelope, MessageBody, QueueId, QueueStore, StoreError};

use crate::srs::{self, Day};

/// Where [`split_off`] put the forwarded recipients.
#[derive(Debug)]
pub(crate) enum Split {
    /// Not apart: no forwarded recipient, or neither SRS nor a seal applies to them.
    Mixed,
    /// Every recipient of `env` is forwarded: `env` itself is the forwarded entry.
    Whole,
    /// A second envelope with the forwarded recipients, taken out of `env`.
    Extra(Box<Envelope>),
}

/// Gives `env`'s forwarded recipients an entry of their own when they need one: for their SRS
/// sender (RFC 5321 3.3: one sender per transaction), or for the ARC set (`sealed`) that the
/// other copies must not carry. Without SRS for this sender they keep the client's sender.
pub(crate) fn split_off(cfg: Option<&Config>, env: &mut Envelope, sealed: bool) -> Split {
    let srs = cfg
        .and_then(|c| srs::forwarded_sender(c, env.sender.as_deref(), Day::of(SystemTime::now())));
    if srs.is_none() && !sealed {
        return Split::Mixed;
    }
    let sender = srs.or_else(|| env.sender.clone());
    let (forwarded, direct): (Vec<_>, Vec<_>) = std::mem::take(&mut env.recipients)
        .into_iter()
        .partition(|r| r.original.is_some());
    if direct.is_empty() {
        env.recipients = forwarded;
        env.sender = sender;
        return Split::Whole;
    }
    env.recipients = direct;
    if forwarded.is_empty() {
        return Split::Mixed;
    }
    Split::Extra(Box::new(Envelope {
        id: QueueId::generate(),
        sender,
        recipients: forwarded,
        ..env.clone()
    }))
}

/// The second entry of [`split_off`], committed before the first one. Dropped without
/// [`Extra::keep`] (the first entry failed, so the client is told to retry the whole message)
/// it is taken back out of the queue. That is best effort: if the relay has already locked it,
/// it stays, and the retry delivers those recipients twice, which RFC 5321 6.1 prefers to
/// losing mail.
pub(crate) struct Extra<'a> {
    queue: &'a dyn QueueStore,
    id: Option<QueueId>,
}

impl Extra<'_> {
    pub(crate) fn keep(mut self) {
        self.id = None;
    }
}

impl Drop for Extra<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Ok(Some(lock)) = self.queue.lock(&id) {
                let _ = self.queue.remove(lock);
            }
        }
    }
}

/// Commits the entry [`split_off`] made, if any, with the same message as the first entry: the
/// trace fields, then the body. A spooled body is copied to a second spool file for it, a piece
/// at a time (the first entry takes the original by rename; a hard link would share an inode
/// that the queue truncates when it recycles a removed entry's file).
pub(crate) fn commit_extra<'a>(
    queue: &'a dyn QueueStore,
    extra: Option<Envelope>,
    trace: &str,
    body: &MessageBody,
) -> Result<Extra<'a>, StoreError> {
    let Some(mut env) = extra else {
        return Ok(Extra { queue, id: None });
    };
    // Its trace may be longer than the first entry's (the ARC set).
    env.size = trace.len() as u64 + body.len();
    let committed = match body {
        MessageBody::Memory(bytes) => queue.commit_parts(&env, &[trace.as_bytes(), bytes]),
        // A second spool file, copied a piece at a time: the message is never in memory.
        MessageBody::Spooled(file) => {
            let copy = queue.spool().and_then(|mut copy| {
                file.for_each_chunk(64 * 1024, |piece| copy.append(piece))?;
                copy.finish()
            });
            copy.and_then(|copy| {
                let env = Envelope {
                    prefix: trace.to_string(),
                    ..env.clone()
                };
                queue.commit_spooled(&env, copy)
            })
        }
    };
    committed.map_err(|e| StoreError::from_io("queue commit (forwarded copies)", &e))?;
    Ok(Extra {
        queue,
        id: Some(env.id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    use tern_queue::{FsStore, Recipient, RecipientStatus};

    use crate::intake::{Accepted, AcceptedRecipient, Intake, MessageStore};
    use crate::local::LocalDelivery;
    use crate::router::Target;

    const RECEIVED: &str = "Received: by mx.tern.test (tern) id 1;\r\n\tdate\r\n";
    const BODY: &[u8] = b"From: <carol@far.test>\r\nSubject: x\r\n\r\nhi\r\n";

    fn cfg(dir: &Path, srs: bool) -> Config {
        let secret = dir.join("srs.secret");
        std::fs::write(&secret, "a-secret-of-enough-length\n").unwrap();
        let mut text = format!(
            "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n[local]\ndomains = [\"tern.test\"]\n",
            dir.display().to_string()
        );
        if srs {
            text.push_str(&format!(
                "[srs]\nsecret_file = {:?}\n",
                secret.display().to_string()
            ));
        }
        Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    fn rcpt(address: &str, original: Option<&str>) -> Recipient {
        Recipient {
            dsn: Default::default(),
            original: original.map(str::to_string),
            address: address.into(),
            status: RecipientStatus::Pending,
        }
    }

    fn envelope(sender: Option<&str>, recipients: Vec<Recipient>) -> Envelope {
        Envelope::new(
            QueueId::generate(),
            sender.map(str::to_string),
            recipients,
            SystemTime::now(),
            1,
        )
    }

    #[test]
    fn forwarded_recipients_get_the_srs_sender_in_their_own_entry() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), true);
        let mut env = envelope(
            Some("carol@far.test"),
            vec![
                rcpt("bob@remote.test", None),
                rcpt("someone@remote.test", Some("fwd@tern.test")),
            ],
        );
        let Split::Extra(extra) = split_off(Some(&c), &mut env, false) else {
            panic!("not split")
        };
        assert_eq!(env.sender.as_deref(), Some("carol@far.test"));
        assert_eq!(env.recipients, [rcpt("bob@remote.test", None)]);
        let sender = extra.sender.clone().unwrap();
        assert!(
            sender.starts_with("SRS0=") && sender.ends_with("=far.test=carol@mx.tern.test"),
            "{sender}"
        );
        assert_eq!(
            extra.recipients,
            [rcpt("someone@remote.test", Some("fwd@tern.test"))]
        );
        assert_ne!(extra.id, env.id);

        // Only forwarded: the one entry changes its sender.
        let mut only = envelope(
            Some("carol@far.test"),
            vec![rcpt("someone@remote.test", Some("fwd@tern.test"))],
        );
        assert!(matches!(
            split_off(Some(&c), &mut only, false),
            Split::Whole
        ));
        assert_eq!(only.sender, Some(sender));
    }

    #[test]
    fn senders_that_keep_their_address() {
        let dir = tempfile::tempdir().unwrap();
        let on = cfg(dir.path(), true);
        let off = cfg(dir.path(), false);
        let forwarded = || vec![rcpt("someone@remote.test", Some("fwd@tern.test"))];
        for (c, sender) in [
            (&on, None),                    // a bounce: <> stays <>
            (&on, Some("alice@tern.test")), // our own domain
            (&on, Some("x@mx.tern.test")),  // the SRS domain
            (&off, Some("carol@far.test")), // SRS off
        ] {
            let mut env = envelope(sender, forwarded());
            assert!(matches!(split_off(Some(c), &mut env, false), Split::Mixed));
            assert_eq!(env.sender.as_deref(), sender);
        }
        let mut env = envelope(Some("carol@far.test"), forwarded());
        assert!(matches!(split_off(None, &mut env, false), Split::Mixed));
        assert_eq!(env.sender.as_deref(), Some("carol@far.test"));
    }

    /// A sealed message's forwarded copies get their own entry even without SRS, with the
    /// client's sender.
    #[test]
    fn a_seal_splits_without_srs() {
        let dir = tempfile::tempdir().unwrap();
        let off = cfg(dir.path(), false);
        let mut env = envelope(
            Some("carol@far.test"),
            vec![
                rcpt("bob@remote.test", None),
                rcpt("someone@remote.test", Some("fwd@tern.test")),
            ],
        );
        let Split::Extra(extra) = split_off(Some(&off), &mut env, true) else {
            panic!("not split")
        };
        assert_eq!(extra.sender.as_deref(), Some("carol@far.test"));
        assert_eq!(env.recipients, [rcpt("bob@remote.test", None)]);
        assert_eq!(
            extra.recipients,
            [rcpt("someone@remote.test", Some("fwd@tern.test"))]
        );
    }

    fn accepted(id: &QueueId) -> Accepted {
        Accepted {
            dsn: Default::default(),
            requiretls: false,
            id: id.to_string(),
            sender: Some("carol@far.test".into()),
            recipients: vec![
                AcceptedRecipient {
                    dsn: Default::default(),
                    address: "bob@remote.test".into(),
                    targets: vec![Target::Remote("bob@remote.test".into())],
                },
                AcceptedRecipient {
                    dsn: Default::default(),
                    address: "fwd@tern.test".into(),
                    targets: vec![Target::Remote("someone@remote.test".into())],
                },
            ],
            received: RECEIVED.into(),
            smtputf8: false,
            eight_bit: false,
            helo: "client.test".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            sign: false,
            inbound: crate::checks::Inbound::Skip,
            via: Default::default(),
        }
    }

    /// Intake stores a message with a direct and a forwarded remote recipient as two entries
    /// with the same bytes, from memory and from a spool file alike.
    #[test]
    fn intake_commits_two_entries_with_the_same_message() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(cfg(dir.path(), true));
        let queue = Arc::new(FsStore::open(dir.path()).unwrap());
        let intake = Intake::new(queue.clone(), LocalDelivery::unstaged(&c)).with_srs(c.clone());
        let big: Vec<u8> = [BODY, &b"line of text\r\n".repeat(10_000)].concat();
        let (a, b) = (QueueId::generate(), QueueId::generate());
        intake
            .store_blocking(&accepted(&a), MessageBody::Memory(BODY.to_vec()))
            .unwrap();
        let mut file = intake.spool().unwrap();
        file.append(&big).unwrap();
        intake
            .store_blocking(&accepted(&b), MessageBody::Spooled(file.finish().unwrap()))
            .unwrap();
        let ids = queue.list().unwrap();
        assert_eq!(ids.len(), 4, "{ids:?}");
        for (main, body) in [(&a, BODY), (&b, big.as_slice())] {
            let direct = queue.load(main).unwrap();
            assert_eq!(direct.sender.as_deref(), Some("carol@far.test"));
            assert_eq!(direct.recipients, [rcpt("bob@remote.test", None)]);
            let expected = [RECEIVED.as_bytes(), body].concat();
            assert_eq!(queue.read_message(main).unwrap(), expected);
            let extra: Vec<Envelope> = ids
                .iter()
                .filter(|id| *id != &a && *id != &b)
                .map(|id| queue.load(id).unwrap())
                .filter(|e| e.size == direct.size)
                .collect();
            assert_eq!(extra.len(), 1);
            assert!(extra[0]
                .sender
                .as_deref()
                .is_some_and(|s| s.starts_with("SRS0=")));
            assert_eq!(
                extra[0].recipients,
                [rcpt("someone@remote.test", Some("fwd@tern.test"))]
            );
            assert_eq!(queue.read_message(&extra[0].id).unwrap(), expected);
        }
    }
}
