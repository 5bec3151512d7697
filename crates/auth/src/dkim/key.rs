//! DKIM private keys: loading a PEM file (RSA as PKCS#1 or PKCS#8, Ed25519 as PKCS#8), the
//! public half as it goes into the DNS record, and generating new keys. Parsing and key
//! generation are aws-lc-rs's (through rustls-pki-types, mail-auth and rcgen); nothing here
//! touches key material by hand.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// RFC 8301 3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048; the large
/// receivers ignore shorter keys, so tern refuses them.
pub const MIN_RSA_BITS: usize = 2048;

/// What kind of key a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `a=rsa-sha256` (RFC 6376 3.3.1), with the modulus size.
    Rsa { bits: usize },
    /// `a=ed25519-sha256` (RFC 8463).
    Ed25519,
}

impl KeyType {
    /// The `k=` tag value of the DNS record (RFC 6376 3.6.1, RFC 8463 4.1).
    pub fn record_tag(self) -> &'static str {
        match self {
            KeyType::Rsa { .. } => "rsa",
            KeyType::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "RSA {bits} bits"),
            KeyType::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// The keys `tern dkim keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa2048,
    Rsa4096,
    Ed25519,
}

impl KeyAlgorithm {
    /// Names as the command line spells them.
    pub const ALL: [(&'static str, KeyAlgorithm); 3] = [
        ("rsa-2048", KeyAlgorithm::Rsa2048),
        ("rsa-4096", KeyAlgorithm::Rsa4096),
        ("ed25519", KeyAlgorithm::Ed25519),
    ];
}

/// Why a key file cannot be used for signing.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read DKIM key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}holds no PEM private key ({reason})", at(path.as_deref()))]
    NotPem {
        path: Option<PathBuf>,
        reason: String,
    },
    #[error("{}is not an RSA or Ed25519 private key ({reason})", at(path.as_deref()))]
    Unsupported {
        path: Option<PathBuf>,
        reason: String,
    },
    #[error(
        "{}is an RSA key of fewer than {MIN_RSA_BITS} bits; DKIM keys must have at least {MIN_RSA_BITS} (RFC 8301 3.2)",
        at(path.as_deref())
    )]
    RsaTooSmall { path: Option<PathBuf> },
    #[error("cannot generate the key: {0}")]
    Generate(String),
}

fn at(path: Option<&Path>) -> String {
    path.map_or_else(String::new, |p| format!("{} ", p.display()))
}

impl KeyError {
    fn with_path(self, path: &Path) -> Self {
        let path = Some(path.to_path_buf());
        match self {
            KeyError::NotPem { reason, .. } => KeyError::NotPem { path, reason },
            KeyError::Unsupported { reason, .. } => KeyError::Unsupported { path, reason },
            KeyError::RsaTooSmall { .. } => KeyError::RsaTooSmall { path },
            other => other,
        }
    }
}

/// A loaded signing key with its public half.
pub struct PrivateKey {
    key_type: KeyType,
    /// The `p=` bytes: for RSA the SubjectPublicKeyInfo DER (what `openssl rsa -pubout` and
    /// opendkim-genkey publish, and what every verifier reads; RFC 6376 3.6.1), for Ed25519 the
    /// bare 32-byte public key (RFC 8463 4.2).
    public: Vec<u8>,
    signing: DkimKey,
}

