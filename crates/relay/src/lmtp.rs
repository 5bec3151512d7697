//! Delivery of queued local recipients to an LMTP server (RFC 2033), e.g. Dovecot's `lmtp`,
//! under `[local] delivery = "lmtp"`: the connector hands a [`crate::route::DestinationKind::Lmtp`]
//! group here. One connection per attempt (a Unix socket or TCP), banner, LHLO, one
//! transaction with a reply per recipient after the final dot (RFC 2033 4.2), QUIT. No pool:
//! the server is local and a connection costs next to nothing; no STARTTLS or AUTH: the server
//! is this host's own mailbox store (RFC 2033 says LMTP must not be used over wide-area
//! networks).
//!
//! A server that cannot be reached defers every recipient of the group with
//! [`status::lmtp_unreachable`]; the queue keeps them and the usual retry schedule applies.

use std::net::IpAddr;

use tern_client::{Envelope as ClientEnvelope, Session, SessionOptions};
use tern_config::{Config, LmtpAddress};
use tern_queue::{RcptOutcome, TlsOutcome};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::message::QueuedMessage;
use crate::status::{self, Peer};

/// What an attempt gives the connector: the target it talked to (as the attempt's host), how
/// it was protected (always cleartext), whether the server offered DSN, and one outcome per
/// recipient of `envelope`; or, when no session came about, the one outcome for all of them.
pub(crate) type Attempt =
    Result<(String, TlsOutcome, bool, Vec<RcptOutcome>), (Option<String>, RcptOutcome)>;

/// Connects to `target` and delivers `message` to the recipients of `envelope`.
pub(crate) async fn attempt(
    cfg: &Config,
    target: &LmtpAddress,
    envelope: &ClientEnvelope,
    message: &QueuedMessage,
) -> Attempt {
    let shown = target.to_string();
    let opts = options(cfg);
    let limit = opts.timeouts.connect;
    let unreachable = |error: String| {
        tracing::info!(lmtp = %shown, error = %error, "relay: cannot connect to the LMTP server");
        Err((
            Some(shown.clone()),
            RcptOutcome::deferred(status::lmtp_unreachable(&shown, &error)),
        ))
    };
    let timed_out = || format!("no connection within {}", humantime::format_duration(limit));
    match target {
        LmtpAddress::Unix(path) => {
            match tokio::time::timeout(limit, UnixStream::connect(path)).await {
                Ok(Ok(stream)) => {
                    run(
                        cfg,
                        Session::new(stream, opts),
                        &shown,
                        None,
                        envelope,
                        message,
                    )
                    .await
                }
                Ok(Err(e)) => unreachable(e.to_string()),
                Err(_) => unreachable(timed_out()),
            }
        }
        LmtpAddress::Inet(addr) => {
            match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let local = stream.local_addr().ok();
                    let mut session = Session::new(stream, opts);
                    session.set_local_addr(local);
                    run(cfg, session, &shown, Some(addr.ip()), envelope, message).await
                }
                Ok(Err(e)) => unreachable(e.to_string()),
                Err(_) => unreachable(timed_out()),
            }
        }
    }
}

/// The session: banner, LHLO, the transaction, QUIT.
async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    cfg: &Config,
    mut session: Session<S>,
    shown: &str,
    addr: Option<IpAddr>,
    envelope: &ClientEnvelope,
    message: &QueuedMessage,
) -> Attempt {
    // The server is this host's mailbox store: a remote reply is quoted as coming from our own
    // name (a bounce's `Remote-MTA: dns; <hostname>`, RFC 3464 2.3.5 wants a host name there,
    // not a socket path); the attempt's host, in the log and `tern queue show`, is the target.
    let peer = Peer {
        name: &cfg.hostname,
        addr,
    };
    let setup = async {
        session.banner().await?;
        session.ehlo().await.map(|caps| caps.dsn)
    };
    let dsn = match setup.await {
        Ok(dsn) => dsn,
        Err(e) => {
            tracing::info!(lmtp = %shown, error = %e, "relay: LMTP session failed");
            return Err((Some(shown.to_string()), status::session_failure(peer, e)));
        }
    };
    // RFC 8689 (REQUIRETLS) governs relaying between MTAs; the handoff to the local mailbox
    // store is final delivery, on this host, where there is no TLS to require.
    let envelope = ClientEnvelope {
        requiretls: false,
        ..envelope.clone()
    };
    // RFC 2033 4.2: one reply per accepted recipient; tern_client maps each to its outcome.
    let delivery = session
        .send_message_from(&envelope, message.traits, &mut message.body())
        .await;
    let outcomes = delivery
        .per_recipient
        .into_iter()
        .map(|(_, outcome)| status::rcpt_outcome(peer, outcome))
        .collect();
    if session.is_usable() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), session.quit()).await;
        });
    }
    Ok((shown.to_string(), TlsOutcome::Cleartext, dsn, outcomes))
}

/// The outbound timeouts, in LMTP mode (LHLO instead of EHLO, RFC 2033 4.1).
fn options(cfg: &Config) -> SessionOptions {
    let mut session = SessionOptions::new(cfg.outbound.helo_name.clone());
    session.lmtp = true;
    session.timeouts = crate::connector::outbound_timeouts(cfg);
    session
}
