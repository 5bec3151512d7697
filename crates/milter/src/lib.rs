//! tern's milter protocol core, free of I/O so it can be unit-tested and fuzzed: the Sendmail
//! mail filter protocol, version 6, as spoken by libmilter 8.14+/1.0 milters (rspamd, OpenDKIM,
//! OpenDMARC, clamav-milter).
//!
//! Sources: Sendmail's `libmilter/docs` (the smfi_* API pages and the callback order), the
//! constants of libmilter's `mfapi.h` / `mfdef.h`, Postfix's MILTER_README (macros, protocol
//! versions, what an MTA does with each reply), and the "milter-protocol.txt" /
//! "milter-protocol-extras.txt" write-ups of the wire format (as kept with go-milter).
//!
//! # Protocol flow
//!
//! The MTA (tern) connects to the milter and every packet in both directions is framed the
//! same way ([`packet`]): a 4-octet big-endian length, a command octet, a payload.
//!
//! 1. **Negotiation** ([`negotiate`]): the MTA sends `SMFIC_OPTNEG` with its version, the
//!    modification actions it allows and the protocol flags it understands; the milter
//!    answers with its own; the intersection rules the session: which steps are not sent
//!    (`NO_*`), which are not answered (`NR_*`), which modifications the milter may make.
//! 2. **Per SMTP connection and transaction** ([`command`]): optionally `SMFIC_MACRO` before a
//!    step (macros such as `j`, `{client_addr}`, `i`), then `SMFIC_CONNECT`, `SMFIC_HELO`,
//!    `SMFIC_MAIL`, `SMFIC_RCPT` (one per recipient), `SMFIC_DATA`, one `SMFIC_HEADER` per
//!    header, `SMFIC_EOH`, `SMFIC_BODY` chunks of at most 65535 octets, and `SMFIC_BODYEOB`.
//!    After each step the milter answers ([`response`]) with continue, accept, reject,
//!    tempfail, discard or a reply code, unless `NR_*` said it will not.
//! 3. **End of message**: the milter sends its modifications (add/insert/change headers,
//!    change sender, add/delete recipients, replace body, quarantine), each as its own
//!    packet, then the final verdict. `SMFIR_PROGRESS` may come at any time while it works.
//! 4. `SMFIC_ABORT` ends a transaction early (RSET, client gone); `SMFIC_QUIT` ends the
//!    session, `SMFIC_QUIT_NC` hands it to the next SMTP connection.
//!
//! The codec modules do no I/O; [`client`] drives one milter connection over tokio with
//! deadlines on every wait.

pub mod client;
pub mod command;
pub mod negotiate;
pub mod packet;
pub mod response;
pub mod wire;

pub use client::{EndOfMessage, Endpoint, MilterConn, MilterError, Modification, Verdict};
pub use command::{
    body_chunks, BodyChunk, Command, CommandError, ConnectAddress, MacroDef, MacroStage,
};
pub use negotiate::{
    negotiate, negotiate_response, Actions, NegotiateError, Negotiated, OptNeg, ProtocolFlags,
    Step, PROTOCOL_VERSION,
};
pub use packet::{Packet, PacketError, PacketReader, MAX_PACKET_LEN, MILTER_CHUNK_SIZE};
pub use response::{ReplyCode, ReplyCodeError, Response, ResponseError, SymListStage};
pub use wire::{FieldError, NulFree};
