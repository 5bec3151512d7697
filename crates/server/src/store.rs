//! The hand-off from the network-facing session to durable storage (OpenSMTPD's separation
//! of smtpd and queue): the session never touches the disk itself.

use std::future::Future;

use crate::session::Accepted;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
}

impl StoreError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

pub trait MessageStore: Send + Sync + 'static {
    /// Makes the message durable (fsync'd) for every recipient; only then may the session
    /// answer 250. `body` is the client's data, without the trace header in `accepted.received`.
    fn store(
        &self,
        accepted: Accepted,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
