//! The envelope (RFC 5321 MAIL FROM / RCPT TO) and what a message needs from the server:
//! 8BITMIME for 8-bit bytes (RFC 6152), SMTPUTF8 for non-ASCII addresses (RFC 6531).

use tern_proto::{Address, AddressError, ForwardPath, HeaderSection, ReversePath};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: ReversePath,
    pub rcpts: Vec<ForwardPath>,
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
        Ok(Envelope { from, rcpts })
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
        let header = HeaderSection::find(message);
        let eight_bit_headers = header.fields().iter().any(|b| *b >= 0x80);
        let eight_bit = eight_bit_headers || header.body().iter().any(|b| *b >= 0x80);
        let mut bare_lf = 0u64;
        let mut prev = 0u8;
        for &b in message {
            if b == b'\n' && prev != b'\r' {
                bare_lf += 1;
            }
            prev = b;
        }
        Self {
            eight_bit,
            eight_bit_headers,
            wire_size: message.len() as u64 + bare_lf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
