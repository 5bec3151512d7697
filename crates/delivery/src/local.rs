//! Local delivery: one Maildir copy per mailbox, each with the trace fields a mailbox keeps
//! (Return-Path, Delivered-To, Received: RFC 5321 4.4), written all or none and fsync'd before
//! [`LocalDelivery::deliver`] returns. Used for inbound mail and for notifications alike, so both
//! write the same header prefix.
//!
//! The result is an undo guard: a caller that must also commit something else (the queue entry
//! for the remote recipients of the same message) keeps the copies only once that succeeded.
//! Dropped without [`Delivered::keep`], the copies are taken back, so the client's retry after
//! a 4xx cannot deliver them twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_config::Config;
use tern_proto::{Address, Domain};
use tern_queue::dirsync::DirSyncer;

use crate::maildir::{self, Body, Folder, MaildirCopy, MaildirError, Staging};

/// Writes copies into local mailboxes under `<data_dir>/mailboxes`.
pub struct LocalDelivery {
    data_dir: PathBuf,
    hostname: String,
    /// Group commit: deliveries finishing at the same moment share `fsync(new/)`.
    syncer: Arc<DirSyncer>,
    /// The server's private staging area (see [`Staging`]); `None` writes into each
    /// mailbox's own `tmp/`, which is what a second process (`tern queue bounce`) must do:
    /// opening the staging area clears it, which would remove the server's files in flight.
    staging: Option<Staging>,
    /// `[local] delivery` and `[local.per_domain]`: which local domains' mailboxes are an LMTP
    /// server's, whose recipients intake queues for the relay instead of writing them here
    /// ([`LocalDelivery::via_lmtp`]).
    local: tern_config::LocalConfig,
}

impl LocalDelivery {
    /// For the server: opens (and clears) the staging area; only safe before it accepts mail.
    pub fn open_staged(cfg: &Config) -> std::io::Result<Self> {
        // Under mailboxes/ so it is on the mailboxes' filesystem even when that is its own
        // volume; no domain directory can be named ".staging" (a leading dot is escaped).
        let staging = Staging::open(&cfg.data_dir.join("mailboxes").join(".staging"))?;
        Ok(Self {
            staging: Some(staging),
            ..Self::unstaged(cfg)
        })
    }

    /// For processes other than the server: no staging area.
    pub fn unstaged(cfg: &Config) -> Self {
        Self {
            data_dir: cfg.data_dir.clone(),
            hostname: cfg.hostname.clone(),
            syncer: Arc::new(DirSyncer::new()),
            staging: None,
            local: cfg.local.clone(),
        }
    }

    /// True when the mailbox key `local@domain` is in a domain delivered over LMTP (`[local]
    /// delivery = "lmtp"`, or its `[local.per_domain]` entry): mail for it goes to the queue
    /// (and from there over LMTP, RFC 2033) instead of into these mailboxes.
    pub fn via_lmtp(&self, key: &str) -> bool {
        self.local.lmtp_for_mailbox(key).is_some()
    }

    /// Delivers `body` to each mailbox named by its router key (`local@domain`), after the
    /// prefix `Return-Path: <return_path>`, `Delivered-To: <the mailbox>` and `received` (a
    /// complete `Received:` field ending in CRLF). Every copy or none is durable on `Ok`.
    pub fn deliver<'b, 'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        return_path: Option<&str>,
        received: &str,
        body: impl Into<Body<'b>>,
    ) -> Result<Delivered, MaildirError> {
        self.deliver_in(Folder::Inbox, keys, return_path, received, body)
    }

    /// [`LocalDelivery::deliver`] into a Maildir++ folder of each mailbox (`.Junk/` for mail
    /// DMARC says to quarantine), created on demand.
    pub fn deliver_in<'b, 'k>(
        &self,
        folder: Folder,
        keys: impl IntoIterator<Item = &'k str>,
        return_path: Option<&str>,
        received: &str,
        body: impl Into<Body<'b>>,
    ) -> Result<Delivered, MaildirError> {
        let body = body.into();
        let return_path = format!("Return-Path: <{}>\r\n", return_path.unwrap_or(""));
        let copies: Vec<MaildirCopy<'_>> = keys
            .into_iter()
            .map(|key| {
                let (local, domain) = key.rsplit_once('@').unwrap_or((key, ""));
                // Re-quoted where needed: `"john doe"@example.test`.
                let delivered_to =
                    Address::new_unchecked(local, Domain::Name(domain.to_string())).to_string();
                let mut prefix = String::with_capacity(return_path.len() + received.len() + 64);
                prefix.push_str(&return_path);
                prefix.push_str("Delivered-To: ");
                prefix.push_str(&delivered_to);
                prefix.push_str("\r\n");
                prefix.push_str(received);
                MaildirCopy {
                    mailbox: folder.path(&maildir::mailbox_path(&self.data_dir, local, domain)),
                    prefix: prefix.into_bytes(),
                    body,
                }
            })
            .collect();
        if copies.is_empty() {
            return Ok(Delivered::default());
        }
        let paths = match &self.staging {
            Some(staging) => {
                maildir::deliver_all_staged(&copies, &self.hostname, &self.syncer, staging)?
            }
            None => maildir::deliver_all_with(&copies, &self.hostname, &self.syncer)?,
        };
        Ok(Delivered { paths, kept: false })
    }
}

/// Copies delivered by [`LocalDelivery::deliver`], taken back when dropped unless kept.
#[must_use = "dropping Delivered removes the copies again; call keep() once the delivery stands"]
#[derive(Debug, Default)]
pub struct Delivered {
    paths: Vec<PathBuf>,
    kept: bool,
}

impl Delivered {
    /// The delivery stands: the copies stay.
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Where the copies are (in each mailbox's `new/`).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        if !self.kept {
            // Best effort: the caller reports a temporary failure and the sender retries.
            for p in &self.paths {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The mailbox directory of a router key (for tests and tools).
pub fn mailbox_of(data_dir: &Path, key: &str) -> PathBuf {
    let (local, domain) = key.rsplit_once('@').unwrap_or((key, ""));
    maildir::mailbox_path(data_dir, local, domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> Config {
        let text = format!(
            "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        );
        Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn copies_get_the_trace_prefix_and_the_guard_takes_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalDelivery::unstaged(&cfg(dir.path()));
        let received = "Received: by mx.tern.test (tern) id 1;\r\n\tdate\r\n";
        let d = local
            .deliver(
                ["a@tern.test", "b@tern.test"],
                None,
                received,
                b"Subject: x\r\n\r\nhi\r\n",
            )
            .unwrap();
        assert_eq!(d.paths().len(), 2);
        let text = std::fs::read_to_string(&d.paths()[0]).unwrap();
        assert!(text.contains("Return-Path: <>"), "{text}");
        assert!(text.contains("Delivered-To: a@tern.test"), "{text}");
        assert!(
            text.contains("Received: by mx.tern.test (tern) id 1;"),
            "{text}"
        );
        let paths = d.paths().to_vec();
        drop(d);
        assert!(paths.iter().all(|p| !p.exists()), "not kept: taken back");

        let kept = local
            .deliver(["a@tern.test"], Some("s@x.test"), received, b"\r\nx\r\n")
            .unwrap();
        let p = kept.paths()[0].clone();
        kept.keep();
        assert!(p.exists());
        assert_eq!(
            mailbox_of(dir.path(), "a@tern.test"),
            p.parent().unwrap().parent().unwrap()
        );
    }
}
