//! Inbound verification for mail received on port 25 (never authenticated submission): SPF
//! (RFC 7208) at MAIL FROM, DKIM (RFC 6376), ARC (RFC 8617) and DMARC (RFC 7489) at the end
//! of DATA, one Authentication-Results field (RFC 8601) with the results. mail-auth does the
//! cryptography, record parsing and evaluation; here are the caches it is given ([`cache`]),
//! the void-lookup limit it lacks ([`void`]), DMARC `pct=` ([`pct`]), the typed verdicts
//! ([`outcome`]) and the header rewrite ([`strip`]).

pub mod cache;
mod message;
pub mod outcome;
mod pct;
mod spf;
pub mod strip;
mod verifier;
mod void;

pub use cache::{CacheSizes, DnsCaches, TtlCache, MAX_TTL};
pub use outcome::{
    AuthResult, Disposition, DkimSignatureResult, DmarcPolicy, DmarcSummary, LogFields,
    MessageVerdict, SmtpReply, SpfIdentity, SpfOutcome, SpfVerdict,
};
pub use strip::strip_our_authentication_results;
pub use verifier::{
    ResolverSettings, Verifier, VerifierError, DEFAULT_DEADLINE, DEFAULT_QUERY_TIMEOUT,
    NEGATIVE_MAX_TTL, RESOLVER_CACHE_SIZE,
};
pub use void::MAX_VOID_LOOKUPS;

#[cfg(test)]
mod tests;
