//! ARC sealing (RFC 8617) of mail that tern forwards off-host for a local alias: one ARC set
//! (`ARC-Seal`, `ARC-Message-Signature`, `ARC-Authentication-Results`) with the next instance
//! number, made by mail-auth's `ArcSealer` from the chain the verifier just validated and the
//! results it just wrote into our Authentication-Results. The sealing key is one of the
//! `[[dkim]]` keys, chosen here ([`ArcSealer::from_config`]); the sealing itself runs inside
//! [`crate::Verifier::check_message_sealed`], where the parsed message, the chain and the
//! results are at hand.

use mail_auth::arc::{ArcSealer as MailAuthSealer, ChainValidation};
use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult};
use tern_config::{Config, DkimConfig};

use crate::dkim::key::{KeyType, PrivateKey};
use crate::dkim::signer::SignerError;

/// The header fields the ARC-Message-Signature covers (RFC 8617 4.1.2: like a DKIM signature,
/// but never ARC-Seal and, by its SHOULD NOT, no Authentication-Results). DKIM-Signature is in
/// it so that a later hop can tell the signatures it saw are the ones we saw.
const AMS_HEADERS: [&str; 14] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "DKIM-Signature",
];

/// The chain validation state our seal records (`cv=`, RFC 8617 4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedChain {
    /// There was no ARC set: ours is instance 1.
    None,
    /// Every earlier set validated.
    Pass,
    /// The chain did not validate (RFC 8617 5.1.2): sealed so that the next hop sees where it
    /// broke, never trusted by anyone after.
    Fail,
}

impl SealedChain {
    pub fn as_str(self) -> &'static str {
        match self {
            SealedChain::None => "none",
            SealedChain::Pass => "pass",
            SealedChain::Fail => "fail",
        }
    }
}

/// One ARC set made for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcSeal {
    /// `i=`: one more than the highest instance in the message.
    pub instance: u32,
    pub cv: SealedChain,
    /// `ARC-Seal`, `ARC-Message-Signature`, `ARC-Authentication-Results`, each folded and
    /// ending in CRLF, ASCII.
    pub fields: String,
}

/// Why a message that was to be sealed is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSealed {
    /// `checks.arc = false`: without validating the chain we cannot say what `cv=` is.
    ArcNotChecked,
    /// The latest ARC-Seal already says `cv=fail`: RFC 8617 5.1 step 1, nothing to add.
    AlreadyFailed,
    /// The ARC fields are malformed, too many (more than 50, RFC 8617 4.2.1) or unpaired, so
    /// there is no instance number to continue from.
    Unnumbered,
    /// A DNS failure while validating: a temporary state that must not be recorded as `fail`
    /// for every later hop; the next hop validates the chain itself.
    TempError,
    /// mail-auth could not sign (a reason for the log).
    Failed(String),
}

/// The key that seals, and mail-auth's sealer made from it.
pub struct ArcSealer {
    domain: String,
    selector: String,
    sealer: MailAuthSealer<DkimKey, Done>,
}

impl std::fmt::Debug for ArcSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArcSealer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// The name forwarded copies are sent as: `srs.domain` when SRS is on (their envelope
/// sender's domain, with our SPF record), else `hostname`.
fn forwarding_name(cfg: &Config) -> &str {
    cfg.srs
        .as_ref()
        .map_or(cfg.hostname.as_str(), |s| &s.domain)
}

/// The `[[dkim]]` entry that seals: an RSA key (RFC 8617 4.1.3 takes `a=` from DKIM, and ARC
/// validators know rsa-sha256 only) whose `domain` is the forwarding name, else one whose
/// `domain` is that name's parent (`mx.example.test` → `example.test`: the usual setup, one
/// key for the domain whose host forwards). The first such entry in the config wins. Keys were
/// loaded by the signer already; a key that cannot be read is the same start-up error.
fn sealing_key(cfg: &Config) -> Result<Option<(&DkimConfig, PrivateKey)>, SignerError> {
    let name = forwarding_name(cfg)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let parent = name.split_once('.').map(|(_, p)| p.to_string());
    for wanted in std::iter::once(Some(name.clone())).chain(std::iter::once(parent)) {
        let Some(wanted) = wanted.filter(|w| w.contains('.')) else {
            continue;
        };
        for entry in cfg.dkim.iter().filter(|d| d.domain == wanted) {
            let key = PrivateKey::load(&entry.key_file).map_err(|source| SignerError {
                domain: entry.domain.clone(),
                selector: entry.selector.clone(),
                key_file: entry.key_file.clone(),
                source: Box::new(source),
            })?;
            if matches!(key.key_type(), KeyType::Rsa { .. }) {
                return Ok(Some((entry, key)));
            }
        }
    }
    Ok(None)
}

