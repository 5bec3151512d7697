//! One SMTP connection: reading replies under a deadline, writing commands, banner, EHLO with
//! HELO fallback, STARTTLS, AUTH, RSET and QUIT. The mail transaction itself is in transaction.rs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tern_proto::sasl::{encode_base64, encode_plain, Credentials};
use tern_proto::{Capabilities, Command, Reply, ReplyParser};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::error::{ClientError, Stage, TlsFailure};
use crate::rate::MinDataRate;
use crate::stream::MaybeTls;
use crate::timeouts::Timeouts;
use crate::tls::{handshake_failure, CertStatus, TlsParams};
use crate::transcript::{Direction, TranscriptHook};

/// The name a session gives in EHLO/HELO (RFC 5321 4.1.1.1: a FQDN, or an address literal
/// when the host has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeloName {
    /// This name, as given.
    Name(String),
    /// The address literal of the connection's local end (`[192.0.2.1]`, `[IPv6:2001:db8::1]`,
    /// RFC 5321 4.1.3), known once connected.
    LocalAddress,
}

impl HeloName {
    /// The text to send; `local` is the connection's local address, if known (a session over
    /// something other than TCP has none and says `[127.0.0.1]`).
    pub fn text(&self, local: Option<SocketAddr>) -> String {
        match self {
            HeloName::Name(name) => name.clone(),
            HeloName::LocalAddress => {
                address_literal(local.map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip()))
            }
        }
    }
}

impl From<String> for HeloName {
    fn from(name: String) -> Self {
        HeloName::Name(name)
    }
}

impl From<&str> for HeloName {
    fn from(name: &str) -> Self {
        HeloName::Name(name.to_string())
    }
}

/// RFC 5321 4.1.3: `[192.0.2.1]`, `[IPv6:2001:db8::1]`; an IPv4-mapped IPv6 address is written
/// as the IPv4 address it is.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

/// Which connections may carry credentials. RFC 4954 4 leaves it to the client to require a
/// protected channel for AUTH; RFC 8314 4.1 and RFC 7817 3 want the server certificate
/// verified before a password is sent, since encryption alone does not say who is listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthChannel {
    /// TLS whose certificate verified (chain and name, or the pinned fingerprint).
    #[default]
    VerifiedTls,
    /// Any connection, cleartext included (an explicit opt-in: `--allow-plaintext-auth`).
    Any,
}

/// What every session needs to know, independent of the server.
#[derive(Clone)]
pub struct SessionOptions {
    /// Our name in EHLO/HELO.
    pub helo_name: HeloName,
    pub timeouts: Timeouts,
    /// Where credentials may go (default: only over verified TLS).
    pub auth_channel: AuthChannel,
    pub transcript: Option<TranscriptHook>,
    /// The slowest the server may take a message body; `None`: only the per-write
    /// `timeouts.data_block` applies.
    pub min_data_rate: Option<MinDataRate>,
    /// Speak LMTP (RFC 2033) instead of SMTP: [`Session::ehlo`] sends LHLO (no HELO
    /// fallback), and the final dot of a transaction gets one reply per accepted recipient.
    pub lmtp: bool,
}

impl SessionOptions {
    pub fn new(helo_name: impl Into<HeloName>) -> Self {
        Self {
            helo_name: helo_name.into(),
            timeouts: Timeouts::default(),
            auth_channel: AuthChannel::default(),
            transcript: None,
            min_data_rate: None,
            lmtp: false,
        }
    }
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("helo_name", &self.helo_name)
            .field("timeouts", &self.timeouts)
            .field("auth_channel", &self.auth_channel)
            .field("min_data_rate", &self.min_data_rate)
            .field("lmtp", &self.lmtp)
            .finish_non_exhaustive()
    }
}

/// The transcript's note on a completed handshake: what was negotiated and what is known about
/// the certificate (`-v` shows whether the password, if any, may follow).
fn tls_note(t: &NegotiatedTls) -> String {
    let cert = match &t.certificate {
        CertStatus::Verified => "certificate verified".to_string(),
        CertStatus::Pinned => "certificate matches the pinned fingerprint".to_string(),
        CertStatus::Dane => "certificate matches the host's TLSA records (DANE)".to_string(),
        CertStatus::Unverified(reason) => format!(
            "certificate NOT verified ({reason}); continuing encrypted but unauthenticated (RFC 7435)"
        ),
        CertStatus::NotChecked => "certificate not checked".to_string(),
    };
    format!("<TLS {} {}: {cert}>", t.version, t.cipher)
}

/// How much one read asks the stream for.
const READ_SIZE: usize = 16 * 1024;

