//! tern's inbound SMTP: a pure session state machine ([`session`]), the reply table
//! ([`replies`]), recipient policy ([`policy`]), the trace header ([`received`]), the async
//! driver and listeners, and the [`store::MessageStore`] hand-off to durable storage.

pub mod auth;
pub mod data;
pub mod driver;
pub mod listener;
pub mod policy;
pub mod received;
pub mod replies;
pub mod session;
pub mod store;
pub mod tls;
pub mod tracker;

pub use listener::{bind_all, BoundListener, Server};
pub use session::{Accepted, AcceptedRecipient, ConnInfo, ListenerKind, Session};
pub use store::{MessageStore, StoreError};
pub use tls::TlsProvider;
