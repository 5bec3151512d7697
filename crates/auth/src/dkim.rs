//! DKIM: keys ([`key`]), the DNS record that publishes them ([`record`]), and the signer that
//! picks the keys for a message by its From: domain ([`signer`]).

pub mod key;
pub mod record;
pub mod signer;

pub use key::{generate_key, KeyAlgorithm, KeyError, KeyType, PrivateKey, MIN_RSA_BITS};
pub use record::{check_record, DkimRecord, RecordCheck};
pub use signer::{SignError, Signer, SignerError};
