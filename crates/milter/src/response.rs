//! What the milter answers (SMFIR_* responses and the OPTNEG reply), typed, decoded with
//! validation, and encodable (for round trips and test milters). A milter is a peer tern does
//! not control: every malformed packet is a typed error, never a panic.

use thiserror::Error;

use tern_proto::EnhancedCode;

use crate::command::{code::OPTNEG, MacroStage};
use crate::negotiate::{Actions, OptNeg, ProtocolFlags};
use crate::packet::{Packet, MILTER_CHUNK_SIZE};
use crate::wire::{Cursor, FieldError, NulFree};

/// Response octets (libmilter `mfdef.h`).
pub mod code {
    pub const ADDRCPT: u8 = b'+';
    pub const DELRCPT: u8 = b'-';
    pub const ADDRCPT_PAR: u8 = b'2';
    pub const ACCEPT: u8 = b'a';
    pub const REPLBODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CHGFROM: u8 = b'e';
    pub const ADDHEADER: u8 = b'h';
    pub const INSHEADER: u8 = b'i';
    pub const SETSYMLIST: u8 = b'l';
    pub const CHGHEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const QUARANTINE: u8 = b'q';
    pub const REJECT: u8 = b'r';
    pub const SKIP: u8 = b's';
    pub const TEMPFAIL: u8 = b't';
    pub const REPLYCODE: u8 = b'y';
}

/// A validated SMFIR_REPLYCODE: a 4xx or 5xx code, an optional enhanced status code of the
/// same class (RFC 3463 2), and one line of text without CR or LF (smfi_setreply's format,
/// "550 5.7.1 text"; multi-line replies from smfi_setmlreply are refused for now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCode {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: String,
}

/// Why a reply code is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyCodeError {
    #[error("reply code is not 3 digits 4xx or 5xx")]
    BadCode,
    #[error("enhanced status code class does not match the reply code")]
    ClassMismatch,
    #[error("reply text contains CR or LF (multi-line milter replies are not supported)")]
    LineBreak,
    #[error("reply text is not UTF-8")]
    NotUtf8,
    #[error("reply text contains a control character")]
    Control,
}

impl ReplyCode {
    /// Validates the parts: `code` 400-599, `enhanced` of the same class, `text` without
    /// control characters (CR/LF would let a milter inject SMTP reply lines, RFC 5321 4.2).
    pub fn new(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<String>,
    ) -> Result<Self, ReplyCodeError> {
        if !(400..=599).contains(&code) {
            return Err(ReplyCodeError::BadCode);
        }
        if let Some(e) = enhanced {
            if u16::from(e.class) != code / 100 {
                return Err(ReplyCodeError::ClassMismatch);
            }
        }
        let text = text.into();
        if text.contains(['\r', '\n']) {
            return Err(ReplyCodeError::LineBreak);
        }
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(ReplyCodeError::Control);
        }
        Ok(Self {
            code,
            enhanced,
            text,
        })
    }

    /// Parses the payload string "ddd[ x.y.z][ text]".
    pub fn parse(bytes: &[u8]) -> Result<Self, ReplyCodeError> {
        if bytes.contains(&b'\r') || bytes.contains(&b'\n') {
            return Err(ReplyCodeError::LineBreak);
        }
        let s = std::str::from_utf8(bytes).map_err(|_| ReplyCodeError::NotUtf8)?;
        let digits = s.get(..3).ok_or(ReplyCodeError::BadCode)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReplyCodeError::BadCode);
        }
        let code: u16 = digits.parse().map_err(|_| ReplyCodeError::BadCode)?;
        let rest = &s[3..];
        let rest = match rest.strip_prefix(' ') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return Err(ReplyCodeError::BadCode),
        };
        let (enhanced, text) = match EnhancedCode::parse_prefix(rest) {
            Some((e, text)) => (Some(e), text),
            None => (None, rest),
        };
        Self::new(code, enhanced, text)
    }

    pub fn code(&self) -> u16 {
        self.code
    }
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }
    pub fn text(&self) -> &str {
        &self.text
    }
    /// 4xx: the milter asks for a temporary failure.
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }

    /// The SMTP reply to give the client.
    pub fn to_reply(&self) -> tern_proto::Reply {
        tern_proto::Reply::new(self.code, self.enhanced, self.text.clone())
    }

    fn to_payload_string(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        if !self.text.is_empty() {
            s.push(' ');
            s.push_str(&self.text);
        }
        s
    }
}

