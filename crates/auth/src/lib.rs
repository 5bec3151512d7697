//! Mail authentication for tern. Today: DKIM signing of outbound mail (RFC 6376, with Ed25519
//! from RFC 8463) and the key tooling behind `tern dkim`; SPF, DMARC and ARC verification are to
//! come. The cryptography, canonicalization and record parsing are `mail-auth`'s (over
//! aws-lc-rs, tern's one crypto backend); this crate decides which key signs what and checks
//! keys and records so that mistakes show at start-up, not at the receiver.

pub mod dkim;

pub use dkim::{
    check_record, generate_key, DkimRecord, KeyAlgorithm, KeyError, KeyType, PrivateKey,
    RecordCheck, SignError, Signer, SignerError, MIN_RSA_BITS,
};