impl fmt::Debug for PrivateKey {
    // Never the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Reads and parses a PEM key file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|e| e.with_path(path))
    }

    /// Parses a PEM private key: `RSA PRIVATE KEY` (PKCS#1) or `PRIVATE KEY` (PKCS#8, RSA or
    /// Ed25519). RSA keys below [`MIN_RSA_BITS`] are refused.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::NotPem {
            path: None,
            reason: e.to_string(),
        })?;
        let unsupported = |reason: String| KeyError::Unsupported { path: None, reason };
        let library = |e: mail_auth::Error| unsupported(e.to_string());
        match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der();
                // "maybe_unchecked": PKCS#8 v1 files (OpenSSL's) carry no public key to check.
                if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                    let signing =
                        Ed25519Key::from_pkcs8_maybe_unchecked_der(bytes).map_err(library)?;
                    return Ok(Self {
                        key_type: KeyType::Ed25519,
                        public: pair.public_key().as_ref().to_vec(),
                        signing: DkimKey::Ed25519(signing),
                    });
                }
                let pair = RsaKeyPair::from_pkcs8(bytes).map_err(rsa_rejected)?;
                Self::rsa(&pair, &der)
            }
            PrivateKeyDer::Pkcs1(pkcs1) => {
                let pair = RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()).map_err(rsa_rejected)?;
                Self::rsa(&pair, &der)
            }
            _ => Err(unsupported(
                "an elliptic-curve (SEC1) key; DKIM signs with RSA or Ed25519".into(),
            )),
        }
    }

    fn rsa(pair: &RsaKeyPair, der: &PrivateKeyDer<'_>) -> Result<Self, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall { path: None });
        }
        let public = pair
            .public_key()
            .as_der()
            .map_err(|e| KeyError::Unsupported {
                path: None,
                reason: e.to_string(),
            })?
            .as_ref()
            .to_vec();
        let signing =
            RsaKey::<Sha256>::from_key_der(der.clone_key()).map_err(|e| KeyError::Unsupported {
                path: None,
                reason: e.to_string(),
            })?;
        Ok(Self {
            key_type: KeyType::Rsa { bits },
            public,
            signing: DkimKey::Rsa(signing),
        })
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The public key bytes for `p=` (before base64).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    pub(crate) fn signing_key(&self) -> &DkimKey {
        &self.signing
    }

    pub(crate) fn into_signing_key(self) -> DkimKey {
        self.signing
    }
}

/// aws-lc-rs refuses short RSA keys itself ("TooSmall"); say so in DKIM's terms.
fn rsa_rejected(e: aws_lc_rs::error::KeyRejected) -> KeyError {
    if e.description_() == "TooSmall" {
        KeyError::RsaTooSmall { path: None }
    } else {
        KeyError::Unsupported {
            path: None,
            reason: e.to_string(),
        }
    }
}

/// A new key as PKCS#8 PEM (what [`PrivateKey::from_pem`] reads back).
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<String, KeyError> {
    use rcgen::{KeyPair as Generated, RsaKeySize, PKCS_ED25519, PKCS_RSA_SHA256};
    let generated = match algorithm {
        KeyAlgorithm::Rsa2048 => Generated::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyAlgorithm::Rsa4096 => Generated::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
        KeyAlgorithm::Ed25519 => Generated::generate_for(&PKCS_ED25519),
    }
    .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(generated.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_with_their_type() {
        let rsa =
            PrivateKey::from_pem(generate_key(KeyAlgorithm::Rsa2048).unwrap().as_bytes()).unwrap();
        assert_eq!(rsa.key_type(), KeyType::Rsa { bits: 2048 });
        // SubjectPublicKeyInfo: a DER SEQUENCE, about 294 bytes for 2048 bits.
        assert_eq!(rsa.public_key()[0], 0x30);
        assert!((290..300).contains(&rsa.public_key().len()));
        let ed =
            PrivateKey::from_pem(generate_key(KeyAlgorithm::Ed25519).unwrap().as_bytes()).unwrap();
        assert_eq!(ed.key_type(), KeyType::Ed25519);
        assert_eq!(ed.public_key().len(), 32);
        assert!(format!("{ed:?}").contains("Ed25519"));
    }

    #[test]
    fn unusable_keys_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.key");
        let e = PrivateKey::load(&missing).unwrap_err();
        assert!(e.to_string().contains("none.key"), "{e}");

        let text = dir.path().join("text.key");
        std::fs::write(&text, "not a key\n").unwrap();
        let e = PrivateKey::load(&text).unwrap_err();
        assert!(matches!(e, KeyError::NotPem { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&text.display().to_string()),
            "{e}"
        );

        // An EC key (what `tern cert self-signed` makes for TLS) is not a DKIM key.
        let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let e = PrivateKey::from_pem(ec.as_bytes()).unwrap_err();
        assert!(matches!(e, KeyError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn pkcs1_rsa_keys_load() {
        // `openssl genrsa -traditional` / opendkim-genkey write PKCS#1 ("RSA PRIVATE KEY").
        let pem = include_str!("../../testdata/rsa-2048-pkcs1.pem");
        let key = PrivateKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.key_type(), KeyType::Rsa { bits: 2048 });
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        // Test-only keys made with `openssl genrsa -traditional`.
        let pem = include_str!("../../testdata/rsa-1024.pem");
        let e = PrivateKey::from_pem(pem.as_bytes()).unwrap_err();
        assert!(matches!(e, KeyError::RsaTooSmall { .. }), "{e}");
        assert!(e.to_string().contains("at least 2048"), "{e}");
    }
}
