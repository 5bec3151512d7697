//! EHLO capabilities (RFC 5321 4.1.1.1): parsed from a server's reply by the client.

use crate::reply::Reply;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The first line of the EHLO reply (the server's name and greeting).
    pub greeting: String,
    pub pipelining: bool,
    /// RFC 1870: `SIZE` with no number means "no fixed limit" (Some(0)); absent means None.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    /// RFC 3461: NOTIFY, ORCPT, RET and ENVID are understood.
    pub dsn: bool,
    /// RFC 8689.
    pub requiretls: bool,
    pub auth: Vec<String>,
}

impl Capabilities {
    pub fn from_ehlo_reply(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        let mut lines = reply.lines().iter();
        caps.greeting = lines.next().cloned().unwrap_or_default();
        for line in lines {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                "AUTH" => caps.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                _ => {}
            }
        }
        caps
    }

    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postfix_style_reply() {
        let reply = Reply::with_lines(
            250,
            None,
            [
                "mx.test",
                "PIPELINING",
                "SIZE 10240000",
                "STARTTLS",
                "AUTH PLAIN login",
                "8BITMIME",
                "SMTPUTF8",
            ]
            .map(String::from)
            .to_vec(),
        );
        let c = Capabilities::from_ehlo_reply(&reply);
        assert_eq!(c.greeting, "mx.test");
        assert!(c.pipelining && c.starttls && c.eight_bit_mime && c.smtputf8);
        assert_eq!(c.size, Some(10240000));
        assert!(
            c.supports_auth("LOGIN") && c.supports_auth("plain") && !c.supports_auth("CRAM-MD5")
        );
        assert!(!c.chunking);
    }
}