/// A response from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// SMFIR_ACCEPT: accept, send nothing more for this message (or connection).
    Accept,
    /// SMFIR_CONTINUE: go on to the next step.
    Continue,
    /// SMFIR_DISCARD: accept towards the client, then drop the message.
    Discard,
    /// SMFIR_REJECT: reject with the MTA's default 5xx.
    Reject,
    /// SMFIR_TEMPFAIL: reject with the MTA's default 4xx.
    TempFail,
    /// SMFIR_REPLYCODE: reject with this code and text.
    ReplyCode(ReplyCode),
    /// SMFIR_QUARANTINE: hold the message, with a reason.
    Quarantine(NulFree),
    /// SMFIR_PROGRESS: still working; restart the step's timeout.
    Progress,
    /// SMFIR_SKIP: send no more body chunks (needs the SKIP protocol flag).
    Skip,
    /// The milter's OPTNEG answer.
    OptNeg(OptNeg),
    /// SMFIR_ADDHEADER: append a header.
    AddHeader { name: NulFree, value: NulFree },
    /// SMFIR_INSHEADER: insert a header at `index` (0 = first).
    InsertHeader {
        index: u32,
        name: NulFree,
        value: NulFree,
    },
    /// SMFIR_CHGHEADER: change the `index`-th (1-based) occurrence of header `name`; an empty
    /// value deletes it.
    ChangeHeader {
        index: u32,
        name: NulFree,
        value: NulFree,
    },
    /// SMFIR_CHGFROM: new envelope sender, with optional ESMTP arguments.
    ChangeFrom {
        sender: NulFree,
        args: Option<NulFree>,
    },
    /// SMFIR_ADDRCPT: add a recipient.
    AddRcpt(NulFree),
    /// SMFIR_ADDRCPT_PAR: add a recipient with ESMTP arguments.
    AddRcptPar { recipient: NulFree, args: NulFree },
    /// SMFIR_DELRCPT: remove a recipient.
    DeleteRcpt(NulFree),
    /// SMFIR_REPLBODY: one chunk of the new body (chunks concatenate).
    ReplaceBody(Vec<u8>),
    /// SMFIR_SETSYMLIST: the macros the milter wants at `stage`, space-separated on the wire.
    SetSymList {
        stage: SymListStage,
        macros: Vec<NulFree>,
    },
}

/// The stage numbers of SMFIR_SETSYMLIST (libmilter SMFIM_*), not command octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymListStage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    EndOfMessage,
    EndOfHeaders,
}

impl SymListStage {
    pub const fn number(self) -> u32 {
        match self {
            SymListStage::Connect => 0,
            SymListStage::Helo => 1,
            SymListStage::Mail => 2,
            SymListStage::Rcpt => 3,
            SymListStage::Data => 4,
            SymListStage::EndOfMessage => 5,
            SymListStage::EndOfHeaders => 6,
        }
    }
    pub const fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => SymListStage::Connect,
            1 => SymListStage::Helo,
            2 => SymListStage::Mail,
            3 => SymListStage::Rcpt,
            4 => SymListStage::Data,
            5 => SymListStage::EndOfMessage,
            6 => SymListStage::EndOfHeaders,
            _ => return None,
        })
    }
    /// The SMFIC_MACRO stage these macros are then sent with.
    pub const fn macro_stage(self) -> MacroStage {
        match self {
            SymListStage::Connect => MacroStage::Connect,
            SymListStage::Helo => MacroStage::Helo,
            SymListStage::Mail => MacroStage::Mail,
            SymListStage::Rcpt => MacroStage::Rcpt,
            SymListStage::Data => MacroStage::Data,
            SymListStage::EndOfMessage => MacroStage::EndOfMessage,
            SymListStage::EndOfHeaders => MacroStage::EndOfHeaders,
        }
    }
}

