//! The envelope (RFC 5321 MAIL FROM / RCPT TO) and what a message needs from the server:
//! 8BITMIME for 8-bit bytes (RFC 6152), SMTPUTF8 for non-ASCII addresses (RFC 6531).

use tern_proto::{Address, AddressError, ForwardPath, HeaderScanner, RcptParams, Ret, ReversePath};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: ReversePath,
    pub rcpts: Vec<ForwardPath>,
    /// What the original sender asked of notifications, passed on to a server that offers
    /// DSN (RFC 3461 5.2: a relay keeps the parameters); dropped for one that does not.
    pub dsn: DsnRequest,
    /// RFC 8689: send only over verified TLS, to a server that offers REQUIRETLS.
    pub requiretls: bool,
}

/// RFC 3461 MAIL and RCPT parameters for one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnRequest {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// NOTIFY/ORCPT per recipient, in the order of `rcpts`; missing entries have none.
    pub rcpts: Vec<RcptParams>,
}

impl Envelope {
    /// Parses bare addresses (`a@b`, no brackets); an empty sender is the null reverse-path.
    pub fn parse<'a>(
        from: &str,
        rcpts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Envelope, AddressError> {
        let from = if from.is_empty() || from == "<>" {
            ReversePath::Null
        } else {
            ReversePath::Mailbox(Address::parse(from)?)
        };
        let rcpts = rcpts
            .into_iter()
            .map(|r| {
                if r.eq_ignore_ascii_case("postmaster") {
                    Ok(ForwardPath::Postmaster)
                } else {
                    Address::parse(r).map(ForwardPath::Mailbox)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Envelope {
            from,
            rcpts,
            dsn: DsnRequest::default(),
            requiretls: false,
        })
    }

    /// RFC 6531 3.4: a non-ASCII mailbox anywhere in the envelope needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        let from = self.from.address().is_some_and(|a| !a.is_ascii());
        from || self.rcpts.iter().any(|r| match r {
            ForwardPath::Mailbox(a) => !a.is_ascii(),
            ForwardPath::Postmaster => false,
        })
    }
}

/// The key a recipient's outcome is reported under: `local@domain` or `postmaster`.
pub fn rcpt_key(rcpt: &ForwardPath) -> String {
    match rcpt {
        ForwardPath::Postmaster => "postmaster".to_string(),
        ForwardPath::Mailbox(a) => a.to_string(),
    }
}

/// Facts about the message bytes that decide the MAIL parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageTraits {
    /// Any byte >= 0x80 (needs BODY=8BITMIME).
    pub eight_bit: bool,
    /// 8-bit bytes in the header section (RFC 6532 UTF-8 headers).
    pub eight_bit_headers: bool,
    /// Size on the wire before dot-stuffing: bare LFs become CRLF (RFC 1870 SIZE estimate).
    pub wire_size: u64,
}

impl MessageTraits {
    pub fn scan(message: &[u8]) -> Self {
        let mut scanner = TraitsScanner::default();
        scanner.feed(message);
        scanner.finish()
    }
}

/// [`MessageTraits::scan`] over a message read in pieces (from a spool file): the same result
/// for any split.
#[derive(Debug, Default)]
pub struct TraitsScanner {
    header: HeaderScanner,
    len: u64,
    eight_bit_headers: bool,
    eight_bit: bool,
    bare_lf: u64,
    prev: u8,
}

impl TraitsScanner {
    pub fn feed(&mut self, piece: &[u8]) {
        let start = self.len;
        self.header.feed(piece);
        self.len += piece.len() as u64;
        // The part of this piece inside the header section (the empty line that ends it holds
        // no 8-bit octet, so counting it changes nothing).
        let in_header = usize::try_from(self.header.header_len().saturating_sub(start))
            .map_or(piece.len(), |n| n.min(piece.len()));
        if !self.eight_bit_headers && piece[..in_header].iter().any(|b| *b >= 0x80) {
            self.eight_bit_headers = true;
        }
        if !self.eight_bit && piece.iter().any(|b| *b >= 0x80) {
            self.eight_bit = true;
        }
        for lf in memchr::memchr_iter(b'\n', piece) {
            let before = if lf == 0 { self.prev } else { piece[lf - 1] };
            if before != b'\r' {
                self.bare_lf += 1;
            }
        }
        if let Some(&last) = piece.last() {
            self.prev = last;
        }
    }

    pub fn finish(self) -> MessageTraits {
        MessageTraits {
            eight_bit: self.eight_bit,
            eight_bit_headers: self.eight_bit_headers,
            wire_size: self.len + self.bare_lf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_in_pieces_match_the_whole() {
        let messages: [&[u8]; 4] = [
            b"Subject: caf\xc3\xa9\r\n\r\nbody\nbare\r\n",
            b"Subject: x\r\n\r\nbody \xff\r\n",
            b"no header end\n",
            b"",
        ];
        for m in messages {
            let whole = MessageTraits::scan(m);
            for cut in 0..=m.len() {
                let mut s = TraitsScanner::default();
                s.feed(&m[..cut]);
                s.feed(&m[cut..]);
                assert_eq!(s.finish(), whole, "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn parse_and_utf8() {
        let e = Envelope::parse("a@b.test", ["c@d.test", "postmaster"]).unwrap();
        assert!(!e.needs_smtputf8());
        assert_eq!(rcpt_key(&e.rcpts[1]), "postmaster");
        let e = Envelope::parse("", ["jörg@d.test"]).unwrap();
        assert_eq!(e.from, ReversePath::Null);
        assert!(e.needs_smtputf8());
        assert!(Envelope::parse("a@b.test", ["nope"]).is_err());
    }

    #[test]
    fn traits() {
        let t = MessageTraits::scan(b"Subject: x\r\n\r\nbody\n");
        assert_eq!(
            t,
            MessageTraits {
                eight_bit: false,
                eight_bit_headers: false,
                wire_size: 20
            }
        );
        let t = MessageTraits::scan("Subject: caf\u{e9}\n\nx".as_bytes());
        assert!(t.eight_bit && t.eight_bit_headers);
        let t = MessageTraits::scan("S: x\n\ncaf\u{e9}".as_bytes());
        assert!(t.eight_bit && !t.eight_bit_headers);
        // No header at all: the 8-bit byte is in the body, wherever a later blank line is.
        let t = MessageTraits::scan("\r\ncaf\u{e9}\r\n\r\nx".as_bytes());
        assert!(t.eight_bit && !t.eight_bit_headers);
    }
}
