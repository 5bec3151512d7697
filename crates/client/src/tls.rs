//! Client TLS: the policy (`TlsMode`), how the server certificate is judged (`CertCheck`), and
//! the rustls configuration. A certificate is verified against the webpki roots (plus any extra
//! CA given), or pinned by its SHA-256 fingerprint, or not checked at all, which the relay uses
//! for opportunistic STARTTLS to MX hosts (RFC 7435: encrypt even when it can't authenticate).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{ClientError, TlsFailure};
use crate::fingerprint::CertFingerprint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Never encrypt.
    None,
    /// STARTTLS when offered, plain text otherwise (and after a failed handshake, on a new
    /// connection). A certificate that does not verify does not stop the session: it goes on
    /// encrypted, unauthenticated (RFC 7435), and [`CertStatus::Unverified`] says why.
    #[default]
    Opportunistic,
    /// STARTTLS or fail.
    Required,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
}

/// How the server certificate is judged.
#[derive(Debug, Clone)]
pub enum CertCheck {
    /// Any certificate is accepted and nothing is checked but the handshake signatures
    /// (RFC 7435 opportunistic security; `--insecure`).
    Any,
    /// The chain leads to a webpki root or one of `extra_roots`, the certificate is valid now
    /// and for the server name (RFC 6125).
    WebPki {
        extra_roots: Vec<CertificateDer<'static>>,
        unverified: Unverified,
    },
    /// The end-entity certificate's SHA-256 is this; chain, name and dates are not checked (as
    /// msmtp's `tls_fingerprint`: the way to trust one self-signed server). A mismatch always
    /// fails the handshake.
    Pinned(CertFingerprint),
    /// DANE (RFC 7672): the certificate matches one of these DNSSEC-validated TLSA records
    /// ([`crate::dane`]); webpki roots play no part. A mismatch always fails the handshake.
    Dane(crate::dane::DaneCheck),
}

/// What a certificate that fails [`CertCheck::WebPki`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// The handshake fails (`TlsFailure::Certificate`).
    Fail,
    /// The handshake completes; the session is encrypted but unauthenticated (RFC 7435) and
    /// its [`CertStatus`] is `Unverified(reason)`, which keeps credentials from being sent.
    Continue,
}

/// What is known about the certificate of an established TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// Chain, dates and name verified.
    Verified,
    /// Its SHA-256 fingerprint is the pinned one.
    Pinned,
    /// It matched the host's TLSA records (DANE, RFC 7672).
    Dane,
    /// It was checked and did not verify, for this reason; the session went on anyway
    /// ([`Unverified::Continue`]).
    Unverified(String),
    /// Not checked ([`CertCheck::Any`]).
    NotChecked,
}

impl CertStatus {
    /// True when the server proved to be who we meant to reach: credentials may be sent.
    pub fn is_verified(&self) -> bool {
        matches!(
            self,
            CertStatus::Verified | CertStatus::Pinned | CertStatus::Dane
        )
    }

    /// Why the certificate does not count as verified; None when it does.
    pub fn unverified_reason(&self) -> Option<&str> {
        match self {
            CertStatus::Verified | CertStatus::Pinned | CertStatus::Dane => None,
            CertStatus::Unverified(reason) => Some(reason),
            CertStatus::NotChecked => Some("certificate checks are off"),
        }
    }
}

/// How the certificate of one handshake gets its [`CertStatus`].
#[derive(Clone)]
enum Judge {
    /// rustls checked it during the handshake: a completed handshake means this status.
    During(CertStatus),
    /// Any certificate passes the handshake; then this verifier says whether it verifies.
    After(Arc<WebPkiServerVerifier>),
}

/// A ready rustls configuration and the name to present (SNI) and verify.
#[derive(Clone)]
pub struct TlsParams {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    judge: Judge,
}

impl std::fmt::Debug for TlsParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParams")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsParams {
    /// `server_name` is the host name we connect to (an IP address is accepted too).
    pub fn new(server_name: &str, check: &CertCheck) -> Result<TlsParams, ClientError> {
        let name = server_name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| ClientError::Tls(format!("invalid server name {server_name:?}").into()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string().into()))?;
        let signatures_only = |pin| {
            builder
                .clone()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(KeyOnly {
                    pin,
                    provider: provider.clone(),
                }))
                .with_no_client_auth()
        };
        let (config, judge) = match check {
            CertCheck::Any => (signatures_only(None), Judge::During(CertStatus::NotChecked)),
            CertCheck::Pinned(pin) => (
                signatures_only(Some(*pin)),
                Judge::During(CertStatus::Pinned),
            ),
            CertCheck::Dane(check) => (
                builder
                    .clone()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(crate::dane::DaneVerifier {
                        check: check.clone(),
                        provider: provider.clone(),
                    }))
                    .with_no_client_auth(),
                Judge::During(CertStatus::Dane),
            ),
            CertCheck::WebPki {
                extra_roots,
                unverified,
            } => {
                let mut roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                for cert in extra_roots {
                    roots
                        .add(cert.clone())
                        .map_err(|e| ClientError::Tls(format!("bad CA certificate: {e}").into()))?;
                }
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ClientError::Tls(e.to_string().into()))?;
                match unverified {
                    Unverified::Fail => (
                        builder
                            .clone()
                            .with_webpki_verifier(verifier)
                            .with_no_client_auth(),
                        Judge::During(CertStatus::Verified),
                    ),
                    Unverified::Continue => (signatures_only(None), Judge::After(verifier)),
                }
            }
        };
        Ok(TlsParams {
            config: Arc::new(config),
            server_name,
            judge,
        })
    }

    /// The status of the certificate chain a completed handshake presented (end entity first).
    pub(crate) fn judge(&self, presented: Option<&[CertificateDer<'static>]>) -> CertStatus {
        match &self.judge {
            Judge::During(status) => status.clone(),
            Judge::After(verifier) => {
                let Some((end_entity, intermediates)) = presented.and_then(|c| c.split_first())
                else {
                    return CertStatus::Unverified("the server presented no certificate".into());
                };
                match verifier.verify_server_cert(
                    end_entity,
                    intermediates,
                    &self.server_name,
                    &[],
                    UnixTime::now(),
                ) {
                    Ok(_) => CertStatus::Verified,
                    Err(e) => CertStatus::Unverified(e.to_string()),
                }
            }
        }
    }
}

