//! The async side: one milter connection, driven step by step. Every wait has a deadline
//! (the per-reply `timeout`, restarted by SMFIR_PROGRESS but never past the caller's
//! whole-message deadline), every packet is bounded ([`crate::MAX_PACKET_LEN`]), and anything
//! the milter sends that the negotiation did not allow is an error, never obeyed. What to do
//! with an error (tempfail or accept) is the caller's policy, not this module's.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::command::{Command, MacroDef, MacroStage};
use crate::negotiate::{negotiate_response, Negotiated, OptNeg, Step};
use crate::packet::PacketReader;
use crate::response::{ReplyCode, Response};
use crate::wire::NulFree;

/// Where to connect.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    Inet(SocketAddr),
    Unix(&'a Path),
}

/// Why a milter could not be asked. Each is a failure of the milter, handled by the caller's
/// `on_failure`.
#[derive(Debug, Error)]
pub enum MilterError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within the timeout ({0})")]
    Timeout(&'static str),
    #[error("the milter closed the connection ({0})")]
    Closed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A milter's answer to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Accept the message (or the connection, before MAIL): this milter is asked nothing more
    /// about it.
    Accept,
    /// Reject with the MTA's default 5xx for the step.
    Reject,
    /// Reject with the MTA's default 4xx.
    TempFail,
    /// Accept towards the client, then drop the message.
    Discard,
    /// Reject with this reply.
    Reply(ReplyCode),
    /// Send no more body chunks (SMFIR_SKIP, body steps only).
    Skip,
}

/// A change the milter asked for at the end of the message, in the order it sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    AddHeader {
        name: NulFree,
        value: NulFree,
    },
    InsertHeader {
        index: u32,
        name: NulFree,
        value: NulFree,
    },
    ChangeHeader {
        index: u32,
        name: NulFree,
        value: NulFree,
    },
    ChangeFrom {
        sender: NulFree,
        args: Option<NulFree>,
    },
    AddRcpt {
        recipient: NulFree,
        args: Option<NulFree>,
    },
    DeleteRcpt(NulFree),
    /// The new body is the concatenation of every chunk.
    ReplaceBody(Vec<u8>),
}

impl Modification {
    /// The change a response asks for; `None` for a response that is no change. A
    /// SMFIR_REPLBODY becomes a one-chunk replacement (the client joins the chunks).
    pub fn from_response(response: Response) -> Option<Self> {
        Some(match response {
            Response::AddHeader { name, value } => Modification::AddHeader { name, value },
            Response::InsertHeader { index, name, value } => {
                Modification::InsertHeader { index, name, value }
            }
            Response::ChangeHeader { index, name, value } => {
                Modification::ChangeHeader { index, name, value }
            }
            Response::ChangeFrom { sender, args } => Modification::ChangeFrom { sender, args },
            Response::AddRcpt(recipient) => Modification::AddRcpt {
                recipient,
                args: None,
            },
            Response::AddRcptPar { recipient, args } => Modification::AddRcpt {
                recipient,
                args: Some(args),
            },
            Response::DeleteRcpt(r) => Modification::DeleteRcpt(r),
            Response::ReplaceBody(chunk) => Modification::ReplaceBody(chunk),
            _ => return None,
        })
    }
}

/// The end-of-message answer: the verdict, the changes that come with it and a quarantine
/// reason if the milter asked for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfMessage {
    pub verdict: Verdict,
    pub modifications: Vec<Modification>,
    pub quarantine: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection to a milter, after the option negotiation.
pub struct MilterConn {
    stream: Box<dyn Io>,
    reader: PacketReader,
    negotiated: Negotiated,
    timeout: Duration,
    buf: Vec<u8>,
}

impl MilterConn {
    /// Connects and negotiates, each within `timeout`.
    pub async fn connect(endpoint: Endpoint<'_>, timeout: Duration) -> Result<Self, MilterError> {
        let connecting = async {
            Ok::<Box<dyn Io>, std::io::Error>(match endpoint {
                Endpoint::Inet(addr) => {
                    let s = tokio::net::TcpStream::connect(addr).await?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            })
        };
        let stream = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(MilterError::Connect(e)),
            Err(_) => return Err(MilterError::Timeout("connect")),
        };
        Self::negotiate(stream, timeout).await
    }

