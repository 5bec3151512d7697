//! What the MTA sends to the milter (SMFIC_* commands), typed, with their encoding and a
//! decoder (for round trips and test milters). Strings are NUL-terminated; integers are
//! big-endian (Sendmail libmilter docs, "milter protocol"; Postfix MILTER_README).

use std::net::{Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::negotiate::{Actions, OptNeg, ProtocolFlags};
use crate::packet::{Packet, MILTER_CHUNK_SIZE};
use crate::wire::{Cursor, FieldError, NulFree};

/// Command octets (libmilter `mfdef.h`).
pub mod code {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const QUIT_NC: u8 = b'K';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
    pub const UNKNOWN: u8 = b'U';
}

/// A body chunk of at most [`MILTER_CHUNK_SIZE`] octets (SMFIC_BODY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyChunk(Vec<u8>);

impl BodyChunk {
    /// Refuses more than [`MILTER_CHUNK_SIZE`] octets.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, CommandError> {
        let bytes = bytes.into();
        if bytes.len() > MILTER_CHUNK_SIZE {
            return Err(CommandError::ChunkTooLarge(bytes.len()));
        }
        Ok(Self(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The stage a set of macros is for (SMFIC_MACRO's first octet is the command it precedes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacroStage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    EndOfHeaders,
    Body,
    EndOfMessage,
    Unknown,
}

impl MacroStage {
    pub const fn code(self) -> u8 {
        match self {
            MacroStage::Connect => code::CONNECT,
            MacroStage::Helo => code::HELO,
            MacroStage::Mail => code::MAIL,
            MacroStage::Rcpt => code::RCPT,
            MacroStage::Data => code::DATA,
            MacroStage::Header => code::HEADER,
            MacroStage::EndOfHeaders => code::EOH,
            MacroStage::Body => code::BODY,
            MacroStage::EndOfMessage => code::BODYEOB,
            MacroStage::Unknown => code::UNKNOWN,
        }
    }

    pub const fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            code::CONNECT => MacroStage::Connect,
            code::HELO => MacroStage::Helo,
            code::MAIL => MacroStage::Mail,
            code::RCPT => MacroStage::Rcpt,
            code::DATA => MacroStage::Data,
            code::HEADER => MacroStage::Header,
            code::EOH => MacroStage::EndOfHeaders,
            code::BODY => MacroStage::Body,
            code::BODYEOB => MacroStage::EndOfMessage,
            code::UNKNOWN => MacroStage::Unknown,
            _ => return None,
        })
    }
}

/// The client's address in SMFIC_CONNECT: a family octet ('U' unknown, 'L' unix, '4', '6'),
/// then, except for unknown, a 16-bit port and the address as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAddress {
    Unknown,
    Unix { path: NulFree },
    Inet { port: u16, addr: Ipv4Addr },
    Inet6 { port: u16, addr: Ipv6Addr },
}

/// One macro definition: a name (`j`, `{client_addr}`) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroDef {
    pub name: NulFree,
    pub value: NulFree,
}

/// A command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SMFIC_OPTNEG: version, actions offered, protocol flags offered (3 × u32).
    OptNeg(OptNeg),
    /// SMFIC_MACRO: the stage, then name/value string pairs.
    Macro {
        stage: MacroStage,
        macros: Vec<MacroDef>,
    },
    /// SMFIC_CONNECT: the client's host name, then its address.
    Connect {
        hostname: NulFree,
        address: ConnectAddress,
    },
    /// SMFIC_HELO: the HELO/EHLO argument.
    Helo(NulFree),
    /// SMFIC_MAIL: the reverse path (with its brackets), then ESMTP arguments.
    Mail { sender: NulFree, args: Vec<NulFree> },
    /// SMFIC_RCPT: the forward path, then ESMTP arguments.
    Rcpt {
        recipient: NulFree,
        args: Vec<NulFree>,
    },
    /// SMFIC_DATA.
    Data,
    /// SMFIC_HEADER: name and value.
    Header { name: NulFree, value: NulFree },
    /// SMFIC_EOH.
    EndOfHeaders,
    /// SMFIC_BODY: one chunk.
    Body(BodyChunk),
    /// SMFIC_BODYEOB (an empty final chunk: tern sends the body in SMFIC_BODY packets).
    EndOfMessage,
    /// SMFIC_ABORT: the transaction ends; the connection stays for the next one.
    Abort,
    /// SMFIC_QUIT: close the connection.
    Quit,
    /// SMFIC_QUIT_NC: the connection ends, a new SMTP connection reuses the milter session.
    QuitNewConnection,
    /// SMFIC_UNKNOWN: an SMTP command the MTA did not recognise.
    Unknown(NulFree),
}

