//! The certificate policy on real rustls handshakes over an in-memory duplex: a pin that matches
//! or not, a certificate that does not verify under `Unverified::Continue` / `Fail`, and AUTH
//! refused before a byte of it is sent when the certificate did not verify.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tern_proto::sasl::Credentials;
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::error::{ClientError, TlsFailure};
use crate::fingerprint::CertFingerprint;
use crate::session::{AuthChannel, Session, SessionOptions};
use crate::tls::{CertCheck, CertStatus, TlsParams, Unverified};

/// A self-signed certificate for `mx.test` (not a CA: webpki accepts it as its own anchor).
fn server_cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mx.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), der)
}

/// What the server received over TLS until the client closed (or the handshake error).
type Recorded = JoinHandle<Result<Vec<u8>, String>>;

/// A TLS server on the other end of a duplex: handshakes, then returns every byte the client
/// sent over TLS until it closed.
fn tls_server(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> (DuplexStream, Recorded) {
    let (io, _accepted, server) = tls_server_signalling(cert, key);
    (io, server)
}

/// [`tls_server`], also saying when its side of the handshake is done (a client that closes
/// earlier makes the server's handshake fail on its session ticket write).
fn tls_server_signalling(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> (DuplexStream, oneshot::Receiver<()>, Recorded) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let (client, server) = tokio::io::duplex(1 << 16);
    let (accepted_tx, accepted) = oneshot::channel();
    let handle = tokio::spawn(async move {
        let mut tls = TlsAcceptor::from(Arc::new(config))
            .accept(server)
            .await
            .map_err(|e| e.to_string())?;
        let _ = accepted_tx.send(());
        let mut got = Vec::new();
        // EOF or a reset both end the recording.
        let _ = tls.read_to_end(&mut got).await;
        Ok(got)
    });
    (client, accepted, handle)
}

fn webpki(extra_roots: Vec<CertificateDer<'static>>, unverified: Unverified) -> CertCheck {
    CertCheck::WebPki {
        extra_roots,
        unverified,
    }
}

/// A handshake with a fresh `mx.test` server under `check`: the session (or the error), the
/// server certificate's fingerprint, and what the server received.
async fn handshake(
    check: CertCheck,
) -> (
    Result<Session<DuplexStream>, ClientError>,
    CertFingerprint,
    Recorded,
) {
    let (cert, key) = server_cert();
    let fp = CertFingerprint::of(cert.as_ref());
    let (io, server) = tls_server(cert, key);
    let params = TlsParams::new("mx.test", &check).unwrap();
    let mut s = Session::new(io, SessionOptions::new("client.test"));
    let r = s.tls_handshake(&params).await.map(|()| s);
    (r, fp, server)
}

#[tokio::test]
async fn a_matching_pin_counts_as_verified() {
    let (cert, key) = server_cert();
    let pin = CertFingerprint::of(cert.as_ref());
    let (io, _server) = tls_server(cert, key);
    let params = TlsParams::new("other-name.test", &CertCheck::Pinned(pin)).unwrap();
    let mut s = Session::new(io, SessionOptions::new("client.test"));
    s.tls_handshake(&params).await.unwrap();
    let t = s.tls().unwrap();
    // Name and chain are not checked (the name differs, the issuer is unknown): the pin is all.
    assert_eq!(t.certificate, CertStatus::Pinned);
    assert!(t.verified);
}

#[tokio::test]
async fn a_wrong_pin_fails_naming_both_fingerprints() {
    let wrong = CertFingerprint::of(b"some other certificate");
    let (r, seen, _server) = handshake(CertCheck::Pinned(wrong)).await;
    let Err(e) = r else {
        panic!("a wrong pin was accepted")
    };
    assert!(
        matches!(
            &e,
            ClientError::Tls(TlsFailure::FingerprintMismatch { expected, seen: s })
                if *expected == wrong && *s == seen
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&wrong.to_string()) && text.contains(&seen.to_string()),
        "{text}"
    );
    assert!(e.is_temporary());
}

#[tokio::test]
async fn continue_keeps_an_unverified_session_encrypted_and_says_why() {
    let (r, _, _server) = handshake(webpki(vec![], Unverified::Continue)).await;
    let s = r.unwrap();
    let t = s.tls().unwrap();
    assert!(!t.verified);
    match &t.certificate {
        CertStatus::Unverified(reason) => assert!(reason.contains("UnknownIssuer"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn continue_with_the_ca_verifies() {
    let (cert, key) = server_cert();
    let (io, _server) = tls_server(cert.clone(), key);
    let params = TlsParams::new("mx.test", &webpki(vec![cert], Unverified::Continue)).unwrap();
    let mut s = Session::new(io, SessionOptions::new("client.test"));
    s.tls_handshake(&params).await.unwrap();
    assert_eq!(s.tls().unwrap().certificate, CertStatus::Verified);
}

#[tokio::test]
async fn fail_refuses_an_unverified_certificate_in_the_handshake() {
    let (r, _, _server) = handshake(webpki(vec![], Unverified::Fail)).await;
    match r {
        Err(ClientError::Tls(TlsFailure::Certificate(reason))) => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("an unverified certificate passed"),
    }
}

#[tokio::test]
async fn no_auth_over_an_unverified_certificate() {
    let (cert, key) = server_cert();
    let (io, accepted, server) = tls_server_signalling(cert, key);
    let params = TlsParams::new("mx.test", &webpki(vec![], Unverified::Continue)).unwrap();
    let mut s = Session::new(io, SessionOptions::new("client.test"));
    s.tls_handshake(&params).await.unwrap();
    accepted.await.unwrap();
    let creds = Credentials {
        authzid: None,
        username: "user".into(),
        password: "s3cret".into(),
    };
    let e = s.auth(&creds).await.unwrap_err();
    match &e {
        ClientError::Tls(TlsFailure::UnverifiedCredentials { reason }) => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    let sent = server.await.unwrap().unwrap();
    assert!(sent.is_empty(), "the client sent {sent:?}");

    // The explicit opt-in lets it through.
    let (r, _, _server) = handshake(webpki(vec![], Unverified::Continue)).await;
    let mut s = r.unwrap();
    s.opts.auth_channel = AuthChannel::Any;
    let e = s.auth(&creds).await.unwrap_err();
    // No EHLO was done, so no mechanism is known: the gate was passed.
    assert!(matches!(e, ClientError::AuthUnavailable), "{e:?}");
}
