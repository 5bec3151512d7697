//! Caps on the mailboxes clients can make tern create (issue 10). With `local.catch_all` every
//! local part is a valid recipient and its first message creates a Maildir (four directories,
//! inodes that no cleanup reclaims): without a bound, one client spraying random local parts fills
//! the inode table or the disk. So at RCPT time, before anything is written, a recipient that
//! would create a mailbox directory that does not exist yet counts against
//! `limits.max_new_mailboxes_per_message` (this transaction) and
//! `limits.max_new_mailboxes_per_minute` (the whole server, over the last 60 seconds); beyond
//! either the RCPT is refused for now. Users, alias targets and postmaster (the mailboxes the
//! configuration names, [`router::configured_mailboxes`]) and mailboxes that already exist
//! never count.
//!
//! A recipient counts when it is accepted, not when its message is stored: a transaction that
//! is abandoned after RCPT still used its share of the minute. That errs on the safe side.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_config::Config;

use crate::local::mailbox_of;
use crate::router::{self, Target};

/// The window of `limits.max_new_mailboxes_per_minute`.
const WINDOW: Duration = Duration::from_secs(60);

/// Which cap a recipient would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    /// `limits.max_new_mailboxes_per_message`.
    PerMessage,
    /// `limits.max_new_mailboxes_per_minute`.
    PerMinute,
}

/// The new mailboxes one transaction's recipients would create (kept by the session, dropped
/// with the transaction).
#[derive(Debug, Clone, Default)]
pub struct NewMailboxes(Vec<String>);

impl NewMailboxes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The mailboxes admitted in the last minute, oldest first, each once.
#[derive(Debug, Default)]
struct Recent {
    admitted: VecDeque<(Instant, String)>,
    keys: HashSet<String>,
}

