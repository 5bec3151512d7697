//! tern's outbound SMTP client, shared by `tern send`, `tern sendmail` and relay delivery: reads
//! and checks every reply, per-phase timeouts (RFC 5321 4.5.3.2), PIPELINING (RFC 2920), SIZE,
//! 8BITMIME/SMTPUTF8, STARTTLS and implicit TLS, AUTH PLAIN/LOGIN, one outcome per recipient.
//!
//! Two layers: [`Session`] drives one connection over any async stream (tests use an in-memory
//! duplex), and [`connect`] opens a TCP connection and runs banner, EHLO, STARTTLS and AUTH.

pub mod connect;
pub mod dane;
pub mod envelope;
pub mod error;
pub mod fingerprint;
pub mod outcome;
pub mod rate;
pub mod session;
pub mod stream;
pub mod timeouts;
pub mod tls;
pub mod transaction;
pub mod transcript;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod scripted;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tls_tests;

pub use connect::{connect, connect_first, connect_tcp, ConnectOptions};
pub use dane::{DaneCheck, DaneMismatch, DaneRecord};
pub use envelope::{DsnRequest, Envelope, MessageTraits, TraitsScanner};
pub use error::{ClientError, Stage, TlsFailure};
pub use fingerprint::{CertFingerprint, FingerprintError};
pub use outcome::{Delivery, Failure, Outcome, OutcomeClass};
pub use rate::MinDataRate;
pub use session::{
    address_literal, AuthChannel, HeloName, NegotiatedTls, Session, SessionOptions,
    MAX_BUFFERED_REPLY_BYTES,
};
pub use tern_proto::sasl::Credentials;
pub use timeouts::Timeouts;
pub use tls::{load_ca_file, CaFileError, CertCheck, CertStatus, TlsMode, TlsParams, Unverified};
pub use transaction::{BodySource, SliceBody, CHUNK};
pub use transcript::{Direction, TranscriptHook};
