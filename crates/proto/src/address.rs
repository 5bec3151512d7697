//! Mailbox addresses and paths per the RFC 5321 4.1.2 grammar, with RFC 6531 (SMTPUTF8)
//! extensions and the size limits of RFC 5321 4.5.3.1.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.1
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3 (including the angle brackets)
pub const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0}")]
    Syntax(&'static str),
    #[error("local part too long (more than 64 octets)")]
    LocalPartTooLong,
    #[error("domain too long (more than 255 octets)")]
    DomainTooLong,
    #[error("path too long (more than 256 octets)")]
    PathTooLong,
    /// A control or invisible formatting character anywhere in the path, even inside a quoted
    /// local part: see [`is_forbidden_char`].
    #[error("address contains a control character (U+{0:04X})")]
    ControlCharacter(u32),
}

/// Characters no address tern accepts may contain, quoted or not.
///
/// RFC 5321 4.1.2 already keeps C0 controls out of atoms and quoted strings, but RFC 6531 3.3
/// admits any UTF-8 beyond ASCII, which lets in the C1 controls and the invisible format
/// characters that make one address look like another in a mail client or a log (the "Trojan
/// Source" bidi overrides, CVE-2021-42574; RFC 8264 4.2 and UTS #39 disallow them in
/// identifiers). Zero-width (non-)joiners U+200C/U+200D stay allowed: several scripts need them
/// (RFC 5892 A.1-A.2 admits them in context).
pub fn is_forbidden_char(c: char) -> bool {
    matches!(c,
        // C0, DEL and C1 controls
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // soft hyphen, Arabic letter mark
        | '\u{ad}' | '\u{61c}'
        // zero-width space, LRM, RLM
        | '\u{200b}' | '\u{200e}' | '\u{200f}'
        // line and paragraph separators, LRE/RLE/PDF/LRO/RLO
        | '\u{2028}'..='\u{202e}'
        // word joiner, invisible operators, LRI/RLI/FSI/PDI, deprecated format controls
        | '\u{2060}'..='\u{206f}'
        // zero-width no-break space (BOM), interlinear annotation controls
        | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// The first forbidden character in `s`, as the error that names it.
fn check_controls(s: &str) -> Result<(), AddressError> {
    match s.chars().find(|&c| is_forbidden_char(c)) {
        Some(c) => Err(AddressError::ControlCharacter(u32::from(c))),
        None => Ok(()),
    }
}

/// Gives every forbidden character in the path the same answer, wherever it sits. A path that
/// parsed is checked exactly (the text it consumed), so nothing can slip through; a path that
/// did not parse has no exact extent, so [`path_extent`] estimates it, and a control there
/// explains the failure better than the syntax error the parser stopped at.
fn control_check<'a, T>(
    s: &'a str,
    parsed: Result<(T, &'a str), AddressError>,
) -> Result<(T, &'a str), AddressError> {
    match parsed {
        Ok((path, rest)) => {
            check_controls(&s[..s.len() - rest.len()])?;
            Ok((path, rest))
        }
        Err(e) => {
            check_controls(path_extent(s))?;
            Err(e)
        }
    }
}

/// Roughly the path at the start of a MAIL/RCPT argument: up to the first space outside a
/// quoted string (a quoted-pair may escape a quote), or all of it.
fn path_extent(s: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => return &s[..i],
            _ => {}
        }
    }
    s
}

/// The part after `@`: a host name or an address literal (RFC 5321 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name as written (compare with [`Domain::eq_ignore_case`]).
    Name(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// `[tag:content]` General-address-literal; accepted by the grammar, never routable here.
    General {
        tag: String,
        content: String,
    },
}

