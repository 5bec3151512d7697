//! ESMTP parameters of MAIL and RCPT (RFC 5321 4.1.2 esmtp-param): SIZE (RFC 1870),
//! BODY (RFC 6152), SMTPUTF8 (RFC 6531) and AUTH (RFC 4954 5). Anything else is refused
//! with 555 rather than silently ignored, as RFC 5321 4.1.1.11 asks.

use std::fmt;

use crate::error::CommandError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    /// RFC 4954 5: the AUTH= identity a relaying client vouches for (xtext, kept verbatim).
    pub auth: Option<String>,
    /// RFC 3461 4.3: how much of the message a failure DSN returns.
    pub ret: Option<Ret>,
    /// RFC 3461 4.4: the sender's id for this transaction, returned in every DSN (decoded
    /// from xtext: printable ASCII, at most [`MAX_ENVID`] characters).
    pub envid: Option<String>,
    /// RFC 8689 3: the message must travel over verified TLS all the way.
    pub requiretls: bool,
}

/// RFC 3461 4.4: ENVID is at most 100 characters.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 4.2: an ORCPT value is at most 500 characters.
pub const MAX_ORCPT: usize = 500;

/// RFC 3461 4.3 RET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its header section only.
    Hdrs,
}

/// RFC 3461 4.1 NOTIFY: when the sender wants a DSN about this recipient. `NEVER` is all
/// three false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Notify::NEVER {
            return f.write_str("NEVER");
        }
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect();
        f.write_str(&words.join(","))
    }
}

/// RFC 3461 4.2 ORCPT: the recipient as the original sender gave it, `addr-type;address`
/// (decoded from xtext; `utf-8` addresses per RFC 6533 keep their UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orcpt {
    /// `rfc822` or `utf-8`, lower-cased.
    pub addr_type: String,
    pub address: String,
}

impl fmt::Display for Orcpt {
    /// The parameter value: `rfc822;` and the address in xtext.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, xtext_encode(&self.address))
    }
}

/// RCPT parameters: only the DSN ones (RFC 3461) are offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

/// RFC 3461 4: xtext, `+XX` for `+`, `=`, and anything outside `!`..`~`. Non-ASCII is written
/// byte by byte, which only `utf-8` ORCPTs carry (and RFC 6533 allows it as is in them).
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes xtext (RFC 3461 4): `None` for a `+` not followed by two hex digits, or a byte the
/// grammar does not allow (space, control, `=`), or a result that is not UTF-8.
pub fn xtext_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(text, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b if b < b'!' || b == 0x7f => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for MailParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(size) = self.size {
            write!(f, " SIZE={size}")?;
        }
        match self.body {
            Some(BodyType::SevenBit) => f.write_str(" BODY=7BIT")?,
            Some(BodyType::EightBitMime) => f.write_str(" BODY=8BITMIME")?,
            None => {}
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        if let Some(auth) = &self.auth {
            write!(f, " AUTH={auth}")?;
        }
        match self.ret {
            Some(Ret::Full) => f.write_str(" RET=FULL")?,
            Some(Ret::Hdrs) => f.write_str(" RET=HDRS")?,
            None => {}
        }
        if let Some(envid) = &self.envid {
            write!(f, " ENVID={}", xtext_encode(envid))?;
        }
        if self.requiretls {
            f.write_str(" REQUIRETLS")?;
        }
        Ok(())
    }
}

impl fmt::Display for RcptParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.notify {
            write!(f, " NOTIFY={n}")?;
        }
        if let Some(o) = &self.orcpt {
            write!(f, " ORCPT={o}")?;
        }
        Ok(())
    }
}

/// Splits `KEY[=value]` words, validating the esmtp-keyword / esmtp-value grammar.
fn split_params(s: &str) -> Result<Vec<(String, Option<&str>)>, CommandError> {
    let mut out = Vec::new();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(CommandError::Syntax("malformed ESMTP parameter"));
        }
        if let Some(v) = value {
            // esmtp-value = 1*(%d33-60 / %d62-126 / UTF8-non-ascii)
            if v.is_empty()
                || v.chars()
                    .any(|c| c.is_ascii() && (!('!'..='~').contains(&c) || c == '='))
            {
                return Err(CommandError::BadParamValue(key.to_ascii_uppercase()));
            }
        }
        let key = key.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(CommandError::Syntax("duplicate ESMTP parameter"));
        }
        out.push((key, value));
    }
    Ok(out)
}

pub fn parse_mail_params(s: &str) -> Result<MailParams, CommandError> {
    let mut params = MailParams::default();
    for (key, value) in split_params(s)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let ok = !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
                params.size = Some(
                    ok.then(|| v.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| CommandError::BadParamValue(key.clone()))?,
                );
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                params.body = Some(BodyType::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Some(BodyType::EightBitMime)
            }
            // BINARYMIME (RFC 3030 3) is not offered, though CHUNKING is.
            ("BODY", Some(_)) => {
                return Err(CommandError::UnsupportedParam(format!(
                    "BODY={}",
                    value.unwrap_or("")
                )))
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            ("AUTH", Some(v)) => params.auth = Some(v.to_string()),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => params.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => params.ret = Some(Ret::Hdrs),
            ("ENVID", Some(v)) => {
                // RFC 3461 4.4: printable ASCII once decoded, at most 100 characters.
                let id = xtext_decode(v)
                    .filter(|id| {
                        !id.is_empty()
                            && id.len() <= MAX_ENVID
                            && id.bytes().all(|b| (b' '..=b'~').contains(&b))
                    })
                    .ok_or_else(|| CommandError::BadParamValue(key.clone()))?;
                params.envid = Some(id);
            }
            ("REQUIRETLS", None) => params.requiretls = true,
            ("SIZE" | "BODY" | "AUTH" | "RET" | "ENVID", _)
            | ("SMTPUTF8" | "REQUIRETLS", Some(_)) => {
                return Err(CommandError::BadParamValue(key.clone()))
            }
            _ => return Err(CommandError::UnsupportedParam(key.clone())),
        }
    }
    Ok(params)
}