/// A response packet that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error("unknown milter response octet 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("malformed milter response {command:?}: {error}")]
    Malformed { command: char, error: FieldError },
    #[error("bad milter reply code: {0}")]
    ReplyCode(#[from] ReplyCodeError),
    #[error("empty {0} in a milter response")]
    Empty(&'static str),
    #[error("unknown SETSYMLIST stage {0}")]
    UnknownStage(u32),
    #[error("replacement body chunk of {0} octets is over 65535")]
    ChunkTooLarge(usize),
}

impl Response {
    /// A short name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Accept => "accept",
            Response::Continue => "continue",
            Response::Discard => "discard",
            Response::Reject => "reject",
            Response::TempFail => "tempfail",
            Response::ReplyCode(_) => "replycode",
            Response::Quarantine(_) => "quarantine",
            Response::Progress => "progress",
            Response::Skip => "skip",
            Response::OptNeg(_) => "optneg",
            Response::AddHeader { .. } => "addheader",
            Response::InsertHeader { .. } => "insheader",
            Response::ChangeHeader { .. } => "chgheader",
            Response::ChangeFrom { .. } => "chgfrom",
            Response::AddRcpt(_) => "addrcpt",
            Response::AddRcptPar { .. } => "addrcpt_par",
            Response::DeleteRcpt(_) => "delrcpt",
            Response::ReplaceBody(_) => "replbody",
            Response::SetSymList { .. } => "setsymlist",
        }
    }

    pub fn code(&self) -> u8 {
        match self {
            Response::Accept => code::ACCEPT,
            Response::Continue => code::CONTINUE,
            Response::Discard => code::DISCARD,
            Response::Reject => code::REJECT,
            Response::TempFail => code::TEMPFAIL,
            Response::ReplyCode(_) => code::REPLYCODE,
            Response::Quarantine(_) => code::QUARANTINE,
            Response::Progress => code::PROGRESS,
            Response::Skip => code::SKIP,
            Response::OptNeg(_) => OPTNEG,
            Response::AddHeader { .. } => code::ADDHEADER,
            Response::InsertHeader { .. } => code::INSHEADER,
            Response::ChangeHeader { .. } => code::CHGHEADER,
            Response::ChangeFrom { .. } => code::CHGFROM,
            Response::AddRcpt(_) => code::ADDRCPT,
            Response::AddRcptPar { .. } => code::ADDRCPT_PAR,
            Response::DeleteRcpt(_) => code::DELRCPT,
            Response::ReplaceBody(_) => code::REPLBODY,
            Response::SetSymList { .. } => code::SETSYMLIST,
        }
    }

    /// The negotiated action this response needs (libmilter docs, smfi_* "requires" notes).
    pub fn required_action(&self) -> Option<Actions> {
        Some(match self {
            Response::AddHeader { .. } | Response::InsertHeader { .. } => Actions::ADD_HEADERS,
            Response::ChangeHeader { .. } => Actions::CHANGE_HEADERS,
            Response::ChangeFrom { .. } => Actions::CHANGE_FROM,
            Response::AddRcpt(_) => Actions::ADD_RCPT,
            Response::AddRcptPar { .. } => Actions::ADD_RCPT_PAR,
            Response::DeleteRcpt(_) => Actions::DELETE_RCPT,
            Response::ReplaceBody(_) => Actions::CHANGE_BODY,
            Response::Quarantine(_) => Actions::QUARANTINE,
            Response::SetSymList { .. } => Actions::SET_SYMLIST,
            _ => return None,
        })
    }

    /// True for the modification actions, which only come in answer to end-of-message.
    pub fn is_modification(&self) -> bool {
        self.required_action().is_some()
            && !matches!(self, Response::Quarantine(_) | Response::SetSymList { .. })
    }

    /// The packet for this response.
    pub fn to_packet(&self) -> Packet {
        let mut p = Vec::new();
        match self {
            Response::Accept
            | Response::Continue
            | Response::Discard
            | Response::Reject
            | Response::TempFail
            | Response::Progress
            | Response::Skip => {}
            Response::ReplyCode(r) => {
                p.extend_from_slice(r.to_payload_string().as_bytes());
                p.push(0);
            }
            Response::Quarantine(s) | Response::AddRcpt(s) | Response::DeleteRcpt(s) => {
                s.write_to(&mut p)
            }
            Response::OptNeg(o) => {
                p.extend_from_slice(&o.version.to_be_bytes());
                p.extend_from_slice(&o.actions.bits().to_be_bytes());
                p.extend_from_slice(&o.protocol.bits().to_be_bytes());
            }
            Response::AddHeader { name, value } => {
                name.write_to(&mut p);
                value.write_to(&mut p);
            }
            Response::InsertHeader { index, name, value }
            | Response::ChangeHeader { index, name, value } => {
                p.extend_from_slice(&index.to_be_bytes());
                name.write_to(&mut p);
                value.write_to(&mut p);
            }
            Response::ChangeFrom { sender, args } => {
                sender.write_to(&mut p);
                if let Some(a) = args {
                    a.write_to(&mut p);
                }
            }
            Response::AddRcptPar { recipient, args } => {
                recipient.write_to(&mut p);
                args.write_to(&mut p);
            }
            Response::ReplaceBody(b) => p.extend_from_slice(b),
            Response::SetSymList { stage, macros } => {
                p.extend_from_slice(&stage.number().to_be_bytes());
                let list: Vec<&[u8]> = macros.iter().map(NulFree::as_bytes).collect();
                p.extend_from_slice(&list.join(&b' '));
                p.push(0);
            }
        }
        Packet::new(self.code(), p)
    }

    /// The framed bytes of this response.
    pub fn to_bytes(&self) -> Vec<u8> {
        let packet = self.to_packet();
        let mut out = Vec::with_capacity(packet.payload.len() + 5);
        // Typed payloads are far below u32::MAX, so framing cannot fail.
        let _ = packet.write_to(&mut out);
        out
    }

    /// Decodes and validates a response packet.
    pub fn decode(packet: &Packet) -> Result<Self, ResponseError> {
        let command = packet.command;
        let malformed = |error| ResponseError::Malformed {
            command: char::from(command),
            error,
        };
        let mut c = Cursor::new(&packet.payload);
        let nonempty = |s: NulFree, what| {
            if s.is_empty() {
                Err(ResponseError::Empty(what))
            } else {
                Ok(s)
            }
        };
        let r = match command {
            code::ACCEPT => Response::Accept,
            code::CONTINUE => Response::Continue,
            code::DISCARD => Response::Discard,
            code::REJECT => Response::Reject,
            code::TEMPFAIL => Response::TempFail,
            code::PROGRESS => Response::Progress,
            code::SKIP => Response::Skip,
            code::REPLYCODE => {
                let s = c.string("reply").map_err(malformed)?;
                Response::ReplyCode(ReplyCode::parse(s.as_bytes())?)
            }
            code::QUARANTINE => {
                Response::Quarantine(nonempty(c.string("reason").map_err(malformed)?, "reason")?)
            }
            OPTNEG => {
                let version = c.u32("version").map_err(malformed)?;
                let actions = c.u32("actions").map_err(malformed)?;
                let protocol = c.u32("protocol flags").map_err(malformed)?;
                Response::OptNeg(OptNeg {
                    version,
                    actions: Actions::from_bits(actions),
                    protocol: ProtocolFlags::from_bits(protocol),
                })
            }
            code::ADDHEADER => {
                let name = c.string("header name").map_err(malformed)?;
                let value = c.string("header value").map_err(malformed)?;
                Response::AddHeader {
                    name: header_name(name, command)?,
                    value,
                }
            }
            code::INSHEADER | code::CHGHEADER => {
                let index = c.u32("header index").map_err(malformed)?;
                let name = header_name(c.string("header name").map_err(malformed)?, command)?;
                let value = c.string("header value").map_err(malformed)?;
                if command == code::INSHEADER {
                    Response::InsertHeader { index, name, value }
                } else {
                    Response::ChangeHeader { index, name, value }
                }
            }
            code::CHGFROM => {
                let sender = nonempty(c.string("sender").map_err(malformed)?, "sender")?;
                let args = if c.is_empty() {
                    None
                } else {
                    Some(c.string("arguments").map_err(malformed)?)
                };
                Response::ChangeFrom { sender, args }
            }
            code::ADDRCPT => Response::AddRcpt(nonempty(
                c.string("recipient").map_err(malformed)?,
                "recipient",
            )?),
            code::DELRCPT => Response::DeleteRcpt(nonempty(
                c.string("recipient").map_err(malformed)?,
                "recipient",
            )?),
            code::ADDRCPT_PAR => {
                let recipient = nonempty(c.string("recipient").map_err(malformed)?, "recipient")?;
                let args = c.string("arguments").map_err(malformed)?;
                Response::AddRcptPar { recipient, args }
            }
            code::REPLBODY => {
                let body = c.rest();
                if body.len() > MILTER_CHUNK_SIZE {
                    return Err(ResponseError::ChunkTooLarge(body.len()));
                }
                Response::ReplaceBody(body.to_vec())
            }
            code::SETSYMLIST => {
                let n = c.u32("stage").map_err(malformed)?;
                let stage = SymListStage::from_number(n).ok_or(ResponseError::UnknownStage(n))?;
                let list = c.string("macro list").map_err(malformed)?;
                let macros = list
                    .as_bytes()
                    .split(|&b| b == b' ')
                    .filter(|m| !m.is_empty())
                    .map(|m| NulFree::new(m.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(malformed)?;
                Response::SetSymList { stage, macros }
            }
            other => return Err(ResponseError::UnknownCommand(other)),
        };
        c.finish().map_err(malformed)?;
        Ok(r)
    }
}

/// A header name is non-empty printable ASCII without ':' or white space (RFC 5322 2.2,
/// field-name = 1*ftext); anything else would corrupt the header section.
fn header_name(name: NulFree, command: u8) -> Result<NulFree, ResponseError> {
    let ok = !name.is_empty()
        && name
            .as_bytes()
            .iter()
            .all(|&b| (33..=126).contains(&b) && b != b':');
    if ok {
        Ok(name)
    } else {
        Err(ResponseError::Malformed {
            command: char::from(command),
            error: FieldError::BadHeaderName,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &str) -> NulFree {
        NulFree::try_from(v).expect("no NUL")
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Response, ResponseError> {
        let mut r = crate::packet::PacketReader::new();
        r.push(bytes).expect("frames");
        let p = r.next_packet().expect("one packet");
        Response::decode(&p)
    }

    #[test]
    fn every_response_round_trips() {
        let all = vec![
            Response::Accept,
            Response::Continue,
            Response::Discard,
            Response::Reject,
            Response::TempFail,
            Response::ReplyCode(
                ReplyCode::new(550, Some(EnhancedCode::new(5, 7, 1)), "spam").expect("valid"),
            ),
            Response::ReplyCode(ReplyCode::new(451, None, "later").expect("valid")),
            Response::ReplyCode(ReplyCode::new(554, None, "").expect("valid")),
            Response::Quarantine(s("virus found")),
            Response::Progress,
            Response::Skip,
            Response::OptNeg(OptNeg::tern()),
            Response::AddHeader {
                name: s("X-Spam"),
                value: s("Yes"),
            },
            Response::InsertHeader {
                index: 0,
                name: s("Authentication-Results"),
                value: s("mx; dkim=pass"),
            },
            Response::ChangeHeader {
                index: 1,
                name: s("Subject"),
                value: s("[SPAM] hi"),
            },
            Response::ChangeHeader {
                index: 2,
                name: s("X-Old"),
                value: s(""),
            },
            Response::ChangeFrom {
                sender: s("<new@example.org>"),
                args: None,
            },
            Response::ChangeFrom {
                sender: s("<new@example.org>"),
                args: Some(s("SIZE=10")),
            },
            Response::AddRcpt(s("<c@example.net>")),
            Response::AddRcptPar {
                recipient: s("<c@example.net>"),
                args: s("NOTIFY=NEVER"),
            },
            Response::DeleteRcpt(s("<b@example.net>")),
            Response::ReplaceBody(b"new body\r\n".to_vec()),
            Response::ReplaceBody(vec![7; MILTER_CHUNK_SIZE]),
            Response::SetSymList {
                stage: SymListStage::Mail,
                macros: vec![s("{auth_authen}"), s("i")],
            },
        ];
        for r in all {
            assert_eq!(decode_bytes(&r.to_bytes()), Ok(r.clone()), "{}", r.name());
        }
    }

    #[test]
    fn known_bytes() {
        assert_eq!(Response::Continue.to_bytes(), [0, 0, 0, 1, b'c']);
        assert_eq!(
            decode_bytes(b"\0\0\0\x16y550 5.7.1 Spam found\0"),
            Ok(Response::ReplyCode(
                ReplyCode::new(550, Some(EnhancedCode::new(5, 7, 1)), "Spam found").expect("valid")
            ))
        );
        // OPTNEG answer from a v6 milter wanting ADDHDRS|CHGHDRS and NR_HDR|NOUNKNOWN.
        assert_eq!(
            decode_bytes(&[0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0, 0x11, 0, 0, 0x01, 0x80]),
            Ok(Response::OptNeg(OptNeg {
                version: 6,
                actions: Actions::ADD_HEADERS.union(Actions::CHANGE_HEADERS),
                protocol: ProtocolFlags::NR_HEADER.union(ProtocolFlags::NO_UNKNOWN),
            }))
        );
        assert_eq!(
            decode_bytes(b"\0\0\0\x0bi\0\0\0\x01X-A\0v\0"),
            Ok(Response::InsertHeader {
                index: 1,
                name: s("X-A"),
                value: s("v")
            })
        );
    }

    #[test]
    fn reply_code_validation() {
        use ReplyCodeError as E;
        let bad: &[(&[u8], ReplyCodeError)] = &[
            (b"250 ok", E::BadCode),
            (b"650 no", E::BadCode),
            (b"55 short", E::BadCode),
            (b"5x0 no", E::BadCode),
            (b"5500 no", E::BadCode),
            (b"550 4.7.1 mismatch", E::ClassMismatch),
            (b"550 line\r\n250 injected", E::LineBreak),
            (b"550 bare\nlf", E::LineBreak),
            (b"550 \x1b[31m", E::Control),
            (b"550 \xff", E::NotUtf8),
        ];
        for (input, err) in bad {
            assert_eq!(ReplyCode::parse(input).as_ref(), Err(err), "{input:?}");
        }
        let r = ReplyCode::parse(b"451 4.7.1 Try again later").expect("valid");
        assert!(r.is_temporary());
        assert_eq!(r.to_reply().to_bytes(), b"451 4.7.1 Try again later\r\n");
        let r = ReplyCode::parse(b"550").expect("code alone");
        assert_eq!((r.code(), r.enhanced(), r.text()), (550, None, ""));
        let r = ReplyCode::parse(b"554 Message rejected").expect("no enhanced");
        assert_eq!((r.enhanced(), r.text()), (None, "Message rejected"));
        // A reply code packet whose text breaks lines is a typed error, not a reply.
        assert_eq!(
            decode_bytes(b"\0\0\0\x0ay550 a\r\nb\0"),
            Err(ResponseError::ReplyCode(E::LineBreak))
        );
    }

    #[test]
    fn malformed_responses_are_typed_errors() {
        let p = |c: u8, b: &[u8]| Response::decode(&Packet::new(c, b.to_vec()));
        assert_eq!(p(b'Z', b""), Err(ResponseError::UnknownCommand(b'Z')));
        assert!(matches!(
            p(b'c', b"x"),
            Err(ResponseError::Malformed { .. })
        ));
        assert!(matches!(
            p(b'h', b"X-A\0"),
            Err(ResponseError::Malformed { .. })
        ));
        assert!(matches!(
            p(b'h', b"X A\0v\0"),
            Err(ResponseError::Malformed { .. })
        ));
        assert!(matches!(
            p(b'h', b"\0v\0"),
            Err(ResponseError::Malformed { .. })
        ));
        assert!(matches!(
            p(b'm', b"\0\0"),
            Err(ResponseError::Malformed { .. })
        ));
        assert_eq!(p(b'+', b"\0"), Err(ResponseError::Empty("recipient")));
        assert_eq!(p(b'q', b"\0"), Err(ResponseError::Empty("reason")));
        assert!(matches!(
            p(b'y', b"550 x"),
            Err(ResponseError::Malformed { .. })
        ));
        assert_eq!(
            p(b'l', b"\0\0\0\x09i\0"),
            Err(ResponseError::UnknownStage(9))
        );
        assert_eq!(
            p(b'b', &vec![0; MILTER_CHUNK_SIZE + 1]),
            Err(ResponseError::ChunkTooLarge(MILTER_CHUNK_SIZE + 1))
        );
        assert!(matches!(
            p(b'O', b"\0\0\0\x06"),
            Err(ResponseError::Malformed { .. })
        ));
    }

    #[test]
    fn modification_classification() {
        assert!(Response::AddRcpt(s("<a@b>")).is_modification());
        assert!(!Response::Quarantine(s("r")).is_modification());
        assert!(!Response::Accept.is_modification());
        assert_eq!(
            Response::ChangeFrom {
                sender: s("<a@b>"),
                args: None
            }
            .required_action(),
            Some(Actions::CHANGE_FROM)
        );
    }

    proptest! {
        /// Arbitrary packets never panic the decoder; what decodes re-encodes and decodes equal.
        #[test]
        fn decode_never_panics(command in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(r) = Response::decode(&Packet::new(command, payload)) {
                prop_assert_eq!(Response::decode(&r.to_packet()), Ok(r));
            }
        }

        /// Valid reply codes with any printable text survive encode/decode.
        #[test]
        fn reply_codes_round_trip(code in 400u16..600, detail in 0u16..1000, text in "[a-zA-Z ]{0,80}") {
            // No digits in the text, so it cannot be taken for an enhanced code.
            let enhanced = (detail % 2 == 0).then(|| EnhancedCode::new((code / 100) as u8, 7, detail));
            let r = Response::ReplyCode(ReplyCode::new(code, enhanced, text).expect("valid"));
            prop_assert_eq!(Response::decode(&r.to_packet()), Ok(r));
        }
    }
}
