//! Client TLS: the policy (`TlsMode`) and the rustls configuration. Certificates are verified
//! against the webpki roots (plus any extra CA given) unless `verify` is false, which the relay
//! uses for opportunistic STARTTLS to MX hosts (RFC 7435: encrypt even when it can't authenticate).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
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
