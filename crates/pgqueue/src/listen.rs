//! Hearing other nodes: one connection of its own does `LISTEN tern_queue`; each NOTIFY
//! (sent by the statement that committed a change, see sql.rs) becomes a
//! `StoreEvent::ChangedElsewhere` for this node's subscribers, unless this process sent it.
//! The connection is re-made when it drops (a database restart); changes made meanwhile were
//! not heard, so every reconnect tells the subscribers to look at the store again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use tern_queue::StoreEvent;

use crate::Inner;

/// The channel every tern node uses.
pub(crate) const CHANNEL: &str = "tern_queue";

const RECONNECT: Duration = Duration::from_secs(1);

pub(crate) fn spawn(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    inner.rt.spawn(async move {
        let mut first = true;
        loop {
            let Some(url) = weak.upgrade().map(|i| i.url.clone()) else {
                return;
            };
            match listen_once(&weak, &url, first).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e,
                    "queue: lost the PostgreSQL notification connection; reconnecting"),
            }
            first = false;
            tokio::time::sleep(RECONNECT).await;
        }
    });
}

/// Listens until the connection drops (`Err`) or the store is gone (`Ok`).
async fn listen_once(weak: &Weak<Inner>, url: &str, first: bool) -> Result<(), String> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the connection closed".to_string())
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    if !first {
        if let Some(inner) = weak.upgrade() {
            tracing::info!("queue: PostgreSQL notifications back");
            inner.tell(StoreEvent::Resync);
        }
    }
    while let Some(payload) = rx.recv().await {
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        let Some((origin, id)) = payload.split_once(' ') else {
            continue;
        };
        if origin == inner.origin {
            continue;
        }
        if let Ok(id) = id.parse() {
            inner.tell(StoreEvent::ChangedElsewhere { id });
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(e.to_string()),
    }
}
