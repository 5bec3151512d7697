//! tern's inbound SMTP: a pure session state machine ([`session`]) inside a sans-I/O
//! [`connection`] (framing, DATA, pipelining), the reply table ([`replies`]), recipient policy
//! ([`policy`]), the trace header ([`received`]), the async driver and listeners, and the
//! [`store::MessageStore`] hand-off to durable storage.

pub mod auth;
pub mod checks;
pub mod client;
pub mod connection;
pub mod data;
pub mod disk;
pub mod driver;
pub mod filter;
pub mod listener;
pub mod memory;
pub mod policy;
pub mod received;
pub mod replies;
pub mod session;
pub mod shared_rate;
pub mod store;
pub mod stream;
pub mod stress;
pub mod tls;
pub mod tracker;

pub use connection::{Connection, Effect};
pub use listener::{bind_all, BoundListener, Generation, Server};
pub use session::{Accepted, AcceptedRecipient, ConnInfo, ListenerKind, Session};
pub use store::{MessageStore, StoreError};
pub use tls::TlsProvider;
