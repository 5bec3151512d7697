//! Option negotiation (SMFIC_OPTNEG, the first packet of every milter connection): the MTA
//! offers a protocol version, the modification actions it allows and the protocol flags it
//! understands; the milter answers with its version, the actions it wants and the flags it
//! chooses (steps the MTA must not send, `NO_*`; replies it will not send, `NR_*`). Bit values
//! are those of libmilter's `mfapi.h`/`mfdef.h`, as documented in Sendmail's libmilter docs
//! and the "milter-protocol-extras" write-up (protocol version 6).

use thiserror::Error;

use crate::response::Response;

/// The protocol version tern speaks (libmilter `SMFI_PROT_VERSION`).
pub const PROTOCOL_VERSION: u32 = 6;

/// The oldest milter version tern accepts: version 2 is the first with CHGHDRS/QUARANTINE and
/// what every maintained milter library speaks at least.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// Modification actions (SMFIF_*): what a milter may do to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u32);

impl Actions {
    pub const NONE: Self = Self(0);
    /// SMFIF_ADDHDRS: add headers (SMFIR_ADDHEADER) and insert them (SMFIR_INSHEADER).
    pub const ADD_HEADERS: Self = Self(0x01);
    /// SMFIF_CHGBODY: replace the body (SMFIR_REPLBODY).
    pub const CHANGE_BODY: Self = Self(0x02);
    /// SMFIF_ADDRCPT: add recipients (SMFIR_ADDRCPT).
    pub const ADD_RCPT: Self = Self(0x04);
    /// SMFIF_DELRCPT: remove recipients (SMFIR_DELRCPT).
    pub const DELETE_RCPT: Self = Self(0x08);
    /// SMFIF_CHGHDRS: change or delete headers (SMFIR_CHGHEADER).
    pub const CHANGE_HEADERS: Self = Self(0x10);
    /// SMFIF_QUARANTINE: quarantine the message (SMFIR_QUARANTINE).
    pub const QUARANTINE: Self = Self(0x20);
    /// SMFIF_CHGFROM: change the envelope sender (SMFIR_CHGFROM).
    pub const CHANGE_FROM: Self = Self(0x40);
    /// SMFIF_ADDRCPT_PAR: add recipients with ESMTP arguments (SMFIR_ADDRCPT_PAR).
    pub const ADD_RCPT_PAR: Self = Self(0x80);
    /// SMFIF_SETSYMLIST: ask for a set of macros per stage (SMFIR_SETSYMLIST).
    pub const SET_SYMLIST: Self = Self(0x100);
    /// Every action protocol version 6 defines.
    pub const ALL: Self = Self(0x1ff);
}

/// Protocol flags (SMFIP_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProtocolFlags(u32);

impl ProtocolFlags {
    pub const NONE: Self = Self(0);
    pub const NO_CONNECT: Self = Self(0x01);
    pub const NO_HELO: Self = Self(0x02);
    pub const NO_MAIL: Self = Self(0x04);
    pub const NO_RCPT: Self = Self(0x08);
    pub const NO_BODY: Self = Self(0x10);
    pub const NO_HEADERS: Self = Self(0x20);
    pub const NO_EOH: Self = Self(0x40);
    /// SMFIP_NR_HDR (alias SMFIP_NOHREPL): no reply to each header.
    pub const NR_HEADER: Self = Self(0x80);
    pub const NO_UNKNOWN: Self = Self(0x100);
    pub const NO_DATA: Self = Self(0x200);
    /// SMFIP_SKIP: the MTA understands SMFIR_SKIP (stop sending body chunks).
    pub const SKIP: Self = Self(0x400);
    /// SMFIP_RCPT_REJ: the MTA also sends recipients it rejected.
    pub const RCPT_REJ: Self = Self(0x800);
    pub const NR_CONNECT: Self = Self(0x1000);
    pub const NR_HELO: Self = Self(0x2000);
    pub const NR_MAIL: Self = Self(0x4000);
    pub const NR_RCPT: Self = Self(0x8000);
    pub const NR_DATA: Self = Self(0x1_0000);
    pub const NR_UNKNOWN: Self = Self(0x2_0000);
    pub const NR_EOH: Self = Self(0x4_0000);
    pub const NR_BODY: Self = Self(0x8_0000);
    /// SMFIP_HDR_LEADSPC: header values keep their leading space in both directions.
    pub const HDR_LEADSPC: Self = Self(0x10_0000);
    /// SMFIP_MDS_256K / SMFIP_MDS_1M: larger packets.
    pub const MDS_256K: Self = Self(0x1000_0000);
    pub const MDS_1M: Self = Self(0x2000_0000);
}

/// The set operations both flag words of OPTNEG share (bit masks of libmilter's `mfdef.h`).
macro_rules! flag_set {
    ($t:ty) => {
        impl $t {
            pub const fn from_bits(bits: u32) -> Self {
                Self(bits)
            }
            pub const fn bits(self) -> u32 {
                self.0
            }
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
            pub const fn intersection(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }
            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }
            pub const fn difference(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
        }
    };
}

