//! Opening a ready session over TCP: connect under a timeout, implicit TLS or STARTTLS per the
//! `TlsMode`, EHLO (again after TLS), and AUTH when credentials are given.

use std::net::SocketAddr;

use rustls_pki_types::CertificateDer;
use tern_proto::sasl::Credentials;
use tokio::net::TcpStream;

use crate::dane::DaneCheck;
use crate::error::{ClientError, Stage, TlsFailure};
use crate::fingerprint::CertFingerprint;
use crate::session::{Session, SessionOptions};
use crate::tls::{CertCheck, TlsMode, TlsParams, Unverified};
use crate::transcript::Direction;

/// Everything `connect` needs besides the address.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub session: SessionOptions,
    pub tls: TlsMode,
    /// Verify the server certificate (chain and name). The relay turns this off for
    /// opportunistic STARTTLS to MX hosts (RFC 7435); `tern send` keeps it on. Under
    /// `TlsMode::Opportunistic` a certificate that does not verify leaves the session encrypted
    /// but unverified (no cleartext retry, no credentials); the other modes fail the handshake.
    pub verify_tls: bool,
    /// CA certificates trusted in addition to the webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Accept exactly the certificate with this SHA-256 fingerprint instead of verifying chain
    /// and name (`verify_tls` and `extra_roots` are then unused); a mismatch fails the
    /// handshake in every mode.
    pub pin: Option<CertFingerprint>,
    /// DANE (RFC 7672): judge the certificate by these TLSA records instead (`verify_tls`,
    /// `extra_roots` and `pin` are then unused); a mismatch fails the handshake in every mode.
    /// The caller also makes `tls` [`TlsMode::Required`]: DANE never falls back to cleartext.
    pub dane: Option<DaneCheck>,
    pub credentials: Option<Credentials>,
}

impl ConnectOptions {
    pub fn new(session: SessionOptions) -> Self {
        Self {
            session,
            tls: TlsMode::Opportunistic,
            verify_tls: true,
            extra_roots: Vec::new(),
            pin: None,
            dane: None,
            credentials: None,
        }
    }

    /// How the server certificate is judged, from `pin`, `verify_tls`, `extra_roots` and `tls`.
    pub fn cert_check(&self) -> CertCheck {
        if let Some(dane) = &self.dane {
            return CertCheck::Dane(dane.clone());
        }
        match (self.pin, self.verify_tls) {
            (Some(pin), _) => CertCheck::Pinned(pin),
            (None, false) => CertCheck::Any,
            (None, true) => CertCheck::WebPki {
                extra_roots: self.extra_roots.clone(),
                // RFC 7435 (and issue 10): opportunistic TLS never falls back to cleartext over
                // a certificate; it encrypts without authenticating instead.
                unverified: if self.tls == TlsMode::Opportunistic {
                    Unverified::Continue
                } else {
                    Unverified::Fail
                },
            },
        }
    }
}

/// A TCP connection within the connect timeout.
pub async fn connect_tcp(
    addr: SocketAddr,
    opts: &SessionOptions,
) -> Result<TcpStream, ClientError> {
    let limit = opts.timeouts.connect;
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ClientError::io(Stage::Connect, e)),
        Err(_) => Err(ClientError::Timeout {
            stage: Stage::Connect,
            after: limit,
        }),
    }
}

/// Connects to `addr` (whose host name is `server_name`, used for SNI and verification) and
/// returns a session that has greeted, negotiated TLS per `opts.tls` and authenticated.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    opts: &ConnectOptions,
) -> Result<Session<TcpStream>, ClientError> {
    let params = match opts.tls {
        TlsMode::None => None,
        _ => Some(TlsParams::new(server_name, &opts.cert_check())?),
    };
    match attempt(addr, opts, params.as_ref(), opts.tls).await {
        // RFC 7435 / RFC 3207 4.1: a failed opportunistic handshake leaves a dead connection;
        // deliver in the clear on a fresh one rather than not at all. Only a handshake that
        // could not be completed: a certificate problem (a pin mismatch; an unverified
        // certificate only stops a session that has credentials to send) never buys cleartext.
        Err(ClientError::Tls(TlsFailure::Handshake(reason)))
            if opts.tls == TlsMode::Opportunistic =>
        {
            if let Some(t) = &opts.session.transcript {
                t(
                    Direction::Client,
                    &format!("<TLS failed ({reason}); reconnecting without TLS>"),
                );
            }
            let mut session = attempt(addr, opts, None, TlsMode::None).await?;
            session.tls_fallback = Some(reason);
            Ok(session)
        }
        other => other,
    }
}

async fn attempt(
    addr: SocketAddr,
    opts: &ConnectOptions,
    params: Option<&TlsParams>,
    mode: TlsMode,
) -> Result<Session<TcpStream>, ClientError> {
    let tcp = connect_tcp(addr, &opts.session).await?;
    let local = tcp.local_addr().ok();
    let mut session = Session::new(tcp, opts.session.clone());
    session.set_local_addr(local);
    if let (TlsMode::Implicit, Some(p)) = (mode, params) {
        session.tls_handshake(p).await?;
    }
    session.banner().await?;
    let offers_tls = session.ehlo().await?.starttls;
    if matches!(mode, TlsMode::Opportunistic | TlsMode::Required) {
        match (offers_tls, params) {
            (true, Some(p)) => match session.starttls(p).await.map(|_| ()) {
                Ok(()) => {}
                // A refused STARTTLS leaves the plain session usable (opportunistic only).
                Err(ClientError::Rejected { .. })
                    if mode == TlsMode::Opportunistic && session.is_usable() => {}
                Err(e) => return Err(e),
            },
            _ if mode == TlsMode::Required => return Err(ClientError::TlsUnavailable),
            _ => {}
        }
    }
    if let Some(creds) = &opts.credentials {
        session.auth(creds).await?;
    }
    Ok(session)
}

/// RFC 5321 5.1: tries `targets` (address, host name) in order until one completes banner,
/// EHLO, STARTTLS and AUTH; a host that cannot be reached or greets with an error is skipped
/// for the next. Returns the session and the index of the target it reached, or every target's
/// error in order (empty when there was no target), for the caller to judge
/// (the relay and `tern send` share that rule too: `tern_relay::status::connect_failure`).
pub async fn connect_first(
    targets: &[(SocketAddr, &str)],
    opts: &ConnectOptions,
) -> Result<(Session<TcpStream>, usize), Vec<(usize, ClientError)>> {
    let mut errors = Vec::new();
    for (i, &(addr, name)) in targets.iter().enumerate() {
        match connect(addr, name, opts).await {
            Ok(session) => return Ok((session, i)),
            Err(e) => errors.push((i, e)),
        }
    }
    Err(errors)
}