impl Domain {
    /// Parses the domain part of an address on its own: a name, or an address literal in its
    /// bracket form (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 4.1.3), as
    /// [`Domain::normalized`] and [`fmt::Display`] write it.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        let mut p = Parser::new(s);
        let domain = if p.peek() == Some('[') {
            p.address_literal()?
        } else {
            Domain::Name(p.domain()?)
        };
        if !p.at_end() {
            return Err(AddressError::Syntax(
                "unexpected characters after the domain",
            ));
        }
        Ok(domain)
    }

    /// Lower-case ASCII name without a trailing dot; address literals in their bracket form.
    pub fn normalized(&self) -> String {
        match self {
            Domain::Name(n) => n.trim_end_matches('.').to_ascii_lowercase(),
            other => other.to_string(),
        }
    }

    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(n) => n.is_ascii(),
            Domain::General { tag, content } => tag.is_ascii() && content.is_ascii(),
            _ => true,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(ip) => write!(f, "[{ip}]"),
            Domain::Ipv6(ip) => write!(f, "[IPv6:{ip}]"),
            Domain::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// A validated mailbox `local@domain`. The local part is stored decoded (without quotes or
/// quoted-pair backslashes); [`fmt::Display`] re-quotes it when the dot-string form can't carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    /// Parses a bare mailbox (`local@domain`, no brackets). UTF-8 is accepted here; callers
    /// decide with [`Address::is_ascii`] whether SMTPUTF8 was required (RFC 6531 3.4).
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        check_controls(s)?;
        let mut p = Parser::new(s);
        let addr = p.mailbox()?;
        if !p.at_end() {
            return Err(AddressError::Syntax(
                "unexpected characters after the address",
            ));
        }
        Ok(addr)
    }

    pub fn new_unchecked(local: impl Into<String>, domain: Domain) -> Self {
        Self {
            local: local.into(),
            domain,
        }
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// `local@domain` with the domain normalized: the key for lookups (users, aliases).
    /// Local parts are compared case-insensitively too: tern treats `Alice@` and `alice@` alike.
    pub fn lookup_key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain.normalized())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// MAIL FROM argument: `<>` or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Address),
}

impl ReversePath {
    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(a) => Some(a),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(a) => write!(f, "<{a}>"),
        }
    }
}

/// RCPT TO argument: a mailbox, or the bare `<Postmaster>` every server must accept
/// (RFC 5321 4.1.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Address),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(a) => write!(f, "<{a}>"),
        }
    }
}

/// Parses the reverse-path at the start of `s`; returns it and the unparsed rest (parameters).
pub fn parse_reverse_path(s: &str) -> Result<(ReversePath, &str), AddressError> {
    let s = s.trim_start_matches(' ');
    control_check(s, reverse_path(s))
}

fn reverse_path(s: &str) -> Result<(ReversePath, &str), AddressError> {
    if let Some(rest) = s.strip_prefix("<>") {
        return Ok((ReversePath::Null, params_rest(rest)?));
    }
    let (addr, rest) = parse_path(s)?;
    Ok((ReversePath::Mailbox(addr), rest))
}

/// Parses the forward-path at the start of `s`; returns it and the unparsed rest (parameters).
pub fn parse_forward_path(s: &str) -> Result<(ForwardPath, &str), AddressError> {
    let s = s.trim_start_matches(' ');
    control_check(s, forward_path(s))
}

fn forward_path(s: &str) -> Result<(ForwardPath, &str), AddressError> {
    if s.len() >= 12 && s.is_char_boundary(12) && s[..12].eq_ignore_ascii_case("<postmaster>") {
        return Ok((ForwardPath::Postmaster, params_rest(&s[12..])?));
    }
    let (addr, rest) = parse_path(s)?;
    Ok((ForwardPath::Mailbox(addr), rest))
}

/// What follows a path is nothing or `SP Mail-parameters` / `SP Rcpt-parameters`
/// (RFC 5321 4.1.1.2-3), for `<>` and `<Postmaster>` exactly as for a mailbox path: otherwise
/// `MAIL FROM:<>SMTPUTF8` would be taken as a parameter.
fn params_rest(rest: &str) -> Result<&str, AddressError> {
    if rest.is_empty() || rest.starts_with(' ') {
        Ok(rest)
    } else {
        Err(AddressError::Syntax("unexpected characters after the path"))
    }
}