pub fn parse_rcpt_params(s: &str) -> Result<RcptParams, CommandError> {
    let mut params = RcptParams::default();
    for (key, value) in split_params(s)? {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                params.notify =
                    Some(parse_notify(v).ok_or_else(|| CommandError::BadParamValue(key.clone()))?)
            }
            ("ORCPT", Some(v)) => {
                params.orcpt =
                    Some(parse_orcpt(v).ok_or_else(|| CommandError::BadParamValue(key.clone()))?)
            }
            ("NOTIFY" | "ORCPT", None) => return Err(CommandError::BadParamValue(key.clone())),
            _ => return Err(CommandError::UnsupportedParam(key.clone())),
        }
    }
    Ok(params)
}

/// RFC 3461 4.1: `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (each once).
fn parse_notify(v: &str) -> Option<Notify> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::NEVER);
    }
    let mut n = Notify::default();
    for word in v.split(',') {
        let flag = if word.eq_ignore_ascii_case("SUCCESS") {
            &mut n.success
        } else if word.eq_ignore_ascii_case("FAILURE") {
            &mut n.failure
        } else if word.eq_ignore_ascii_case("DELAY") {
            &mut n.delay
        } else {
            return None;
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(n)
}

/// RFC 3461 4.2: `addr-type ";" xtext`, at most 500 characters.
fn parse_orcpt(v: &str) -> Option<Orcpt> {
    if v.len() > MAX_ORCPT {
        return None;
    }
    let (addr_type, rest) = v.split_once(';')?;
    let type_ok = !addr_type.is_empty()
        && addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !type_ok {
        return None;
    }
    let address = xtext_decode(rest).filter(|a| !a.is_empty())?;
    Some(Orcpt {
        addr_type: addr_type.to_ascii_lowercase(),
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params() {
        let p = parse_mail_params(" SIZE=123  body=8bitmime smtputf8 AUTH=<>").unwrap();
        assert_eq!(p.size, Some(123));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert_eq!(p.to_string(), " SIZE=123 BODY=8BITMIME SMTPUTF8 AUTH=<>");
        assert_eq!(parse_mail_params("").unwrap(), MailParams::default());
    }

    #[test]
    fn mail_param_errors() {
        assert_eq!(
            parse_mail_params(" SIZE=x"),
            Err(CommandError::BadParamValue("SIZE".into()))
        );
        assert_eq!(
            parse_mail_params(" SIZE"),
            Err(CommandError::BadParamValue("SIZE".into()))
        );
        assert_eq!(
            parse_mail_params(" SIZE=99999999999999999999999"),
            Err(CommandError::BadParamValue("SIZE".into()))
        );
        assert!(matches!(
            parse_mail_params(" BODY=BINARYMIME"),
            Err(CommandError::UnsupportedParam(_))
        ));
        assert!(matches!(
            parse_mail_params(" MT-PRIORITY=1"),
            Err(CommandError::UnsupportedParam(_))
        ));
        assert!(matches!(
            parse_mail_params(" SIZE=1 SIZE=2"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_mail_params(" =1"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse_mail_params(" SMTPUTF8=yes"),
            Err(CommandError::BadParamValue(_))
        ));
    }

    #[test]
    fn dsn_rcpt_params() {
        assert_eq!(parse_rcpt_params("").unwrap(), RcptParams::default());
        let p =
            parse_rcpt_params(" notify=success,DELAY ORCPT=rfc822;bob+2Bx@example.net").unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        let o = p.orcpt.clone().unwrap();
        assert_eq!(
            (o.addr_type.as_str(), o.address.as_str()),
            ("rfc822", "bob+x@example.net")
        );
        assert_eq!(
            p.to_string(),
            " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+2Bx@example.net"
        );
        assert_eq!(
            parse_rcpt_params(" NOTIFY=NEVER").unwrap().notify,
            Some(Notify::NEVER)
        );
        for bad in [
            " NOTIFY=NEVER,SUCCESS",
            " NOTIFY=SUCCESS,SUCCESS",
            " NOTIFY=sometimes",
            " NOTIFY",
            " ORCPT=bob@example.net",
            " ORCPT=rfc822;",
            " ORCPT=rfc822;a+4",
            " ORCPT=rfc822;a+ZZb",
        ] {
            assert!(
                matches!(parse_rcpt_params(bad), Err(CommandError::BadParamValue(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_rcpt_params(" FOO=1"),
            Err(CommandError::UnsupportedParam("FOO".into()))
        );
    }

    #[test]
    fn dsn_and_requiretls_mail_params() {
        let p = parse_mail_params(" RET=hdrs ENVID=QQ314159+2Bx REQUIRETLS").unwrap();
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ314159+x"));
        assert!(p.requiretls);
        assert_eq!(p.to_string(), " RET=HDRS ENVID=QQ314159+2Bx REQUIRETLS");
        for bad in [" RET=ALL", " RET", " ENVID", " REQUIRETLS=1", " ENVID=+0A"] {
            assert!(
                matches!(parse_mail_params(bad), Err(CommandError::BadParamValue(_))),
                "{bad}"
            );
        }
        let long = format!(" ENVID={}", "x".repeat(MAX_ENVID + 1));
        assert!(parse_mail_params(&long).is_err());
    }

    #[test]
    fn xtext_round_trips() {
        for s in ["plain", "a+b=c", "sp ace", "ünï"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("a+2bb"), Some("a+b".into()));
        assert_eq!(xtext_decode("a b"), None);
    }
}
