//! Server-side TLS (rustls): the certificate pair from `[tls]`, swapped atomically on reload
//! so sessions already running keep the config they started with.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::stream::BoxStream;

pub struct TlsProvider {
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsProvider {
    pub fn load(cert: &Path, key: &Path) -> io::Result<TlsProvider> {
        Ok(TlsProvider {
            config: RwLock::new(Arc::new(load_config(cert, key)?)),
        })
    }

    /// Re-reads the files (SIGHUP); on error the previous certificate stays in use.
    pub fn reload(&self, cert: &Path, key: &Path) -> io::Result<()> {
        let fresh = Arc::new(load_config(cert, key)?);
        match self.config.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        match self.config.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Runs the handshake within `timeout`; returns the TLS stream and e.g. "TLSv1.3 TLS13_AES_128_GCM_SHA256".
    pub async fn accept(
        &self,
        stream: BoxStream,
        timeout: Duration,
    ) -> io::Result<(BoxStream, String)> {
        let acceptor = TlsAcceptor::from(self.current());
        let tls = tokio::time::timeout(timeout, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, conn) = tls.get_ref();
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace('_', ".");
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        Ok((Box::new(tls), format!("{version} {cipher}")))
    }
}

fn load_config(cert: &Path, key: &Path) -> io::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::other(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| io::Error::other(format!("{}: {e}", key.display())))?;
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::other(format!("TLS certificate/key: {e}")))
}