/// A command packet that cannot be decoded, or a value that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("unknown milter command octet 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("malformed milter command {command:?}: {error}")]
    Malformed { command: char, error: FieldError },
    #[error("unknown macro stage 0x{0:02x}")]
    UnknownMacroStage(u8),
    #[error("unknown address family 0x{0:02x}")]
    UnknownFamily(u8),
    #[error("bad IP address in CONNECT")]
    BadAddress,
    #[error("macro name without value")]
    OddMacroList,
    #[error("MAIL/RCPT without an address")]
    MissingAddress,
    #[error("body chunk of {0} octets is over 65535")]
    ChunkTooLarge(usize),
}

fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

impl Command {
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg(_) => code::OPTNEG,
            Command::Macro { .. } => code::MACRO,
            Command::Connect { .. } => code::CONNECT,
            Command::Helo(_) => code::HELO,
            Command::Mail { .. } => code::MAIL,
            Command::Rcpt { .. } => code::RCPT,
            Command::Data => code::DATA,
            Command::Header { .. } => code::HEADER,
            Command::EndOfHeaders => code::EOH,
            Command::Body(_) => code::BODY,
            Command::EndOfMessage => code::BODYEOB,
            Command::Abort => code::ABORT,
            Command::Quit => code::QUIT,
            Command::QuitNewConnection => code::QUIT_NC,
            Command::Unknown(_) => code::UNKNOWN,
        }
    }

    /// The packet for this command.
    pub fn to_packet(&self) -> Packet {
        let mut p = Vec::new();
        match self {
            Command::OptNeg(o) => {
                push_u32(&mut p, o.version);
                push_u32(&mut p, o.actions.bits());
                push_u32(&mut p, o.protocol.bits());
            }
            Command::Macro { stage, macros } => {
                p.push(stage.code());
                for m in macros {
                    m.name.write_to(&mut p);
                    m.value.write_to(&mut p);
                }
            }
            Command::Connect { hostname, address } => {
                hostname.write_to(&mut p);
                match address {
                    ConnectAddress::Unknown => p.push(b'U'),
                    ConnectAddress::Unix { path } => {
                        p.push(b'L');
                        p.extend_from_slice(&0u16.to_be_bytes());
                        path.write_to(&mut p);
                    }
                    ConnectAddress::Inet { port, addr } => {
                        p.push(b'4');
                        p.extend_from_slice(&port.to_be_bytes());
                        p.extend_from_slice(addr.to_string().as_bytes());
                        p.push(0);
                    }
                    ConnectAddress::Inet6 { port, addr } => {
                        p.push(b'6');
                        p.extend_from_slice(&port.to_be_bytes());
                        p.extend_from_slice(addr.to_string().as_bytes());
                        p.push(0);
                    }
                }
            }
            Command::Helo(s) | Command::Unknown(s) => s.write_to(&mut p),
            Command::Mail { sender: a, args } | Command::Rcpt { recipient: a, args } => {
                a.write_to(&mut p);
                for arg in args {
                    arg.write_to(&mut p);
                }
            }
            Command::Header { name, value } => {
                name.write_to(&mut p);
                value.write_to(&mut p);
            }
            Command::Body(chunk) => p.extend_from_slice(chunk.as_bytes()),
            Command::Data
            | Command::EndOfHeaders
            | Command::EndOfMessage
            | Command::Abort
            | Command::Quit
            | Command::QuitNewConnection => {}
        }
        Packet::new(self.code(), p)
    }

    /// The framed bytes of this command. Cannot fail: every typed payload is within the
    /// packet size (a body chunk is at most 65535 octets).
    pub fn to_bytes(&self) -> Vec<u8> {
        let packet = self.to_packet();
        let mut out = Vec::with_capacity(packet.payload.len() + 5);
        // Payloads built from typed values are far below u32::MAX, so write_to cannot fail.
        let _ = packet.write_to(&mut out);
        out
    }

    /// Decodes a command packet.
    pub fn decode(packet: &Packet) -> Result<Self, CommandError> {
        let command = packet.command;
        let malformed = |error| CommandError::Malformed {
            command: char::from(command),
            error,
        };
        let mut c = Cursor::new(&packet.payload);
        let cmd = match command {
            code::OPTNEG => {
                let version = c.u32("version").map_err(malformed)?;
                let actions = c.u32("actions").map_err(malformed)?;
                let protocol = c.u32("protocol flags").map_err(malformed)?;
                Command::OptNeg(OptNeg {
                    version,
                    actions: Actions::from_bits(actions),
                    protocol: ProtocolFlags::from_bits(protocol),
                })
            }
            code::MACRO => {
                let s = c.u8("macro stage").map_err(malformed)?;
                let stage = MacroStage::from_code(s).ok_or(CommandError::UnknownMacroStage(s))?;
                let strings = c.strings("macro").map_err(malformed)?;
                if strings.len() % 2 != 0 {
                    return Err(CommandError::OddMacroList);
                }
                let mut macros = Vec::with_capacity(strings.len() / 2);
                let mut it = strings.into_iter();
                while let (Some(name), Some(value)) = (it.next(), it.next()) {
                    macros.push(MacroDef { name, value });
                }
                Command::Macro { stage, macros }
            }
            code::CONNECT => {
                let hostname = c.string("hostname").map_err(malformed)?;
                let family = c.u8("family").map_err(malformed)?;
                let address = if family == b'U' {
                    ConnectAddress::Unknown
                } else {
                    let port = c.u16("port").map_err(malformed)?;
                    let addr = c.string("address").map_err(malformed)?;
                    match family {
                        b'L' => ConnectAddress::Unix { path: addr },
                        b'4' => ConnectAddress::Inet {
                            port,
                            addr: parse_ip(addr.as_bytes())?,
                        },
                        b'6' => {
                            // Sendmail writes "IPv6:" before the address (RFC 5321 4.1.3
                            // literal syntax); accept both forms.
                            let bytes = addr.as_bytes();
                            let bytes = bytes.strip_prefix(b"IPv6:").unwrap_or(bytes);
                            ConnectAddress::Inet6 {
                                port,
                                addr: parse_ip(bytes)?,
                            }
                        }
                        other => return Err(CommandError::UnknownFamily(other)),
                    }
                };
                Command::Connect { hostname, address }
            }
            code::HELO => Command::Helo(c.string("HELO name").map_err(malformed)?),
            code::UNKNOWN => Command::Unknown(c.string("command").map_err(malformed)?),
            code::MAIL | code::RCPT => {
                let mut strings = c.strings("argument").map_err(malformed)?.into_iter();
                let addr = strings.next().ok_or(CommandError::MissingAddress)?;
                let args = strings.collect();
                if command == code::MAIL {
                    Command::Mail { sender: addr, args }
                } else {
                    Command::Rcpt {
                        recipient: addr,
                        args,
                    }
                }
            }
            code::HEADER => {
                let name = c.string("header name").map_err(malformed)?;
                let value = c.string("header value").map_err(malformed)?;
                Command::Header { name, value }
            }
            code::BODY => Command::Body(BodyChunk::new(c.rest())?),
            code::DATA => Command::Data,
            code::EOH => Command::EndOfHeaders,
            code::BODYEOB => {
                // A final chunk may ride along with SMFIC_BODYEOB; tern never sends one, and
                // a decoder for test milters refuses it rather than drop body octets.
                Command::EndOfMessage
            }
            code::ABORT => Command::Abort,
            code::QUIT => Command::Quit,
            code::QUIT_NC => Command::QuitNewConnection,
            other => return Err(CommandError::UnknownCommand(other)),
        };
        c.finish().map_err(malformed)?;
        Ok(cmd)
    }
}

