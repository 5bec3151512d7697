//! The DKIM signer: every `[[dkim]]` key loaded at start-up, and for each message the keys of
//! its RFC 5322 From: domain (RFC 6376 says nothing about which domain signs; DMARC, RFC 7489
//! 3.1.1, passes only when `d=` aligns with the From: domain, so that is the one that counts).
//! A domain with an RSA and an Ed25519 key gets both signatures (RFC 8463 3: receivers that do
//! not know Ed25519 ignore that one and use the RSA one).

use std::path::PathBuf;

use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mail_auth::AuthenticatedMessage;
use tern_config::DkimConfig;

use crate::dkim::key::{KeyError, PrivateKey};

/// A `[[dkim]]` key that cannot be used: the server must not start (an unsigned message would
/// fail DMARC at the receiver, silently).
#[derive(Debug, thiserror::Error)]
#[error(
    "dkim key for {domain} (selector {selector}): {source}; fix: point key_file at a PEM RSA (>= 2048 bits) \
     or Ed25519 key, e.g. one made by `tern dkim keygen --domain {domain} --selector {selector} --out {}`",
    key_file.display()
)]
pub struct SignerError {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    // Boxed: keeps `Result<Signer, _>` small (the error is rare, the Ok path common).
    #[source]
    pub source: Box<KeyError>,
}

/// Signing a message failed; the message must not be accepted unsigned.
#[derive(Debug, thiserror::Error)]
#[error("DKIM signing with {domain} (selector {selector}) failed: {reason}")]
pub struct SignError {
    pub domain: String,
    pub selector: String,
    pub reason: String,
}

struct SigningKey {
    domain: String,
    selector: String,
    subdomains: bool,
    signer: DkimSigner<DkimKey, Done>,
}

impl SigningKey {
    /// RFC 6376 3.5 `d=`: the key signs for its domain, and for names under it when allowed
    /// (DMARC's relaxed alignment, RFC 7489 3.1.1, accepts a parent `d=`).
    fn covers(&self, from_domain: &str) -> bool {
        from_domain == self.domain
            || (self.subdomains
                && from_domain
                    .strip_suffix(self.domain.as_str())
                    .is_some_and(|rest| rest.ends_with('.')))
    }
}

/// All configured keys, ready to sign.
#[derive(Default)]
pub struct Signer {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| format!("{}/{}", k.domain, k.selector)),
            )
            .finish()
    }
}

impl Signer {
    /// Loads every key; the first that cannot be used is the error.
    pub fn from_config(configs: &[DkimConfig]) -> Result<Signer, SignerError> {
        let mut keys = Vec::with_capacity(configs.len());
        for config in configs {
            let key = PrivateKey::load(&config.key_file).map_err(|source| SignerError {
                domain: config.domain.clone(),
                selector: config.selector.clone(),
                key_file: config.key_file.clone(),
                source: Box::new(source),
            })?;
            // From over-signed (RFC 6376 8.15): listed once more than it occurs, so that a
            // From: added in transit (a second one makes DMARC ambiguous) breaks the
            // signature. mail-auth also lists every configured field the message lacks,
            // which over-signs those the same way.
            let mut headers = config.headers.clone();
            headers.push("From".to_string());
            let signer = DkimSigner::from_key(key.into_signing_key())
                .domain(config.domain.clone())
                .selector(config.selector.clone())
                .headers(headers)
                // relaxed/relaxed (RFC 6376 3.4): survives the refolding and whitespace changes
                // of relays in between, which simple does not.
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            keys.push(SigningKey {
                domain: config.domain.to_ascii_lowercase(),
                selector: config.selector.clone(),
                subdomains: config.subdomains,
                signer,
            });
        }
        Ok(Signer { keys })
    }