impl Recent {
    fn forget_before(&mut self, cutoff: Instant) {
        while let Some((at, _)) = self.admitted.front() {
            if *at > cutoff {
                break;
            }
            if let Some((_, key)) = self.admitted.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

/// Shared by every session of a server (the per-minute count is server-wide).
#[derive(Debug)]
pub struct MailboxCap {
    data_dir: PathBuf,
    catch_all: bool,
    configured: HashSet<String>,
    per_message: usize,
    per_minute: usize,
    recent: Mutex<Recent>,
}

impl MailboxCap {
    pub fn new(cfg: &Config) -> Self {
        Self {
            data_dir: cfg.data_dir.clone(),
            catch_all: cfg.local.catch_all,
            // Only a catch-all accepts mailboxes the configuration does not name.
            configured: if cfg.local.catch_all {
                router::configured_mailboxes(cfg)
            } else {
                HashSet::new()
            },
            per_message: cfg.limits.max_new_mailboxes_per_message,
            per_minute: cfg.limits.max_new_mailboxes_per_minute,
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Whether the router's `targets` for one more recipient of the transaction whose new
    /// mailboxes are `this_message` stay within the caps; if so they are counted. Costs one
    /// stat(2) per catch-all target not seen in this transaction yet.
    pub fn admit(
        &self,
        targets: &[Target],
        this_message: &mut NewMailboxes,
    ) -> Result<(), CapExceeded> {
        self.admit_at(targets, this_message, Instant::now())
    }

    fn admit_at(
        &self,
        targets: &[Target],
        this_message: &mut NewMailboxes,
        now: Instant,
    ) -> Result<(), CapExceeded> {
        if !self.catch_all || (self.per_message == 0 && self.per_minute == 0) {
            return Ok(());
        }
        let mut fresh: Vec<&str> = Vec::new();
        for target in targets {
            let Target::Local(key) = target else { continue };
            if self.configured.contains(key)
                || this_message.0.iter().any(|k| k == key)
                || fresh.contains(&key.as_str())
            {
                continue;
            }
            // Its Maildir root exists: delivering there creates nothing new. A stat error
            // (EACCES) counts as missing: the cap errs on the safe side.
            if mailbox_of(&self.data_dir, key).is_dir() {
                continue;
            }
            fresh.push(key);
        }
        if fresh.is_empty() {
            return Ok(());
        }
        if self.per_message > 0 && this_message.0.len() + fresh.len() > self.per_message {
            return Err(CapExceeded::PerMessage);
        }
        if self.per_minute > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cutoff) = now.checked_sub(WINDOW) {
                recent.forget_before(cutoff);
            }
            // A mailbox another transaction admitted within the minute (its message not yet
            // stored) is the same directory: it counts once.
            let unseen: Vec<&str> = fresh
                .iter()
                .copied()
                .filter(|k| !recent.keys.contains(*k))
                .collect();
            if recent.admitted.len() + unseen.len() > self.per_minute {
                return Err(CapExceeded::PerMinute);
            }
            for key in unseen {
                recent.keys.insert(key.to_string());
                recent.admitted.push_back((now, key.to_string()));
            }
        }
        this_message.0.extend(fresh.into_iter().map(str::to_string));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(dir: &Path, limits: &str) -> Config {
        let text = format!(
            "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n[local]\ndomains = [\"tern.test\"]\ncatch_all = true\n\
             [[users]]\nname = \"alice@tern.test\"\n[aliases]\n\"team@tern.test\" = [\"bob@tern.test\"]\n\
             [limits]\n{limits}\n",
            dir.display().to_string()
        );
        Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    fn local(key: &str) -> Vec<Target> {
        vec![Target::Local(key.to_string())]
    }

    #[test]
    fn only_new_catch_all_mailboxes_count_per_message() {
        let d = tempfile::tempdir().unwrap();
        let cap = MailboxCap::new(&cfg(
            d.path(),
            "max_new_mailboxes_per_message = 2\nmax_new_mailboxes_per_minute = 0",
        ));
        std::fs::create_dir_all(mailbox_of(d.path(), "old@tern.test")).unwrap();
        let mut txn = NewMailboxes::default();
        for configured in ["alice@tern.test", "bob@tern.test", "postmaster@tern.test"] {
            assert_eq!(cap.admit(&local(configured), &mut txn), Ok(()));
        }
        assert_eq!(cap.admit(&local("old@tern.test"), &mut txn), Ok(()));
        assert_eq!(
            cap.admit(&[Target::Remote("x@far.test".into())], &mut txn),
            Ok(())
        );
        assert!(txn.is_empty());
        assert_eq!(cap.admit(&local("n1@tern.test"), &mut txn), Ok(()));
        assert_eq!(
            cap.admit(&local("n1@tern.test"), &mut txn),
            Ok(()),
            "same one"
        );
        assert_eq!(cap.admit(&local("n2@tern.test"), &mut txn), Ok(()));
        assert_eq!(
            cap.admit(&local("n3@tern.test"), &mut txn),
            Err(CapExceeded::PerMessage)
        );
        assert_eq!(txn.len(), 2);
        // Existing and configured mailboxes still pass once the cap is reached.
        assert_eq!(cap.admit(&local("old@tern.test"), &mut txn), Ok(()));
        assert_eq!(cap.admit(&local("alice@tern.test"), &mut txn), Ok(()));
        // The next transaction starts from zero.
        assert_eq!(
            cap.admit(&local("n3@tern.test"), &mut NewMailboxes::default()),
            Ok(())
        );
    }

    #[test]
    fn the_minute_is_server_wide_and_slides() {
        let d = tempfile::tempdir().unwrap();
        let cap = MailboxCap::new(&cfg(
            d.path(),
            "max_new_mailboxes_per_message = 0\nmax_new_mailboxes_per_minute = 2",
        ));
        let t0 = Instant::now();
        let (mut a, mut b) = (NewMailboxes::default(), NewMailboxes::default());
        assert_eq!(cap.admit_at(&local("n1@tern.test"), &mut a, t0), Ok(()));
        // Another transaction to the same not-yet-created mailbox: counted once.
        assert_eq!(cap.admit_at(&local("n1@tern.test"), &mut b, t0), Ok(()));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(cap.admit_at(&local("n2@tern.test"), &mut b, t1), Ok(()));
        assert_eq!(
            cap.admit_at(&local("n3@tern.test"), &mut a, t1),
            Err(CapExceeded::PerMinute)
        );
        // n1 leaves the window at t0 + 60 s; n2 is still in it.
        let t2 = t0 + WINDOW + Duration::from_millis(1);
        assert_eq!(cap.admit_at(&local("n3@tern.test"), &mut a, t2), Ok(()));
        assert_eq!(
            cap.admit_at(&local("n4@tern.test"), &mut a, t2),
            Err(CapExceeded::PerMinute)
        );
    }

    #[test]
    fn without_catch_all_nothing_is_counted() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path(), "max_new_mailboxes_per_message = 1");
        c.local.catch_all = false;
        let cap = MailboxCap::new(&c);
        let mut txn = NewMailboxes::default();
        for key in ["a@tern.test", "b@tern.test"] {
            assert_eq!(cap.admit(&local(key), &mut txn), Ok(()));
        }
    }
}