/// `<[A-d-l:]mailbox>`; a missing pair of brackets is tolerated (as Postfix does) so that
/// broken-but-common clients still work; source routes are parsed and dropped (RFC 5321 C).
fn parse_path(s: &str) -> Result<(Address, &str), AddressError> {
    let mut p = Parser::new(s);
    let bracketed = p.eat('<');
    if bracketed && p.peek() == Some('@') {
        p.source_route()?;
    }
    let addr = p.mailbox()?;
    if bracketed && !p.eat('>') {
        return Err(AddressError::Syntax("missing '>' at the end of the path"));
    }
    let consumed = p.pos;
    if consumed > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    Ok((addr, params_rest(&s[consumed..])?))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// `@dom1,@dom2:` (A-d-l): validated, then ignored.
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            if !self.eat('@') {
                return Err(AddressError::Syntax("bad source route"));
            }
            if self.peek() == Some('[') {
                self.address_literal()?;
            } else {
                self.domain()?;
            }
            if self.eat(',') {
                continue;
            }
            if self.eat(':') {
                return Ok(());
            }
            return Err(AddressError::Syntax("bad source route"));
        }
    }

    fn mailbox(&mut self) -> Result<Address, AddressError> {
        let local = if self.peek() == Some('"') {
            self.quoted_string()?
        } else {
            self.dot_string()?
        };
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        if !self.eat('@') {
            return Err(AddressError::Syntax("address must be local-part@domain"));
        }
        let domain = if self.peek() == Some('[') {
            self.address_literal()?
        } else {
            Domain::Name(self.domain()?)
        };
        Ok(Address { local, domain })
    }

    fn dot_string(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        let end = self
            .rest()
            .char_indices()
            .find(|&(_, c)| !(is_atext(c) || c == '.'))
            .map_or(self.s.len(), |(i, _)| self.pos + i);
        let text = &self.s[start..end];
        if !is_dot_string(text) {
            return Err(AddressError::Syntax("invalid local part"));
        }
        self.pos = end;
        Ok(text.to_string())
    }

    fn quoted_string(&mut self) -> Result<String, AddressError> {
        self.eat('"');
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(AddressError::Syntax("unterminated quoted local part"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                // quoted-pairSMTP = %d92 %d32-126
                '\\' => match self.peek() {
                    Some(q) if (' '..='~').contains(&q) => {
                        self.pos += 1;
                        out.push(q);
                    }
                    _ => return Err(AddressError::Syntax("invalid quoted-pair")),
                },
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 under RFC 6531
                c if (' '..='~').contains(&c) || !c.is_ascii() => out.push(c),
                _ => {
                    return Err(AddressError::Syntax(
                        "invalid character in quoted local part",
                    ))
                }
            }
            if out.len() > MAX_LOCAL_PART {
                return Err(AddressError::LocalPartTooLong);
            }
        }
    }

    fn domain(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        let end = self
            .rest()
            .char_indices()
            .find(|&(_, c)| !(c.is_alphanumeric() || c == '-' || c == '.'))
            .map_or(self.s.len(), |(i, _)| self.pos + i);
        let text = &self.s[start..end];
        if text.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        // A single trailing dot (absolute name) is tolerated and normalized away later.
        let labels = text.strip_suffix('.').unwrap_or(text);
        let valid = !labels.is_empty()
            && labels.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(AddressError::Syntax("invalid domain"));
        }
        self.pos = end;
        Ok(text.to_string())
    }

    fn address_literal(&mut self) -> Result<Domain, AddressError> {
        self.eat('[');
        let Some(close) = self.rest().find(']') else {
            return Err(AddressError::Syntax("unterminated address literal"));
        };
        let inner = &self.rest()[..close];
        self.pos += close + 1;
        if inner.len() + 2 > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if let Ok(ip) = inner.parse::<Ipv4Addr>() {
            return Ok(Domain::Ipv4(ip));
        }
        if let Some((tag, content)) = inner.split_once(':') {
            if tag.eq_ignore_ascii_case("IPv6") {
                return content
                    .parse::<Ipv6Addr>()
                    .map(Domain::Ipv6)
                    .map_err(|_| AddressError::Syntax("invalid IPv6 address literal"));
            }
            // General-address-literal = Standardized-tag ":" 1*dcontent (RFC 5321 4.1.3)
            let tag_ok = !tag.is_empty()
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !tag.ends_with('-');
            let content_ok = !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=126).contains(&b) && b != b'[' && b != b'\\' && b != b']');
            if tag_ok && content_ok {
                return Ok(Domain::General {
                    tag: tag.to_string(),
                    content: content.to_string(),
                });
            }
        }
        Err(AddressError::Syntax("invalid address literal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<(ForwardPath, &str), AddressError> {
        parse_forward_path(s)
    }

    #[test]
    fn simple_paths() {
        let (p, rest) = parse_reverse_path("<john@walton.net> SIZE=10").unwrap();
        assert_eq!(p.to_string(), "<john@walton.net>");
        assert_eq!(rest, " SIZE=10");
        assert_eq!(parse_reverse_path("<>").unwrap().0, ReversePath::Null);
        assert_eq!(fwd("<Postmaster>").unwrap().0, ForwardPath::Postmaster);
        assert_eq!(fwd("<POSTMASTER>").unwrap().0, ForwardPath::Postmaster);
    }

    #[test]
    fn null_and_postmaster_paths_need_a_space_before_parameters() {
        let junk = AddressError::Syntax("unexpected characters after the path");
        assert_eq!(parse_reverse_path("<><>").unwrap_err(), junk);
        assert_eq!(parse_reverse_path("<>SMTPUTF8").unwrap_err(), junk);
        assert_eq!(fwd("<postmaster>x").unwrap_err(), junk);
        assert_eq!(fwd("<Postmaster>ostmaster>").unwrap_err(), junk);
        assert_eq!(
            parse_reverse_path("<> SMTPUTF8").unwrap(),
            (ReversePath::Null, " SMTPUTF8")
        );
        assert_eq!(
            fwd("<POSTMASTER> X=1").unwrap(),
            (ForwardPath::Postmaster, " X=1")
        );
        assert_eq!(parse_reverse_path(" <>").unwrap(), (ReversePath::Null, ""));
    }

    #[test]
    fn quoted_local_parts() {
        let (p, _) = fwd(r#"<"john doe"@example.test>"#).unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert_eq!(a.local_part(), "john doe");
        assert_eq!(a.to_string(), r#""john doe"@example.test"#);
        let (p, _) = fwd(r#"<"a\"b\\c"@x.test>"#).unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert_eq!(a.local_part(), r#"a"b\c"#);
        assert_eq!(a.to_string(), r#""a\"b\\c"@x.test"#);
        // A quoted local part that is a plain dot-string prints unquoted.
        let (p, _) = fwd(r#"<"plain"@x.test>"#).unwrap();
        assert_eq!(p.to_string(), "<plain@x.test>");
        assert!(fwd("<\"unterminated@x.test>").is_err());
    }

    #[test]
    fn address_literals() {
        let (p, _) = fwd("<u@[192.0.2.1]>").unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert_eq!(a.domain(), &Domain::Ipv4("192.0.2.1".parse().unwrap()));
        let (p, _) = fwd("<u@[IPv6:2001:db8::1]>").unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert_eq!(a.domain(), &Domain::Ipv6("2001:db8::1".parse().unwrap()));
        assert_eq!(a.to_string(), "u@[IPv6:2001:db8::1]");
        assert!(fwd("<u@[300.1.1.1]>").is_err());
        assert!(fwd("<u@[IPv6:zz]>").is_err());
        assert!(fwd("<u@[x-tag:stuff]>").is_ok());
    }

    #[test]
    fn a_domain_parses_on_its_own_and_round_trips() {
        for s in [
            "x.test",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "[x-tag:stuff]",
        ] {
            let d = Domain::parse(s).unwrap();
            assert_eq!(Domain::parse(&d.normalized()).unwrap(), d, "{s}");
        }
        assert_eq!(
            Domain::parse("[ipv6:::1]").unwrap(),
            Domain::Ipv6("::1".parse().unwrap())
        );
        assert!(Domain::parse("").is_err());
        assert!(Domain::parse("x.test>").is_err());
        assert!(Domain::parse("[192.0.2.1").is_err());
        assert!(Domain::parse("[192.0.2.1]x").is_err());
    }

    #[test]
    fn source_routes_are_dropped() {
        let (p, _) = fwd("<@a.test,@b.test:user@c.test>").unwrap();
        assert_eq!(p.to_string(), "<user@c.test>");
        let (p, _) = fwd("<@[192.0.2.1],@b.test:user@c.test>").unwrap();
        assert_eq!(p.to_string(), "<user@c.test>");
        assert!(fwd("<@a.test user@c.test>").is_err());
    }

    #[test]
    fn limits() {
        let local = "a".repeat(64);
        assert!(fwd(&format!("<{local}@x.test>")).is_ok());
        let local = "a".repeat(65);
        assert_eq!(
            fwd(&format!("<{local}@x.test>")).unwrap_err(),
            AddressError::LocalPartTooLong
        );
        let label = "a".repeat(63);
        let domain = [label.as_str(); 4].join(".") + ".abc"; // 256 octets
        assert_eq!(
            fwd(&format!("<u@{domain}>")).unwrap_err(),
            AddressError::DomainTooLong
        );
    }

    #[test]
    fn path_limit_is_256() {
        let label = "a".repeat(63);
        let domain = [label.as_str(); 3].join(".") + ".abc"; // 195 octets
        let ok_local = "l".repeat(256 - 2 - 1 - 195);
        assert!(fwd(&format!("<{ok_local}@{domain}>")).is_ok());
        let long_local = "l".repeat(256 - 2 - 1 - 195 + 1);
        assert_eq!(
            fwd(&format!("<{long_local}@{domain}>")).unwrap_err(),
            AddressError::PathTooLong
        );
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "<>",
            "<@>",
            "<a@>",
            "<@b>",
            "<a..b@c>",
            "<.a@c>",
            "<a.@c>",
            "<a b@c>",
            "<a@b c>",
            "<a@-b.test>",
            "<a@b-.test>",
            "<a@b..test>",
            "<a@b>x",
            "<a@b@c>",
            "<a>",
            "<a@[1.2.3.4>",
        ] {
            assert!(fwd(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn relay_tricks_parse_as_local_addresses() {
        // These parse, and the domain is what decides routing: never the decoration in the local part.
        for s in [
            "<user%other.test@local.test>",
            r#"<"user@other.test"@local.test>"#,
            "<other.test!user@local.test>",
        ] {
            let (p, _) = fwd(s).unwrap();
            let ForwardPath::Mailbox(a) = p else { panic!() };
            assert_eq!(a.domain().normalized(), "local.test");
        }
        assert!(fwd("<user@other.test@local.test>").is_err());
        let (p, _) = fwd("<@local.test:user@other.test>").unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert_eq!(a.domain().normalized(), "other.test");
    }

    #[test]
    fn utf8_addresses() {
        let (p, _) = fwd("<δοκιμή@παράδειγμα.δοκιμή>").unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert!(!a.is_ascii());
        let (p, _) = fwd("<ascii@x.test>").unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert!(a.is_ascii());
    }

    #[test]
    fn lenient_forms() {
        assert!(parse_reverse_path(" <a@b.test>").is_ok());
        let (p, rest) = parse_reverse_path("a@b.test SIZE=1").unwrap();
        assert_eq!(p.to_string(), "<a@b.test>");
        assert_eq!(rest, " SIZE=1");
        let (p, _) = fwd("<a@B.Test.>").unwrap();
        let ForwardPath::Mailbox(a) = p else { panic!() };
        assert_eq!(a.domain().normalized(), "b.test");
        assert_eq!(a.lookup_key(), "a@b.test");
    }

    #[test]
    fn control_characters_are_rejected_wherever_they_sit() {
        for c in [
            '\u{0}', '\u{1}', '\t', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{200e}', '\u{202e}',
            '\u{2066}', '\u{feff}',
        ] {
            let want = AddressError::ControlCharacter(u32::from(c));
            for path in [
                format!("<a{c}b@x.test>"),
                format!("<\"a{c}b\"@x.test>"),
                format!("<\"a b{c}\"@x.test> SIZE=1"),
                format!("<ab@x{c}.test>"),
                format!("<ab@x.test{c}>"),
                format!("<@r{c}.test:ab@x.test>"),
                format!("<ab@[192.0.2.1{c}]>"),
                format!("{c}ab@x.test"),
            ] {
                assert_eq!(fwd(&path).unwrap_err(), want, "{path:?}");
                assert_eq!(parse_reverse_path(&path).unwrap_err(), want, "{path:?}");
            }
            assert_eq!(Address::parse(&format!("a{c}@x.test")).unwrap_err(), want);
        }
    }

    #[test]
    fn joiners_and_plain_utf8_stay_allowed() {
        // ZWNJ/ZWJ are part of Persian and Indic spellings (RFC 5892 A.1-A.2).
        assert!(fwd("<\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{645}@x.test>").is_ok());
        assert!(fwd("<caf\u{e9}@x.test>").is_ok());
        // A control in the parameters is not the path's: the parameter parser answers for it.
        assert!(fwd("<a@x.test> X=\u{1}").is_ok());
    }

    #[test]
    fn a_quote_in_a_source_route_literal_does_not_hide_a_control() {
        // The '"' in the general literal would end a naive quote tracker's "quoted string" at the
        // local part's opening quote, and the space in "a b" would end the scan early.
        let s = "<@[x:\"]:\"a b\u{202e}\"@c.test>";
        assert_eq!(fwd(s).unwrap_err(), AddressError::ControlCharacter(0x202e));
        assert_eq!(
            parse_reverse_path(s).unwrap_err(),
            AddressError::ControlCharacter(0x202e)
        );
    }

    #[test]
    fn control_error_text_names_the_code_point() {
        assert_eq!(
            AddressError::ControlCharacter(0x202e).to_string(),
            "address contains a control character (U+202E)"
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn forbidden() -> impl Strategy<Value = char> {
        prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap_or('\0')),
            (0x7fu32..0xa0).prop_map(|c| char::from_u32(c).unwrap_or('\0')),
            proptest::sample::select(vec![
                '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
                '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{61c}',
            ]),
        ]
    }

    proptest! {
        /// Whatever surrounds it, a forbidden character inside the path yields
        /// `ControlCharacter` (never a syntax error, never acceptance).
        #[test]
        fn any_forbidden_char_in_a_path_is_named(
            local in "[a-z]{1,10}",
            at in 0usize..12,
            c in forbidden(),
            quoted in any::<bool>(),
        ) {
            let mut local: Vec<char> = local.chars().collect();
            let at = at.min(local.len());
            local.insert(at, c);
            let local: String = local.into_iter().collect();
            let path = if quoted {
                format!("<\"{local}\"@x.test>")
            } else {
                format!("<{local}@x.test>")
            };
            let want = AddressError::ControlCharacter(u32::from(c));
            prop_assert_eq!(parse_forward_path(&path).unwrap_err(), want.clone());
            prop_assert_eq!(parse_reverse_path(&path).unwrap_err(), want);
        }

        /// Every address that parses has no forbidden character in it.
        #[test]
        fn parsed_addresses_carry_no_controls(s in "\\PC{0,40}") {
            if let Ok((ForwardPath::Mailbox(a), _)) = parse_forward_path(&s) {
                prop_assert!(!a.to_string().chars().any(is_forbidden_char));
            }
        }
    }
}
