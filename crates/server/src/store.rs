//! The hand-off from the network-facing session to durable storage (OpenSMTPD's separation
//! of smtpd and queue): the session never touches the disk itself. The port and its message
//! type belong to the delivery crate (its `Intake` implements them); the server names them here.

pub use tern_delivery::intake::MessageStore;
pub use tern_queue::StoreError;