/// The most octets a session ever holds that are not yet a complete reply: the parser refuses an
/// unterminated line past its 4 KiB line limit, so at most one read more than that is buffered
/// (the lines of one multi-line reply are capped apart, at `tern_proto::reply::MAX_REPLY_TOTAL`).
pub const MAX_BUFFERED_REPLY_BYTES: usize = 4096 + READ_SIZE;

/// Called as the message body is written: (bytes of the message sent, total bytes).
pub type ProgressHook = Box<dyn FnMut(u64, u64) + Send>;

pub struct Session<S> {
    pub(crate) stream: MaybeTls<S>,
    parser: ReplyParser,
    pub(crate) opts: SessionOptions,
    /// None until EHLO/HELO succeeded; HELO leaves the default (no extensions).
    caps: Option<Capabilities>,
    esmtp: bool,
    /// Set after an I/O error, a timeout, garbage or a 421: nothing more may be sent.
    pub(crate) broken: bool,
    pub(crate) progress: Option<ProgressHook>,
    /// The connection's local address, for [`HeloName::LocalAddress`].
    local_addr: Option<SocketAddr>,
    buf: Vec<u8>,
    /// What the TLS handshake negotiated; None while the session is in the clear.
    tls: Option<NegotiatedTls>,
    /// Why TLS was given up for this session (set by [`crate::connect`]).
    pub(crate) tls_fallback: Option<String>,
}