    /// The option negotiation on an open stream (tests use an in-memory one).
    async fn negotiate(stream: Box<dyn Io>, timeout: Duration) -> Result<Self, MilterError> {
        let offer = OptNeg::tern();
        let mut conn = Self {
            stream,
            reader: PacketReader::new(),
            negotiated: Negotiated {
                version: offer.version,
                actions: offer.actions,
                protocol: offer.protocol,
                refused_actions: Default::default(),
                refused_protocol: Default::default(),
            },
            timeout,
            buf: vec![0; 16 * 1024],
        };
        conn.send(&[Command::OptNeg(offer)]).await?;
        let answer = conn.read_response("negotiation", None).await?;
        conn.negotiated = negotiate_response(&offer, &answer)
            .map_err(|e| MilterError::Protocol(e.to_string()))?;
        Ok(conn)
    }

    /// What the negotiation settled.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Sends one step (with its macros first, when the milter takes the step) and waits for
    /// the verdict if the milter answers it. A step the milter asked not to get, or not to
    /// answer, is `Continue` at once.
    pub async fn step(
        &mut self,
        step: Step,
        macros: Option<(MacroStage, Vec<MacroDef>)>,
        command: Command,
        deadline: Option<Instant>,
    ) -> Result<Verdict, MilterError> {
        if !self.negotiated.sends(step) {
            return Ok(Verdict::Continue);
        }
        let mut out = Vec::with_capacity(2);
        if let Some((stage, macros)) = macros.filter(|(_, m)| !m.is_empty()) {
            out.push(Command::Macro { stage, macros });
        }
        out.push(command);
        self.send(&out).await?;
        if !self.negotiated.expects_reply(step) {
            return Ok(Verdict::Continue);
        }
        let name = step_name(step);
        match self.read_response(name, deadline).await? {
            Response::Continue => Ok(Verdict::Continue),
            Response::Accept => Ok(Verdict::Accept),
            Response::Reject => Ok(Verdict::Reject),
            Response::TempFail => Ok(Verdict::TempFail),
            Response::Discard => Ok(Verdict::Discard),
            Response::ReplyCode(r) => Ok(Verdict::Reply(r)),
            Response::Skip if step == Step::Body && self.negotiated.permits(&Response::Skip) => {
                Ok(Verdict::Skip)
            }
            other => Err(MilterError::Protocol(format!(
                "{} in answer to {name}",
                other.name()
            ))),
        }
    }