fn parse_ip<T: std::str::FromStr>(bytes: impl AsRef<[u8]>) -> Result<T, CommandError> {
    std::str::from_utf8(bytes.as_ref())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError::BadAddress)
}

/// Splits a body into SMFIC_BODY commands of at most [`MILTER_CHUNK_SIZE`] octets each (none
/// for an empty body); the caller sends SMFIC_BODYEOB after them.
pub fn body_chunks(body: &[u8]) -> impl Iterator<Item = Command> + '_ {
    body.chunks(MILTER_CHUNK_SIZE)
        .map(|c| Command::Body(BodyChunk(c.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &str) -> NulFree {
        NulFree::try_from(v).expect("no NUL")
    }

    fn round_trip(cmd: Command) {
        let bytes = cmd.to_bytes();
        let mut r = crate::packet::PacketReader::new();
        r.push(&bytes).expect("frames");
        let p = r.next_packet().expect("one packet");
        assert_eq!(Command::decode(&p), Ok(cmd));
        assert_eq!(r.next_packet(), None);
    }

    #[test]
    fn every_command_round_trips() {
        let all = vec![
            Command::OptNeg(OptNeg::tern()),
            Command::Macro {
                stage: MacroStage::Connect,
                macros: vec![
                    MacroDef {
                        name: s("j"),
                        value: s("mx.example"),
                    },
                    MacroDef {
                        name: s("{client_addr}"),
                        value: s("192.0.2.1"),
                    },
                ],
            },
            Command::Macro {
                stage: MacroStage::EndOfMessage,
                macros: vec![],
            },
            Command::Connect {
                hostname: s("client.example"),
                address: ConnectAddress::Inet {
                    port: 25,
                    addr: Ipv4Addr::new(192, 0, 2, 1),
                },
            },
            Command::Connect {
                hostname: s("[2001:db8::1]"),
                address: ConnectAddress::Inet6 {
                    port: 587,
                    addr: "2001:db8::1".parse().expect("ip"),
                },
            },
            Command::Connect {
                hostname: s("localhost"),
                address: ConnectAddress::Unix {
                    path: s("/run/x.sock"),
                },
            },
            Command::Connect {
                hostname: s("unknown"),
                address: ConnectAddress::Unknown,
            },
            Command::Helo(s("client.example")),
            Command::Mail {
                sender: s("<a@example.org>"),
                args: vec![s("SIZE=100"), s("BODY=8BITMIME")],
            },
            Command::Mail {
                sender: s("<>"),
                args: vec![],
            },
            Command::Rcpt {
                recipient: s("<b@example.net>"),
                args: vec![s("NOTIFY=NEVER")],
            },
            Command::Data,
            Command::Header {
                name: s("Subject"),
                value: s("hello"),
            },
            Command::Header {
                name: s("X-Empty"),
                value: s(""),
            },
            Command::EndOfHeaders,
            Command::Body(BodyChunk::new(b"line\r\n".to_vec()).expect("small")),
            Command::Body(BodyChunk::new(vec![0u8; MILTER_CHUNK_SIZE]).expect("max")),
            Command::EndOfMessage,
            Command::Abort,
            Command::Quit,
            Command::QuitNewConnection,
            Command::Unknown(s("XFOO bar")),
        ];
        for c in all {
            round_trip(c);
        }
    }

    #[test]
    fn optneg_known_bytes() {
        // Length 13 = 'O' + 3 × u32: version 6, actions 0x1ff, protocol 0x000ff7ff.
        assert_eq!(
            Command::OptNeg(OptNeg::tern()).to_bytes(),
            [0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x0f, 0xf7, 0xff]
        );
    }

    #[test]
    fn connect_known_bytes() {
        let c = Command::Connect {
            hostname: s("h"),
            address: ConnectAddress::Inet {
                port: 25,
                addr: Ipv4Addr::new(127, 0, 0, 1),
            },
        };
        let mut want = vec![0, 0, 0, 16, b'C', b'h', 0, b'4', 0, 25];
        want.extend_from_slice(b"127.0.0.1\0");
        assert_eq!(c.to_bytes(), want);
    }

    #[test]
    fn macro_known_bytes() {
        let c = Command::Macro {
            stage: MacroStage::Mail,
            macros: vec![MacroDef {
                name: s("i"),
                value: s("Q1"),
            }],
        };
        assert_eq!(c.to_bytes(), b"\0\0\0\x07DMi\0Q1\0");
    }

    #[test]
    fn sendmail_ipv6_prefix_is_accepted() {
        let mut payload = b"h\x006\0\x19IPv6:::1\0".to_vec();
        let p = Packet::new(code::CONNECT, std::mem::take(&mut payload));
        assert_eq!(
            Command::decode(&p),
            Ok(Command::Connect {
                hostname: s("h"),
                address: ConnectAddress::Inet6 {
                    port: 25,
                    addr: Ipv6Addr::LOCALHOST
                }
            })
        );
    }

    #[test]
    fn malformed_commands_are_typed_errors() {
        let p = |c: u8, b: &[u8]| Packet::new(c, b.to_vec());
        assert_eq!(
            Command::decode(&p(b'z', b"")),
            Err(CommandError::UnknownCommand(b'z'))
        );
        assert!(matches!(
            Command::decode(&p(b'O', &[0, 0, 0, 6])),
            Err(CommandError::Malformed { .. })
        ));
        assert_eq!(
            Command::decode(&p(b'D', b"Mi\0")),
            Err(CommandError::OddMacroList)
        );
        assert_eq!(
            Command::decode(&p(b'D', b"zi\0v\0")),
            Err(CommandError::UnknownMacroStage(b'z'))
        );
        assert_eq!(
            Command::decode(&p(b'C', b"h\x004\0\x19nope\0")),
            Err(CommandError::BadAddress)
        );
        assert_eq!(
            Command::decode(&p(b'C', b"h\0X\0\x19a\0")),
            Err(CommandError::UnknownFamily(b'X'))
        );
        assert_eq!(
            Command::decode(&p(b'M', b"")),
            Err(CommandError::MissingAddress)
        );
        assert!(matches!(
            Command::decode(&p(b'H', b"no-nul")),
            Err(CommandError::Malformed { .. })
        ));
        assert!(matches!(
            Command::decode(&p(b'T', b"x")),
            Err(CommandError::Malformed { .. })
        ));
        assert_eq!(
            BodyChunk::new(vec![0; MILTER_CHUNK_SIZE + 1]),
            Err(CommandError::ChunkTooLarge(MILTER_CHUNK_SIZE + 1))
        );
    }

    proptest! {
        /// Chunking keeps every octet in order, no chunk over 65535, no empty chunk.
        #[test]
        fn body_chunks_reassemble(len in 0usize..200_000, seed in any::<u8>()) {
            let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let mut joined = Vec::new();
            let mut count = 0;
            for c in body_chunks(&body) {
                let Command::Body(chunk) = c else { panic!("not a body chunk") };
                prop_assert!(!chunk.as_bytes().is_empty());
                prop_assert!(chunk.as_bytes().len() <= MILTER_CHUNK_SIZE);
                joined.extend_from_slice(chunk.as_bytes());
                count += 1;
            }
            prop_assert_eq!(count, len.div_ceil(MILTER_CHUNK_SIZE));
            prop_assert_eq!(joined, body);
        }

        /// Decoding arbitrary packets never panics; what decodes re-encodes to the same packet.
        #[test]
        fn decode_never_panics(command in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = Packet::new(command, payload);
            if let Ok(c) = Command::decode(&p) {
                let again = Command::decode(&c.to_packet());
                prop_assert_eq!(again, Ok(c));
            }
        }
    }
}
