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
}

/// No RCPT parameters are advertised (DSN is not offered), so every one is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {}

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
        Ok(())
    }
}

impl fmt::Display for RcptParams {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            // BINARYMIME needs CHUNKING, which is not offered.
            ("BODY", Some(_)) => {
                return Err(CommandError::UnsupportedParam(format!(
                    "BODY={}",
                    value.unwrap_or("")
                )))
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            ("AUTH", Some(v)) => params.auth = Some(v.to_string()),
            ("SIZE" | "BODY" | "AUTH", None) | ("SMTPUTF8", Some(_)) => {
                return Err(CommandError::BadParamValue(key.clone()))
            }
            _ => return Err(CommandError::UnsupportedParam(key.clone())),
        }
    }
    Ok(params)
}

pub fn parse_rcpt_params(s: &str) -> Result<RcptParams, CommandError> {
    match split_params(s)?.into_iter().next() {
        Some((key, _)) => Err(CommandError::UnsupportedParam(key)),
        None => Ok(RcptParams {}),
    }
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
            parse_mail_params(" RET=FULL"),
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
    fn rcpt_params_refused() {
        assert!(parse_rcpt_params("").is_ok());
        assert_eq!(
            parse_rcpt_params(" NOTIFY=NEVER"),
            Err(CommandError::UnsupportedParam("NOTIFY".into()))
        );
    }
}
