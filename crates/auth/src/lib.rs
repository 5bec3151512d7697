//! Mail authentication for tern: DKIM signing of outbound mail (RFC 6376, with Ed25519 from
//! RFC 8463), the key tooling behind `tern dkim`, and inbound verification ([`verify`]: SPF,
//! DKIM, DMARC, ARC, Authentication-Results) and ARC sealing of forwarded mail ([`arc`], RFC 8617). The cryptography, canonicalization and record parsing are `mail-auth`'s (over
//! aws-lc-rs, tern's one crypto backend); this crate decides which key signs what and checks
//! keys and records so that mistakes show at start-up, not at the receiver.

pub mod arc;
pub mod dkim;
pub mod verify;

pub use arc::{ArcSeal, ArcSealer, NotSealed, SealedChain};
pub use dkim::{
    check_record, generate_key, DkimRecord, KeyAlgorithm, KeyError, KeyType, PrivateKey,
    RecordCheck, SignError, Signer, SignerError, MIN_RSA_BITS,
};
pub use verify::{
    strip_our_authentication_results, AuthResult, Disposition, MessageVerdict, ResolverSettings,
    SpfOutcome, SpfVerdict, Verifier, VerifierError,
};
