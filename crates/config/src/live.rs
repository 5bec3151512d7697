//! The running configuration, shared by everything that reads it while the server runs and
//! replaced as a whole by a reload (SIGHUP, `POST /api/reload`). A reader takes a snapshot
//! ([`LiveConfig::current`]) at the start of its unit of work (a session, a delivery round)
//! and keeps it to the end, so no unit ever sees half of one config and half of another.

use std::sync::{Arc, RwLock};

use crate::Config;

#[derive(Clone)]
pub struct LiveConfig(Arc<RwLock<Arc<Config>>>);

impl LiveConfig {
    pub fn new(cfg: Arc<Config>) -> Self {
        Self(Arc::new(RwLock::new(cfg)))
    }

    /// The configuration in force now (a cheap `Arc` clone).
    pub fn current(&self) -> Arc<Config> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Puts `cfg` in force for every later [`LiveConfig::current`].
    pub fn replace(&self, cfg: Arc<Config>) {
        match self.0.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
    }
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig").finish_non_exhaustive()
    }
}