/// What a failed handshake means: a certificate rustls refused (and whether it was the pin that
/// did not match), or any other failure. tokio-rustls hands rustls's error inside the io::Error.
pub(crate) fn handshake_failure(e: &io::Error) -> TlsFailure {
    let Some(error) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return TlsFailure::Handshake(e.to_string());
    };
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
            if let Some(m) = other.downcast_ref::<crate::dane::DaneMismatch>() {
                return TlsFailure::Certificate(m.to_string());
            }
            match other.downcast_ref::<FingerprintMismatch>() {
                Some(m) => TlsFailure::FingerprintMismatch {
                    expected: m.expected,
                    seen: m.seen,
                },
                None => TlsFailure::Certificate(error.to_string()),
            }
        }
        rustls::Error::InvalidCertificate(_) => TlsFailure::Certificate(error.to_string()),
        _ => TlsFailure::Handshake(error.to_string()),
    }
}

/// Why a CA file gave no certificates to trust.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read CA file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("CA file {} holds no PEM certificate", path.display())]
    Empty { path: PathBuf },
    #[error("cannot parse CA file {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
}

impl CaFileError {
    /// The message with the file named as the caller's user knows it (`"--tls-ca"`, `"the
    /// route's ca_file"`) instead of "CA file".
    pub fn describe(&self, what: &str) -> String {
        match self {
            CaFileError::Unreadable { path, source } => {
                format!("cannot read {what} {}: {source}", path.display())
            }
            CaFileError::Empty { path } => {
                format!("{what} {} holds no PEM certificate", path.display())
            }
            CaFileError::Invalid { path, source } => {
                format!("cannot parse {what} {}: {source}", path.display())
            }
        }
    }
}

/// The certificates of a PEM file, to trust in addition to the webpki roots (`tern send
/// --tls-ca`, a route's `ca_file`). A file with no certificate in it is an error: trusting
/// nothing extra is surely not what whoever named the file meant. Other PEM sections (a key
/// next to the certificate) are skipped.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let classify = |source: pem::Error| match source {
        pem::Error::Io(_) => CaFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
        _ => CaFileError::Invalid {
            path: path.to_path_buf(),
            source,
        },
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(classify)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(classify)?;
    if certs.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The three handshake-signature methods of a [`ServerCertVerifier`] whose `provider` field
/// holds the crypto provider: every verifier here (pinned key, DANE) checks the handshake
/// signatures the same way and differs only in how it judges the certificate.
macro_rules! handshake_signatures_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use handshake_signatures_by_provider;

/// The pinned fingerprint did not match (carried through rustls's error to [`handshake_failure`]).
#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint mismatch: expected {expected}, the server presented {seen}")]
struct FingerprintMismatch {
    expected: CertFingerprint,
    seen: CertFingerprint,
}

/// Checks the handshake signatures (so the server holds the key of the certificate it
/// presented) and, with a pin, that certificate's SHA-256; never the chain or the name. Without
/// a pin it encrypts without authenticating (RFC 7435 opportunistic security).
#[derive(Debug)]
struct KeyOnly {
    pin: Option<CertFingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for KeyOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(expected) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let seen = CertFingerprint::of(end_entity.as_ref());
        if seen == expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(FingerprintMismatch { expected, seen })),
            )))
        }
    }

    handshake_signatures_by_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[test]
    fn a_pem_file_gives_its_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let text = format!(
            "{}{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ca_pem(),
            ca_pem()
        );
        std::fs::write(&path, text).unwrap();
        let certs = load_ca_file(&path).unwrap();
        assert_eq!(certs.len(), 2);
        // The loaded certificates are usable as roots.
        assert!(TlsParams::new(
            "mx.test",
            &CertCheck::WebPki {
                extra_roots: certs,
                unverified: Unverified::Fail
            }
        )
        .is_ok());
    }

    #[test]
    fn missing_empty_and_broken_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_ca_file(&missing).unwrap_err();
        assert!(matches!(e, CaFileError::Unreadable { .. }), "{e}");
        assert!(
            e.describe("--tls-ca").starts_with(&format!(
                "cannot read --tls-ca {}: I/O error: ",
                missing.display()
            )),
            "{}",
            e.describe("--tls-ca")
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = load_ca_file(&empty).unwrap_err();
        assert!(matches!(e, CaFileError::Empty { .. }), "{e}");
        assert_eq!(
            e.describe("the route's ca_file"),
            format!(
                "the route's ca_file {} holds no PEM certificate",
                empty.display()
            )
        );
        assert_eq!(
            e.to_string(),
            format!("CA file {} holds no PEM certificate", empty.display())
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let e = load_ca_file(&broken).unwrap_err();
        assert!(matches!(e, CaFileError::Invalid { .. }), "{e}");
    }
}
