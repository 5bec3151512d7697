//! Outbound delivery workers for queued remote recipients (filled in by the relay work).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use tern_config::Config;

use crate::inbound::InboundStore;

pub struct Workers {
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub fn spawn(
    _cfg: Arc<Config>,
    _store: Arc<InboundStore>,
    _shutdown: CancellationToken,
) -> Workers {
    Workers { handle: None }
}

impl Workers {
    pub async fn stop(self) {
        if let Some(h) = self.handle {
            let _ = h.await;
        }
    }
}