impl ArcSealer {
    /// The sealer of this server, or `None` when no `[[dkim]]` RSA key is for the forwarding
    /// name or its parent (forwarded mail then leaves unsealed).
    pub fn from_config(cfg: &Config) -> Result<Option<ArcSealer>, SignerError> {
        let Some((entry, key)) = sealing_key(cfg)? else {
            return Ok(None);
        };
        let sealer = MailAuthSealer::from_key(key.into_signing_key())
            .domain(entry.domain.clone())
            .selector(entry.selector.clone())
            .headers(AMS_HEADERS)
            // relaxed/relaxed, as our DKIM signatures: survives refolding by later hops.
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Some(ArcSealer {
            domain: entry.domain.clone(),
            selector: entry.selector.clone(),
            sealer,
        }))
    }

    /// `d=` of the seals.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `s=` of the seals.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Seals `message` whose chain validated as `arc`, with `results` (our
    /// Authentication-Results) as the ARC-Authentication-Results.
    pub(crate) fn seal(
        &self,
        message: &AuthenticatedMessage<'_>,
        results: &AuthenticationResults<'_>,
        arc: &ArcOutput<'_>,
    ) -> Result<ArcSeal, NotSealed> {
        let sets = arc.sets();
        let cv = match (arc.result(), sets.last()) {
            (_, Some(last)) if last.seal.header.cv == ChainValidation::Fail => {
                return Err(NotSealed::AlreadyFailed)
            }
            (DkimResult::TempError(_), _) => return Err(NotSealed::TempError),
            (DkimResult::None, None) => SealedChain::None,
            // ARC fields, but none validated into a set: mail-auth would number ours 1 again.
            (_, None) => return Err(NotSealed::Unnumbered),
            (DkimResult::Pass, Some(_)) => SealedChain::Pass,
            // Fail, neutral (body changed, expired) or permerror: the chain is broken.
            (_, Some(_)) => SealedChain::Fail,
        };
        let set = self
            .sealer
            .seal(message, results, arc)
            .map_err(|e| NotSealed::Failed(e.to_string()))?;
        let instance = set.seal.i;
        let fields = set.to_header();
        Ok(ArcSeal {
            instance,
            cv,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::key::{generate_key, KeyAlgorithm};
    use std::path::Path;

    fn config(dir: &Path, hostname: &str, keys: &[(&str, &str, KeyAlgorithm)]) -> Config {
        let mut text = format!(
            "hostname = \"{hostname}\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        );
        for (domain, selector, algorithm) in keys {
            let file = dir.join(format!("{domain}.{selector}.key"));
            std::fs::write(&file, generate_key(*algorithm).unwrap()).unwrap();
            text.push_str(&format!(
                "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = {:?}\n",
                file.display().to_string()
            ));
        }
        Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn the_key_of_the_host_name_or_its_parent_and_rsa_only() {
        let dir = tempfile::tempdir().unwrap();
        let parent = config(
            dir.path(),
            "mx.example.test",
            &[
                ("other.test", "a", KeyAlgorithm::Rsa2048),
                ("example.test", "ed", KeyAlgorithm::Ed25519),
                ("example.test", "rsa", KeyAlgorithm::Rsa2048),
            ],
        );
        let s = ArcSealer::from_config(&parent).unwrap().unwrap();
        assert_eq!((s.domain(), s.selector()), ("example.test", "rsa"));

        let exact = config(
            dir.path(),
            "mx.example.test",
            &[
                ("example.test", "p", KeyAlgorithm::Rsa2048),
                ("mx.example.test", "h", KeyAlgorithm::Rsa2048),
            ],
        );
        let s = ArcSealer::from_config(&exact).unwrap().unwrap();
        assert_eq!((s.domain(), s.selector()), ("mx.example.test", "h"));

        // Ed25519 only, or a key for an unrelated domain: nothing seals.
        for keys in [
            &[("example.test", "ed", KeyAlgorithm::Ed25519)][..],
            &[("other.test", "a", KeyAlgorithm::Rsa2048)][..],
            &[][..],
        ] {
            let c = config(dir.path(), "mx.example.test", keys);
            assert!(ArcSealer::from_config(&c).unwrap().is_none(), "{keys:?}");
        }
        // A one-label parent ("test") is never a sealing domain.
        let c = config(
            dir.path(),
            "example.test",
            &[("test", "t", KeyAlgorithm::Rsa2048)],
        );
        assert!(ArcSealer::from_config(&c).unwrap().is_none());
    }
}
