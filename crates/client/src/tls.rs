//! Client TLS: the policy (`TlsMode`) and the rustls configuration. Certificates are verified
//! against the webpki roots (plus any extra CA given) unless `verify` is false, which the relay
//! uses for opportunistic STARTTLS to MX hosts (RFC 7435: encrypt even when it can't authenticate).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::ClientError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Never encrypt.
    None,
    /// STARTTLS when offered, plain text otherwise (and after a failed handshake, on a new
    /// connection).
    #[default]
    Opportunistic,
    /// STARTTLS or fail.
    Required,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
}

/// A ready rustls configuration and the name to present (SNI) and verify.
#[derive(Clone)]
pub struct TlsParams {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
    /// The certificate is verified: a completed handshake proves chain and name.
    pub(crate) verify: bool,
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
    /// `extra_roots` are trusted in addition to the webpki roots (a private CA, a test CA).
    pub fn new(
        server_name: &str,
        verify: bool,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<TlsParams, ClientError> {
        let name = server_name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| ClientError::Tls(format!("invalid server name {server_name:?}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let config = if verify {
            let mut roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for cert in extra_roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| ClientError::Tls(format!("bad CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        };
        Ok(TlsParams {
            config: Arc::new(config),
            server_name,
            verify,
        })
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

/// Encrypts without authenticating (RFC 7435 opportunistic security). Signatures are still
/// checked so the handshake itself is sound; only the chain and the name are not.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
        assert!(TlsParams::new("mx.test", true, &certs).is_ok());
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
