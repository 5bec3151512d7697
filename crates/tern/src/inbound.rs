//! Where an accepted message goes before the 250: local recipients straight into their Maildir
//! (the Maildir rename is itself the durable commit, so there is no spool-then-copy), remote
//! recipients into the durable queue for the relay. Both are fsync'd before `store` returns.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use tern_config::Config;
use tern_delivery::maildir::{self, MaildirCopy};
use tern_proto::{Address, Domain};
use tern_queue::dirsync::DirSyncer;
use tern_queue::{Envelope, FsStore, QueueId, QueueStore, Recipient, RecipientStatus};
use tern_server::policy::Target;
use tern_server::{Accepted, MessageStore, StoreError};

pub struct InboundStore {
    cfg: Arc<Config>,
    queue: Arc<FsStore>,
    /// Group commit: sessions delivering at the same moment share `fsync(new/)`.
    dir_syncer: Arc<DirSyncer>,
    /// Where Maildir copies are written before their rename into `new/` (see `Staging`).
    staging: Arc<maildir::Staging>,
    /// Tells the relay scheduler at once about each message queued for a remote domain (it
    /// also rescans the spool, so a message is never missed if this channel is gone).
    queued_tx: mpsc::UnboundedSender<QueueId>,
    queued_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<QueueId>>>,
}

impl InboundStore {
    /// Opens the spool and cleans up after a crash (temp files, orphans); only safe before the
    /// listeners start, when nothing else writes the spool.
    pub fn open(cfg: Arc<Config>) -> io::Result<Self> {
        let queue = Arc::new(FsStore::open(&cfg.data_dir)?);
        let report = queue.recover()?;
        tracing::info!(
            entries = report.entries,
            temp_files_removed = report.temp_files_removed,
            orphans_removed = report.orphan_messages_removed,
            quarantined = report.quarantined.len(),
            "spool recovered"
        );
        // Under mailboxes/ so it is on the mailboxes' filesystem even when that is its own volume;
        // no domain directory can be named ".staging" (a leading dot is escaped).
        let staging = maildir::Staging::open(&cfg.data_dir.join("mailboxes").join(".staging"))?;
        let (queued_tx, queued_rx) = mpsc::unbounded_channel();
        Ok(Self {
            cfg,
            queue,
            dir_syncer: Arc::new(DirSyncer::new()),
            staging: Arc::new(staging),
            queued_tx,
            queued_rx: std::sync::Mutex::new(Some(queued_rx)),
        })
    }

    pub fn queue(&self) -> Arc<FsStore> {
        self.queue.clone()
    }

    /// The ids of newly queued remote messages; there is one receiver, for the relay scheduler.
    pub fn take_queued(&self) -> Option<mpsc::UnboundedReceiver<QueueId>> {
        self.queued_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// One local mailbox and the recipients (as given by the client) that lead to it.
struct LocalCopy {
    mailbox: PathBuf,
    delivered_to: String,
}

impl MessageStore for InboundStore {
    async fn store(&self, accepted: Accepted, body: Vec<u8>) -> Result<(), StoreError> {
        let cfg = self.cfg.clone();
        let queue = self.queue.clone();
        let dir_syncer = self.dir_syncer.clone();
        let staging = self.staging.clone();
        let has_remote = accepted
            .recipients
            .iter()
            .flat_map(|r| &r.targets)
            .any(|t| matches!(t, Target::Remote(_)));
        let id = accepted.id.clone();
        let result = tokio::task::spawn_blocking(move || {
            store_blocking(
                &cfg,
                queue.as_ref(),
                &dir_syncer,
                &staging,
                &accepted,
                &body,
            )
        })
        .await
        .map_err(|e| StoreError::new(format!("storage task failed: {e}")))?;
        if result.is_ok() && has_remote {
            if let Ok(id) = id.parse::<QueueId>() {
                // A closed channel (relay stopped) is fine: the spool is rescanned at startup.
                let _ = self.queued_tx.send(id);
            }
        }
        result
    }
}

fn store_blocking(
    cfg: &Config,
    queue: &FsStore,
    dir_syncer: &DirSyncer,
    staging: &maildir::Staging,
    acc: &Accepted,
    body: &[u8],
) -> Result<(), StoreError> {
    // Each target once, even when several recipients or aliases lead to it.
    let mut locals: BTreeMap<String, LocalCopy> = BTreeMap::new();
    let mut remotes: BTreeMap<String, String> = BTreeMap::new();
    for rcpt in &acc.recipients {
        for target in &rcpt.targets {
            match target {
                Target::Local(key) => {
                    let (local, domain) = key.rsplit_once('@').unwrap_or((key.as_str(), ""));
                    locals.entry(key.clone()).or_insert_with(|| LocalCopy {
                        mailbox: maildir::mailbox_path(&cfg.data_dir, local, domain),
                        // Re-quoted where needed: `"john doe"@example.test`.
                        delivered_to: Address::new_unchecked(
                            local,
                            Domain::Name(domain.to_string()),
                        )
                        .to_string(),
                    });
                }
                Target::Remote(addr) => {
                    remotes
                        .entry(addr.clone())
                        .or_insert_with(|| rcpt.address.clone());
                }
            }
        }
    }

    let mut delivered: Vec<PathBuf> = Vec::new();
    if !locals.is_empty() {
        let return_path = format!("Return-Path: <{}>\r\n", acc.sender.as_deref().unwrap_or(""));
        let copies: Vec<MaildirCopy> = locals
            .into_values()
            .map(|c| {
                let mut prefix = String::with_capacity(return_path.len() + acc.received.len() + 64);
                prefix.push_str(&return_path);
                prefix.push_str(&format!("Delivered-To: {}\r\n", c.delivered_to));
                prefix.push_str(&acc.received);
                MaildirCopy {
                    mailbox: c.mailbox,
                    prefix: prefix.into_bytes(),
                    body,
                }
            })
            .collect();
        delivered = maildir::deliver_all_staged(&copies, &cfg.hostname, dir_syncer, staging)
            .map_err(|e| StoreError::new(e.to_string()))?;
    }
    if !remotes.is_empty() {
        let id: QueueId = acc
            .id
            .parse()
            .map_err(|_| StoreError::new(format!("invalid queue id {}", acc.id)))?;
        let envelope = Envelope {
            id,
            sender: acc.sender.clone(),
            recipients: remotes
                .into_iter()
                .map(|(address, original)| Recipient {
                    original: (original != address).then_some(original),
                    address,
                    status: RecipientStatus::Pending,
                })
                .collect(),
            received_at: SystemTime::now(),
            client_ip: Some(acc.client_ip),
            helo: Some(acc.helo.clone()),
            size: (acc.received.len() + body.len()) as u64,
            smtputf8: acc.smtputf8,
            eight_bit: acc.eight_bit,
            held: false,
            delay_warned: false,
            attempts_log: Vec::new(),
        };
        if let Err(e) = queue.commit_parts(&envelope, &[acc.received.as_bytes(), body]) {
            // The client gets a 4xx and will retry the whole message: take back the local
            // copies so the retry does not deliver them twice.
            for path in &delivered {
                let _ = std::fs::remove_file(path);
            }
            return Err(StoreError::new(format!("queue commit failed: {e}")));
        }
    }

    Ok(())
}
