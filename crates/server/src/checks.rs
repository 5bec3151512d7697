//! Where AUTH password checks run: threads of their own, at most `limits.max_auth_checks` at
//! once.
//!
//! argon2 is slow and memory-hard on purpose (19 MiB per check with the default parameters).
//! Run on tokio's shared blocking pool (up to 512 threads), hundreds of parallel AUTH attempts
//! would cost gigabytes and would queue message storage, which uses that pool too, behind
//! them. Here a check gets a slot or is refused at once: the client gets `454 4.7.0` and tries
//! again later, nothing waits in a queue, and the blocking pool never sees a password. Each
//! check starts its own thread, which is nothing beside the cost of argon2 and leaves no idle
//! threads behind.

use std::sync::Arc;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use tern_config::Config;
use tern_proto::sasl::Credentials;

use crate::auth;

/// A check that started; resolves to the authenticated user, or `None` for bad credentials
/// (and for a check thread that died, which is no login either).
pub type Check = oneshot::Receiver<Option<String>>;

pub struct PasswordChecks {
    slots: Arc<Semaphore>,
    max: usize,
}

impl PasswordChecks {
    /// At most `max` checks at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Starts checking `creds`, or `None` when every slot is busy (or no thread can be
    /// started, which is the same to the client: try again later).
    pub fn start(&self, cfg: Arc<Config>, creds: Credentials) -> Option<Check> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("tern-auth".into())
            .spawn(move || run(&cfg, &creds, slot, tx))
            .ok()?;
        Some(rx)
    }

    /// Checks running now.
    pub fn running(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

fn run(
    cfg: &Config,
    creds: &Credentials,
    slot: OwnedSemaphorePermit,
    tx: oneshot::Sender<Option<String>>,
) {
    let user = auth::verify(cfg, creds);
    // The slot is free before the answer goes out: the client may try again at once.
    drop(slot);
    // The session may be gone (client closed, shutdown): nobody to tell.
    let _ = tx.send(user);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn beyond_the_slots_a_check_is_refused_and_a_finished_one_frees_its_slot() {
        let cfg = Arc::new(
            Config::from_toml_str(
                "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n",
                Path::new("t.toml"),
            )
            .unwrap(),
        );
        let creds = || Credentials {
            authzid: None,
            username: "nobody@tern.test".into(),
            password: "x".into(),
        };
        let checks = PasswordChecks::new(1);
        let first = checks.start(cfg.clone(), creds()).expect("a free slot");
        assert_eq!(checks.running(), 1);
        assert!(
            checks.start(cfg.clone(), creds()).is_none(),
            "second check while one runs"
        );
        assert_eq!(first.await.unwrap(), None);
        assert_eq!(checks.running(), 0);
        assert!(checks.start(cfg, creds()).is_some());
    }
}