    /// Sends SMFIC_BODYEOB (with the end-of-message macros) and collects the modifications
    /// up to the final verdict. A modification the negotiation did not allow is an error: the
    /// caller must then drop every modification of this milter, never apply half of them.
    pub async fn end_of_message(
        &mut self,
        macros: Option<Vec<MacroDef>>,
        deadline: Instant,
        max_body: u64,
    ) -> Result<EndOfMessage, MilterError> {
        let mut out = Vec::with_capacity(2);
        if let Some(macros) = macros {
            out.push(Command::Macro {
                stage: MacroStage::EndOfMessage,
                macros,
            });
        }
        out.push(Command::EndOfMessage);
        self.send(&out).await?;
        let mut modifications = Vec::new();
        let mut quarantine = None;
        let mut replaced: Option<Vec<u8>> = None;
        // Everything a milter sends here is kept until its verdict: bounded like a message.
        let mut kept: u64 = 0;
        loop {
            let response = self.read_response("end of message", Some(deadline)).await?;
            kept += response_size(&response);
            if kept > max_body.saturating_add(MAX_HEADER_CHANGES_BYTES) {
                return Err(MilterError::Protocol(format!(
                    "changes larger than the {max_body}-byte message size limit"
                )));
            }
            if !self.negotiated.permits(&response) {
                return Err(MilterError::Protocol(format!(
                    "{} without the negotiated action",
                    response.name()
                )));
            }
            let verdict = match response {
                Response::Continue | Response::Accept => Verdict::Accept,
                Response::Reject => Verdict::Reject,
                Response::TempFail => Verdict::TempFail,
                Response::Discard => Verdict::Discard,
                Response::ReplyCode(r) => Verdict::Reply(r),
                Response::Quarantine(reason) => {
                    quarantine = Some(reason.to_string_lossy());
                    continue;
                }
                Response::ReplaceBody(chunk) => {
                    let body = replaced.get_or_insert_with(Vec::new);
                    // The new body counts against the message size limit like the old one.
                    if (body.len() + chunk.len()) as u64 > max_body {
                        return Err(MilterError::Protocol(format!(
                            "replacement body larger than the {max_body}-byte message size limit"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                    continue;
                }
                other => {
                    let name = other.name();
                    match Modification::from_response(other) {
                        Some(m) => {
                            modifications.push(m);
                            continue;
                        }
                        None => {
                            return Err(MilterError::Protocol(format!(
                                "{name} in answer to end of message"
                            )))
                        }
                    }
                }
            };
            if let Some(body) = replaced {
                modifications.push(Modification::ReplaceBody(body));
            }
            return Ok(EndOfMessage {
                verdict,
                modifications,
                quarantine,
            });
        }
    }

    /// SMFIC_ABORT: the transaction is over; the connection stays for the next one. No reply.
    pub async fn abort(&mut self) -> Result<(), MilterError> {
        self.send(&[Command::Abort]).await
    }

    /// SMFIC_QUIT and close (best effort: the milter may be gone already).
    pub async fn quit(mut self) {
        let _ = self.send(&[Command::Quit]).await;
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }

    /// The reply deadline: `timeout` from now, but never past the caller's.
    fn deadline(&self, outer: Option<Instant>) -> Instant {
        let step = Instant::now() + self.timeout;
        outer.map_or(step, |d| d.min(step))
    }

    async fn send(&mut self, commands: &[Command]) -> Result<(), MilterError> {
        let mut bytes = Vec::new();
        for c in commands {
            c.to_packet()
                .write_to(&mut bytes)
                .map_err(|e| MilterError::Protocol(e.to_string()))?;
        }
        let write = async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(MilterError::Timeout("write")),
        }
    }

    /// The next response other than SMFIR_PROGRESS, which restarts the per-reply timeout (but
    /// never past `outer`, the whole message's deadline).
    async fn read_response(
        &mut self,
        what: &'static str,
        outer: Option<Instant>,
    ) -> Result<Response, MilterError> {
        let mut deadline = self.deadline(outer);
        loop {
            if let Some(packet) = self.reader.next_packet() {
                let response =
                    Response::decode(&packet).map_err(|e| MilterError::Protocol(e.to_string()))?;
                if response == Response::Progress {
                    deadline = self.deadline(outer);
                    continue;
                }
                return Ok(response);
            }
            if let Some(e) = self.reader.error() {
                return Err(MilterError::Protocol(e.to_string()));
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await {
                Ok(Ok(0)) => return Err(MilterError::Closed(what)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(MilterError::Io(e)),
                Err(_) => return Err(MilterError::Timeout(what)),
            };
            self.reader
                .push(&self.buf[..n])
                .map_err(|e| MilterError::Protocol(e.to_string()))?;
        }
    }
}

/// Room for header changes on top of a replacement body the size of the message limit.
const MAX_HEADER_CHANGES_BYTES: u64 = 1 << 20;

/// The octets a response makes tern keep (its payload, roughly).
fn response_size(response: &Response) -> u64 {
    let n = match response {
        Response::ReplaceBody(b) => b.len(),
        Response::AddHeader { name, value }
        | Response::InsertHeader { name, value, .. }
        | Response::ChangeHeader { name, value, .. } => {
            name.as_bytes().len() + value.as_bytes().len()
        }
        Response::ChangeFrom { sender, args } => {
            sender.as_bytes().len() + args.as_ref().map_or(0, |a| a.as_bytes().len())
        }
        Response::AddRcpt(r) | Response::DeleteRcpt(r) | Response::Quarantine(r) => {
            r.as_bytes().len()
        }
        Response::AddRcptPar { recipient, args } => {
            recipient.as_bytes().len() + args.as_bytes().len()
        }
        _ => 0,
    };
    // Each packet costs its bookkeeping too, so a flood of empty ones is bounded as well.
    n as u64 + 16
}

/// The step's name in errors and logs.
pub fn step_name(step: Step) -> &'static str {
    match step {
        Step::Connect => "connect",
        Step::Helo => "helo",
        Step::Mail => "mail",
        Step::Rcpt => "rcpt",
        Step::Data => "data",
        Step::Header => "header",
        Step::EndOfHeaders => "end of headers",
        Step::Body => "body",
        Step::Unknown => "unknown",
        Step::EndOfMessage => "end of message",
    }
}

#[cfg(test)]
mod tests;