/// What a session's TLS handshake negotiated (RFC 8446 / 5246 names as rustls spells them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedTls {
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// `TLS13_AES_256_GCM_SHA384`, ...
    pub cipher: String,
    /// The server certificate was verified or matched the pin: `certificate.is_verified()`
    /// (false under opportunistic TLS, RFC 7435, when it did not verify or was not checked).
    pub verified: bool,
    /// What is known about the server certificate, and why it does not count as verified.
    pub certificate: CertStatus,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(stream: S, opts: SessionOptions) -> Self {
        Self {
            stream: MaybeTls::Plain(stream),
            parser: ReplyParser::new(),
            opts,
            caps: None,
            esmtp: false,
            broken: false,
            progress: None,
            local_addr: None,
            buf: vec![0; READ_SIZE],
            tls: None,
            tls_fallback: None,
        }
    }

    /// Tells the session its local address (for an address-literal EHLO name).
    pub fn set_local_addr(&mut self, addr: Option<SocketAddr>) {
        self.local_addr = addr;
    }

    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }

    /// Capabilities from the last EHLO (the empty set after a HELO fallback), None before.
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.as_ref()
    }

    /// True when the server answered EHLO (false after the HELO fallback).
    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// What TLS negotiated on this connection; `None`: cleartext.
    pub fn tls(&self) -> Option<&NegotiatedTls> {
        self.tls.as_ref().filter(|_| self.stream.is_tls())
    }

    /// The handshake error of a failed opportunistic STARTTLS, when this session is the
    /// cleartext retry that followed it (RFC 7435: deliver in the clear rather than not at all).
    pub fn tls_fallback(&self) -> Option<&str> {
        self.tls_fallback.as_deref()
    }

    /// Octets received from the server and not yet consumed as a reply; never more than
    /// [`MAX_BUFFERED_REPLY_BYTES`] (the fuzz target `client_reply` checks it).
    pub fn buffered_reply_bytes(&self) -> usize {
        self.parser.buffered()
    }

    /// False once the connection can carry no more commands (error, timeout, 421).
    pub fn is_usable(&self) -> bool {
        !self.broken && !matches!(self.stream, MaybeTls::Gone)
    }

    /// Installs a callback for message-transfer progress (for a progress bar).
    pub fn set_progress(&mut self, hook: Option<ProgressHook>) {
        self.progress = hook;
    }

    pub(crate) fn log(&self, dir: Direction, line: &str) {
        if let Some(t) = &self.opts.transcript {
            t(dir, line);
        }
    }

    fn log_reply(&self, reply: &Reply) {
        if self.opts.transcript.is_none() {
            return;
        }
        let bytes = reply.to_bytes();
        for line in String::from_utf8_lossy(&bytes).split("\r\n") {
            if !line.is_empty() {
                self.log(Direction::Server, line);
            }
        }
    }

    /// Reads one complete reply; the whole reply must arrive within `limit`.
    pub async fn read_reply(
        &mut self,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        if !self.is_usable() {
            return Err(ClientError::Unusable);
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => {
                    self.log_reply(&reply);
                    // RFC 5321 3.8: 421 means the server is closing the channel.
                    if reply.code() == 421 {
                        self.broken = true;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(error) => {
                    self.broken = true;
                    return Err(ClientError::Protocol { stage, error });
                }
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await;
            let n = match read {
                Err(_) => {
                    self.broken = true;
                    return Err(ClientError::Timeout {
                        stage,
                        after: limit,
                    });
                }
                Ok(Err(e)) => {
                    self.broken = true;
                    return Err(ClientError::io(stage, e));
                }
                Ok(Ok(0)) => {
                    self.broken = true;
                    return Err(ClientError::Closed { stage });
                }
                Ok(Ok(n)) => n,
            };
            if let Err(error) = self.parser.push(&self.buf[..n]) {
                self.broken = true;
                return Err(ClientError::Protocol { stage, error });
            }
        }
    }

    /// Writes and flushes `bytes` within `limit`.
    pub(crate) async fn write_raw(
        &mut self,
        stage: Stage,
        bytes: &[u8],
        limit: Duration,
    ) -> Result<(), ClientError> {
        if !self.is_usable() {
            return Err(ClientError::Unusable);
        }
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(ClientError::io(stage, e))
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout {
                    stage,
                    after: limit,
                })
            }
        }
    }

    /// Sends one command line (logged as is) and reads its reply.
    pub async fn command(
        &mut self,
        stage: Stage,
        cmd: &Command,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        self.log(Direction::Client, &cmd.to_string());
        self.write_raw(stage, &cmd.to_line(), limit).await?;
        self.read_reply(stage, limit).await
    }

    /// Reads the greeting. RFC 5321 3.1: on a 554 greeting the client should send QUIT.
    pub async fn banner(&mut self) -> Result<Reply, ClientError> {
        let reply = self
            .read_reply(Stage::Banner, self.opts.timeouts.banner)
            .await?;
        if reply.code() == 220 {
            return Ok(reply);
        }
        if self.is_usable() {
            let _ = self.quit_inner().await;
        }
        Err(ClientError::Rejected {
            stage: Stage::Banner,
            reply,
        })
    }

    /// EHLO, falling back to HELO when the server refuses EHLO with a 5xx (RFC 5321 4.1.4:
    /// a server that doesn't know EHLO answers 500/502).
    pub async fn ehlo(&mut self) -> Result<&Capabilities, ClientError> {
        let name = self.opts.helo_name.text(self.local_addr);
        let t = self.opts.timeouts.ehlo;
        if self.opts.lmtp {
            return self.lhlo(&name, t).await;
        }
        let reply = self
            .command(Stage::Ehlo, &Command::Ehlo(name.clone()), t)
            .await?;
        if reply.is_positive() {
            self.esmtp = true;
            return Ok(self.caps.insert(Capabilities::from_ehlo_reply(&reply)));
        }
        if reply.code() < 500 {
            return Err(ClientError::Rejected {
                stage: Stage::Ehlo,
                reply,
            });
        }
        let reply = self.command(Stage::Helo, &Command::Helo(name), t).await?;
        if !reply.is_positive() {
            return Err(ClientError::Rejected {
                stage: Stage::Helo,
                reply,
            });
        }
        self.esmtp = false;
        let caps = Capabilities {
            greeting: reply.lines().first().cloned().unwrap_or_default(),
            ..Capabilities::default()
        };
        Ok(self.caps.insert(caps))
    }

    /// RFC 2033 4.1: LHLO replaces EHLO and its reply has the EHLO reply's form (the
    /// extensions the server offers, PIPELINING among them). There is no HELO in LMTP, so a
    /// refusal ends the session. Written as a raw line: LHLO is no SMTP command.
    async fn lhlo(&mut self, name: &str, t: Duration) -> Result<&Capabilities, ClientError> {
        let line = format!("LHLO {name}");
        self.log(Direction::Client, &line);
        self.write_raw(Stage::Ehlo, format!("{line}\r\n").as_bytes(), t)
            .await?;
        let reply = self.read_reply(Stage::Ehlo, t).await?;
        if !reply.is_positive() {
            return Err(ClientError::Rejected {
                stage: Stage::Ehlo,
                reply,
            });
        }
        self.esmtp = true;
        Ok(self.caps.insert(Capabilities::from_ehlo_reply(&reply)))
    }

    /// TLS handshake on the current plain stream, without any SMTP command (implicit TLS).
    pub async fn tls_handshake(&mut self, params: &TlsParams) -> Result<(), ClientError> {
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.stream, MaybeTls::Gone) else {
            return Err(ClientError::Tls("connection is already encrypted".into()));
        };
        let connector = TlsConnector::from(params.config.clone());
        let handshake = connector.connect(params.server_name.clone(), plain);
        match tokio::time::timeout(self.opts.timeouts.connect, handshake).await {
            Ok(Ok(tls)) => {
                let conn = tls.get_ref().1;
                let certificate = params.judge(conn.peer_certificates());
                let negotiated = NegotiatedTls {
                    version: conn
                        .protocol_version()
                        .map_or_else(|| "unknown".to_string(), |v| format!("{v:?}")),
                    cipher: conn
                        .negotiated_cipher_suite()
                        .map_or_else(|| "unknown".to_string(), |c| format!("{:?}", c.suite())),
                    verified: certificate.is_verified(),
                    certificate,
                };
                self.log(Direction::Client, &tls_note(&negotiated));
                self.tls = Some(negotiated);
                self.stream = MaybeTls::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => {
                self.broken = true;
                Err(ClientError::Tls(handshake_failure(&e)))
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout {
                    stage: Stage::Tls,
                    after: self.opts.timeouts.connect,
                })
            }
        }
    }

    /// STARTTLS (RFC 3207), the handshake, and the EHLO that must follow it (RFC 3207 4.2:
    /// the client must discard what it knew and ask again).
    pub async fn starttls(&mut self, params: &TlsParams) -> Result<&Capabilities, ClientError> {
        let reply = self
            .command(
                Stage::StartTls,
                &Command::StartTls,
                self.opts.timeouts.command,
            )
            .await?;
        if reply.code() != 220 {
            return Err(ClientError::Rejected {
                stage: Stage::StartTls,
                reply,
            });
        }
        // CVE-2011-0411 (STARTTLS command injection): bytes the server sent after its 220 and
        // before the handshake would be read as if they came over TLS. Refuse them.
        if self.parser.buffered() > 0 {
            self.broken = true;
            return Err(ClientError::Tls(
                "server sent data after its STARTTLS reply (possible injection)".into(),
            ));
        }
        self.tls_handshake(params).await?;
        self.caps = None;
        self.ehlo().await
    }

    /// AUTH PLAIN (preferred) or LOGIN, whichever the server offers (RFC 4954, RFC 4616).
    pub async fn auth(&mut self, creds: &Credentials) -> Result<Reply, ClientError> {
        if self.opts.auth_channel == AuthChannel::VerifiedTls {
            match self.tls().map(|t| t.certificate.unverified_reason()) {
                None => return Err(ClientError::PlaintextAuth),
                Some(Some(reason)) => {
                    return Err(ClientError::Tls(TlsFailure::UnverifiedCredentials {
                        reason: reason.to_string(),
                    }))
                }
                Some(None) => {}
            }
        }
        let caps = self.caps.clone().unwrap_or_default();
        let t = self.opts.timeouts.command;
        let reply = if caps.supports_auth("PLAIN") {
            let payload = encode_plain(&creds.username, &creds.password);
            self.log(Direction::Client, "AUTH PLAIN <redacted>");
            let line = format!("AUTH PLAIN {payload}\r\n");
            self.write_raw(Stage::Auth, line.as_bytes(), t).await?;
            let reply = self.read_reply(Stage::Auth, t).await?;
            if reply.code() == 334 {
                // A server that wants the response on its own line after an empty challenge.
                self.secret_line(&payload).await?
            } else {
                reply
            }
        } else if caps.supports_auth("LOGIN") {
            self.log(Direction::Client, "AUTH LOGIN");
            self.write_raw(Stage::Auth, b"AUTH LOGIN\r\n", t).await?;
            let mut reply = self.read_reply(Stage::Auth, t).await?;
            if reply.code() == 334 {
                reply = self
                    .secret_line(&encode_base64(creds.username.as_bytes()))
                    .await?;
            }
            if reply.code() == 334 {
                reply = self
                    .secret_line(&encode_base64(creds.password.as_bytes()))
                    .await?;
            }
            reply
        } else {
            return Err(ClientError::AuthUnavailable);
        };
        if reply.code() == 235 {
            Ok(reply)
        } else {
            Err(ClientError::Rejected {
                stage: Stage::Auth,
                reply,
            })
        }
    }

    async fn secret_line(&mut self, payload: &str) -> Result<Reply, ClientError> {
        let t = self.opts.timeouts.command;
        self.log(Direction::Client, "<redacted>");
        self.write_raw(Stage::Auth, format!("{payload}\r\n").as_bytes(), t)
            .await?;
        self.read_reply(Stage::Auth, t).await
    }

    /// RSET: abandons a transaction so the connection can carry another message.
    pub async fn rset(&mut self) -> Result<Reply, ClientError> {
        let reply = self
            .command(Stage::Rset, &Command::Rset, self.opts.timeouts.command)
            .await?;
        if reply.is_positive() {
            Ok(reply)
        } else {
            Err(ClientError::Rejected {
                stage: Stage::Rset,
                reply,
            })
        }
    }

    async fn quit_inner(&mut self) -> Result<Reply, ClientError> {
        let reply = self
            .command(Stage::Quit, &Command::Quit, self.opts.timeouts.command)
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
        reply
    }

    /// QUIT and close. The reply is informative only: the mail was already accepted or not.
    pub async fn quit(mut self) -> Result<Reply, ClientError> {
        self.quit_inner().await
    }
}