flag_set!(Actions);
flag_set!(ProtocolFlags);

/// The three fields of an SMFIC_OPTNEG packet, in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptNeg {
    pub version: u32,
    pub actions: Actions,
    pub protocol: ProtocolFlags,
}

impl OptNeg {
    /// What tern offers: version 6; every modification action (the driver applies each, or
    /// refuses the milter's packet if a future configuration narrows this); and the flags it
    /// honours: every step may be skipped (`NO_*`), every reply may be left out (`NR_*`), and
    /// SMFIR_SKIP. Not offered: `RCPT_REJ` (tern does not pass rejected recipients on),
    /// `HDR_LEADSPC` (header values go without the space after the colon, the default), and
    /// `MDS_*` (packets stay within [`crate::packet::MAX_PACKET_LEN`]).
    pub const fn tern() -> Self {
        Self {
            version: PROTOCOL_VERSION,
            actions: Actions::ALL,
            protocol: ProtocolFlags(
                ProtocolFlags::NO_CONNECT.0
                    | ProtocolFlags::NO_HELO.0
                    | ProtocolFlags::NO_MAIL.0
                    | ProtocolFlags::NO_RCPT.0
                    | ProtocolFlags::NO_BODY.0
                    | ProtocolFlags::NO_HEADERS.0
                    | ProtocolFlags::NO_EOH.0
                    | ProtocolFlags::NR_HEADER.0
                    | ProtocolFlags::NO_UNKNOWN.0
                    | ProtocolFlags::NO_DATA.0
                    | ProtocolFlags::SKIP.0
                    | ProtocolFlags::NR_CONNECT.0
                    | ProtocolFlags::NR_HELO.0
                    | ProtocolFlags::NR_MAIL.0
                    | ProtocolFlags::NR_RCPT.0
                    | ProtocolFlags::NR_DATA.0
                    | ProtocolFlags::NR_UNKNOWN.0
                    | ProtocolFlags::NR_EOH.0
                    | ProtocolFlags::NR_BODY.0,
            ),
        }
    }
}

/// A protocol step the MTA sends to the milter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    EndOfHeaders,
    Body,
    Unknown,
    /// Never skipped and always answered: the milter's final verdict.
    EndOfMessage,
}

impl Step {
    /// The `NO_*` flag that skips this step, and the `NR_*` flag that drops its reply.
    const fn flags(self) -> Option<(ProtocolFlags, ProtocolFlags)> {
        use ProtocolFlags as P;
        Some(match self {
            Step::Connect => (P::NO_CONNECT, P::NR_CONNECT),
            Step::Helo => (P::NO_HELO, P::NR_HELO),
            Step::Mail => (P::NO_MAIL, P::NR_MAIL),
            Step::Rcpt => (P::NO_RCPT, P::NR_RCPT),
            Step::Data => (P::NO_DATA, P::NR_DATA),
            Step::Header => (P::NO_HEADERS, P::NR_HEADER),
            Step::EndOfHeaders => (P::NO_EOH, P::NR_EOH),
            Step::Body => (P::NO_BODY, P::NR_BODY),
            Step::Unknown => (P::NO_UNKNOWN, P::NR_UNKNOWN),
            Step::EndOfMessage => return None,
        })
    }
}

/// Why a milter's OPTNEG answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NegotiateError {
    #[error("milter speaks protocol version {got}, tern needs {min} to {max}")]
    UnsupportedVersion { got: u32, min: u32, max: u32 },
    #[error("milter answered the option negotiation with {0}, not OPTNEG")]
    NotOptNeg(&'static str),
}

/// The negotiated session parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    /// Actions the milter asked for and tern offered: the only modifications it may send.
    pub actions: Actions,
    /// Protocol flags the milter chose among those tern offered.
    pub protocol: ProtocolFlags,
    /// What the milter asked for beyond the offer and does not get (for a log line: a milter
    /// that needs one of these will misbehave or give up).
    pub refused_actions: Actions,
    pub refused_protocol: ProtocolFlags,
}

/// Intersects the milter's answer with tern's offer. The version must be within
/// [`MIN_PROTOCOL_VERSION`]..=`offer.version`; extra bits are dropped and reported, not fatal
/// (a milter asking for more than it is given is told nothing by the protocol; Postfix does
/// the same, masking and logging).
pub fn negotiate(offer: &OptNeg, answer: &OptNeg) -> Result<Negotiated, NegotiateError> {
    if !(MIN_PROTOCOL_VERSION..=offer.version).contains(&answer.version) {
        return Err(NegotiateError::UnsupportedVersion {
            got: answer.version,
            min: MIN_PROTOCOL_VERSION,
            max: offer.version,
        });
    }
    Ok(Negotiated {
        version: answer.version,
        actions: answer.actions.intersection(offer.actions),
        protocol: answer.protocol.intersection(offer.protocol),
        refused_actions: answer.actions.difference(offer.actions),
        refused_protocol: answer.protocol.difference(offer.protocol),
    })
}