    /// True when no key is configured (nothing is ever signed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `DKIM-Signature:` fields (each ending in CRLF) to put in front of `message`, one per
    /// key covering a From: domain of the message; empty when none does (or there is no
    /// From:). The fields are ASCII. `message` is the message as it will leave: header
    /// section, empty line, body, CRLF line endings.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        if self.keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            return Ok(Vec::new());
        };
        let domains: Vec<String> = parsed
            .from
            .iter()
            .filter_map(|address| address.rsplit_once('@'))
            .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let mut fields = Vec::new();
        for key in self
            .keys
            .iter()
            .filter(|k| domains.iter().any(|d| k.covers(d)))
        {
            let signature = key.signer.sign(message).map_err(|e| SignError {
                domain: key.domain.clone(),
                selector: key.selector.clone(),
                reason: e.to_string(),
            })?;
            signature.write_header(&mut fields);
            tracing::debug!(domain = %key.domain, selector = %key.selector, "DKIM signed");
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::key::{generate_key, KeyAlgorithm};
    use std::path::Path;

    fn config(dir: &Path, domain: &str, selector: &str, algorithm: KeyAlgorithm) -> DkimConfig {
        let key_file = dir.join(format!("{domain}.{selector}.key"));
        std::fs::write(&key_file, generate_key(algorithm).unwrap()).unwrap();
        DkimConfig {
            domain: domain.into(),
            selector: selector.into(),
            key_file,
            headers: tern_config::defaults::DKIM_HEADERS
                .map(String::from)
                .to_vec(),
            subdomains: false,
        }
    }

    const MESSAGE: &[u8] = b"From: Alice <alice@Example.TEST>\r\nTo: bob@other.test\r\n\
        Subject: hi\r\n\r\nhello\r\n";

    #[test]
    fn signs_with_every_key_of_the_from_domain() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::from_config(&[
            config(dir.path(), "example.test", "rsa", KeyAlgorithm::Rsa2048),
            config(dir.path(), "example.test", "ed", KeyAlgorithm::Ed25519),
            config(dir.path(), "other.test", "x", KeyAlgorithm::Ed25519),
        ])
        .unwrap();
        let fields = String::from_utf8(signer.sign(MESSAGE).unwrap()).unwrap();
        assert_eq!(fields.matches("DKIM-Signature:").count(), 2, "{fields}");
        assert!(
            fields.contains("a=rsa-sha256; s=rsa; d=example.test"),
            "{fields}"
        );
        assert!(
            fields.contains("a=ed25519-sha256; s=ed; d=example.test"),
            "{fields}"
        );
        assert!(fields.contains("c=relaxed/relaxed"), "{fields}");
        // From twice in h= (over-signed); the message's To and Subject once each.
        let h = fields
            .split("h=")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .replace(['\r', '\n', '\t', ' '], "");
        assert_eq!(
            h.split(':')
                .filter(|f| f.eq_ignore_ascii_case("from"))
                .count(),
            2,
            "{h}"
        );
        assert!(fields.ends_with("\r\n"));
    }

    #[test]
    fn subdomains_only_when_allowed_and_nothing_without_a_match() {
        let dir = tempfile::tempdir().unwrap();
        let exact = config(dir.path(), "test", "s", KeyAlgorithm::Ed25519);
        let signer = Signer::from_config(std::slice::from_ref(&exact)).unwrap();
        assert!(
            signer.sign(MESSAGE).unwrap().is_empty(),
            "example.test is not test"
        );
        let signer = Signer::from_config(&[DkimConfig {
            subdomains: true,
            ..exact
        }])
        .unwrap();
        let fields = String::from_utf8(signer.sign(MESSAGE).unwrap()).unwrap();
        assert!(fields.contains("d=test;"), "{fields}");
        // No From: nothing to sign for.
        assert!(signer
            .sign(b"Subject: x\r\n\r\nbody\r\n")
            .unwrap()
            .is_empty());
        assert!(Signer::default().sign(MESSAGE).unwrap().is_empty());
        // "badexample.test" is not under "example.test".
        let key = SigningKey {
            subdomains: true,
            ..Signer::from_config(&[config(
                dir.path(),
                "example.test",
                "t",
                KeyAlgorithm::Ed25519,
            )])
            .unwrap()
            .keys
            .remove(0)
        };
        assert!(key.covers("mail.example.test"));
        assert!(!key.covers("badexample.test"));
    }

    #[test]
    fn a_missing_key_names_the_key_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = config(dir.path(), "example.test", "s1", KeyAlgorithm::Ed25519);
        bad.key_file = dir.path().join("gone.key");
        let e = Signer::from_config(&[bad]).unwrap_err().to_string();
        assert!(e.contains("dkim key for example.test (selector s1)"), "{e}");
        assert!(e.contains("gone.key"), "{e}");
        assert!(e.contains("fix: "), "{e}");
        assert!(
            e.contains("tern dkim keygen --domain example.test --selector s1"),
            "{e}"
        );
    }
}