/// [`negotiate`] from the decoded response packet.
pub fn negotiate_response(offer: &OptNeg, answer: &Response) -> Result<Negotiated, NegotiateError> {
    match answer {
        Response::OptNeg(o) => negotiate(offer, o),
        other => Err(NegotiateError::NotOptNeg(other.name())),
    }
}

impl Negotiated {
    /// Whether the MTA sends this step at all.
    pub fn sends(&self, step: Step) -> bool {
        match step.flags() {
            Some((skip, _)) => !self.protocol.contains(skip),
            None => true,
        }
    }

    /// Whether the milter answers this step (false for steps not sent).
    pub fn expects_reply(&self, step: Step) -> bool {
        match step.flags() {
            Some((skip, no_reply)) => {
                !self.protocol.contains(skip) && !self.protocol.contains(no_reply)
            }
            None => true,
        }
    }

    /// Whether the milter may send this response: modification actions need their negotiated
    /// action bit, SMFIR_SKIP needs `SKIP`; everything else is always allowed.
    pub fn permits(&self, response: &Response) -> bool {
        match response.required_action() {
            Some(a) => self.actions.contains(a),
            None => {
                !matches!(response, Response::Skip) || self.protocol.contains(ProtocolFlags::SKIP)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::NulFree;

    fn answer(version: u32, actions: u32, protocol: u32) -> OptNeg {
        OptNeg {
            version,
            actions: Actions::from_bits(actions),
            protocol: ProtocolFlags::from_bits(protocol),
        }
    }

    #[test]
    fn tern_offer_bits() {
        let o = OptNeg::tern();
        assert_eq!(o.version, 6);
        assert_eq!(o.actions.bits(), 0x1ff);
        // NO_* 0x7f, NR_HDR 0x80, NOUNKNOWN 0x100, NODATA 0x200, SKIP 0x400, NR_* 0xff000.
        assert_eq!(o.protocol.bits(), 0x000f_f7ff);
    }

    #[test]
    fn intersection_and_refused_bits() {
        let n = negotiate(
            &OptNeg::tern(),
            &answer(
                6,
                0x1ff | 0x200,
                0x13 | 0x1000 | ProtocolFlags::MDS_1M.bits(),
            ),
        )
        .expect("ok");
        assert_eq!(n.actions, Actions::ALL);
        assert_eq!(n.refused_actions.bits(), 0x200);
        assert_eq!(n.protocol.bits(), 0x13 | 0x1000);
        assert_eq!(n.refused_protocol, ProtocolFlags::MDS_1M);
    }

    #[test]
    fn steps_skipped_and_replies_dropped() {
        use ProtocolFlags as P;
        let flags = P::NO_CONNECT
            .union(P::NO_HELO)
            .union(P::NR_RCPT)
            .union(P::NR_HEADER);
        let n = negotiate(&OptNeg::tern(), &answer(6, 0, flags.bits())).expect("ok");
        assert!(!n.sends(Step::Connect));
        assert!(!n.sends(Step::Helo));
        assert!(n.sends(Step::Mail) && n.expects_reply(Step::Mail));
        assert!(n.sends(Step::Rcpt) && !n.expects_reply(Step::Rcpt));
        assert!(n.sends(Step::Header) && !n.expects_reply(Step::Header));
        assert!(!n.expects_reply(Step::Connect));
        assert!(n.sends(Step::EndOfMessage) && n.expects_reply(Step::EndOfMessage));
    }

    #[test]
    fn bad_versions() {
        for v in [0, 1, 7, u32::MAX] {
            assert_eq!(
                negotiate(&OptNeg::tern(), &answer(v, 0, 0)),
                Err(NegotiateError::UnsupportedVersion {
                    got: v,
                    min: 2,
                    max: 6
                })
            );
        }
        assert!(negotiate(&OptNeg::tern(), &answer(2, 0, 0)).is_ok());
        assert_eq!(
            negotiate_response(&OptNeg::tern(), &Response::Continue),
            Err(NegotiateError::NotOptNeg("continue"))
        );
    }

    #[test]
    fn permits_follows_the_negotiated_actions() {
        let n = negotiate(&OptNeg::tern(), &answer(6, 0x01, 0)).expect("ok");
        let h = |s: &str| NulFree::try_from(s).expect("no NUL");
        assert!(n.permits(&Response::AddHeader {
            name: h("X-A"),
            value: h("1")
        }));
        assert!(n.permits(&Response::InsertHeader {
            index: 0,
            name: h("X-A"),
            value: h("1")
        }));
        assert!(!n.permits(&Response::DeleteRcpt(h("<a@b>"))));
        assert!(!n.permits(&Response::ReplaceBody(vec![])));
        assert!(n.permits(&Response::Accept));
        assert!(!n.permits(&Response::Skip));
        let n = negotiate(&OptNeg::tern(), &answer(6, 0, ProtocolFlags::SKIP.bits())).expect("ok");
        assert!(n.permits(&Response::Skip));
    }
}
