//! SMTP commands: parsing a command line (server side) and writing one (client side).
//! Verbs from RFC 5321 4.1.1 (plus the obsolete RFC 821 ones, recognised so they can be refused
//! by name), STARTTLS (RFC 3207) and AUTH (RFC 4954).

use std::fmt;

use crate::address::{parse_forward_path, parse_reverse_path, ForwardPath, ReversePath};
pub use crate::error::CommandError;
use crate::params::{parse_mail_params, parse_rcpt_params, MailParams, RcptParams};

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// The longest line a server offering DSN and AUTH must take: RFC 3461 4 lets a RCPT line
/// grow by 500 octets for NOTIFY and ORCPT (and a MAIL line by 100 for RET and ENVID), RFC
/// 4954 5 a MAIL line by 500 for AUTH=. Only MAIL and RCPT may be this long
/// ([`Command::may_be_long`]); every other line stays within [`MAX_COMMAND_LINE`].
pub const MAX_PARAM_LINE: usize = MAX_COMMAND_LINE + 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    /// RFC 3030 2: `BDAT <size> [LAST]`; exactly `size` octets of message follow the line.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// SEND, SOML, SAML: RFC 821 verbs removed by RFC 5321.
    Obsolete(&'static str),
    /// TURN: RFC 821, insecure without authentication (RFC 2821 4.1.1.5 notes its removal).
    Turn,
}

impl Command {
    /// Parses one command line without its line ending.
    /// Whether `line` (without its CRLF) may pass [`MAX_COMMAND_LINE`]: a MAIL or RCPT, whose
    /// parameters may take it up to [`MAX_PARAM_LINE`].
    pub fn may_be_long(line: &[u8]) -> bool {
        line.len() + 2 <= MAX_COMMAND_LINE
            || (line.len() + 2 <= MAX_PARAM_LINE
                && line.get(..5).is_some_and(|v| {
                    v.eq_ignore_ascii_case(b"MAIL ") || v.eq_ignore_ascii_case(b"RCPT ")
                }))
    }

    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let Ok(line) = std::str::from_utf8(line) else {
            // The verb is ASCII; a line that is not UTF-8 can't be a command we know
            // (RFC 6531 allows UTF-8 only, never arbitrary 8-bit).
            return Err(match line.get(..4) {
                Some(v) if std::str::from_utf8(v).is_ok_and(known_verb) => {
                    CommandError::Syntax("invalid UTF-8")
                }
                _ => CommandError::Unrecognized,
            });
        };
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let arg_trimmed = arg.trim_matches(' ');
        let upper = verb.to_ascii_uppercase();
        match upper.as_str() {
            "HELO" | "EHLO" => {
                let name = arg_trimmed;
                if name.is_empty() || name.chars().any(|c| c.is_control()) {
                    return Err(CommandError::Syntax("HELO/EHLO requires a host name"));
                }
                // Extra words after the name are tolerated (some clients add them); the first is the name.
                let name = name.split(' ').next().unwrap_or(name).to_string();
                Ok(if upper == "HELO" {
                    Command::Helo(name)
                } else {
                    Command::Ehlo(name)
                })
            }
            "MAIL" => {
                let rest = strip_prefix_ci(arg, "FROM:")
                    .ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
                let (from, rest) = parse_reverse_path(rest).map_err(CommandError::BadSender)?;
                let params = parse_mail_params(rest)?;
                Ok(Command::Mail { from, params })
            }
            "RCPT" => {
                let rest = strip_prefix_ci(arg, "TO:")
                    .ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
                let (to, rest) = parse_forward_path(rest).map_err(CommandError::BadRecipient)?;
                let params = parse_rcpt_params(rest)?;
                Ok(Command::Rcpt { to, params })
            }
            "DATA" => no_arg(arg_trimmed, Command::Data),
            "BDAT" => parse_bdat(arg_trimmed),
            "RSET" => no_arg(arg_trimmed, Command::Rset),
            // RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
            "NOOP" => Ok(Command::Noop),
            "QUIT" => no_arg(arg_trimmed, Command::Quit),
            "VRFY" | "EXPN" => {
                if arg_trimmed.is_empty() {
                    return Err(CommandError::Syntax("argument required"));
                }
                let a = arg_trimmed.to_string();
                Ok(if upper == "VRFY" {
                    Command::Vrfy(a)
                } else {
                    Command::Expn(a)
                })
            }
            "HELP" => Ok(Command::Help(
                (!arg_trimmed.is_empty()).then(|| arg_trimmed.to_string()),
            )),
            "STARTTLS" => no_arg(arg_trimmed, Command::StartTls),
            "AUTH" => {
                let mut words = arg_trimmed.split(' ').filter(|w| !w.is_empty());
                let mechanism = words
                    .next()
                    .ok_or(CommandError::Syntax("AUTH requires a mechanism"))?
                    .to_ascii_uppercase();
                let initial = words.next().map(str::to_string);
                if words.next().is_some() {
                    return Err(CommandError::Syntax("too many AUTH arguments"));
                }
                Ok(Command::Auth { mechanism, initial })
            }
            "SEND" => Ok(Command::Obsolete("SEND")),
            "SOML" => Ok(Command::Obsolete("SOML")),
            "SAML" => Ok(Command::Obsolete("SAML")),
            "TURN" => Ok(Command::Turn),
            _ => Err(CommandError::Unrecognized),
        }
    }

    /// The verb, upper case, for logs and per-command help.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Helo(_) => "HELO",
            Command::Ehlo(_) => "EHLO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::Obsolete(v) => v,
            Command::Turn => "TURN",
        }
    }

    /// The wire form, including CRLF.
    pub fn to_line(&self) -> Vec<u8> {
        let mut s = self.to_string().into_bytes();
        s.extend_from_slice(b"\r\n");
        s
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Helo(h) => write!(f, "HELO {h}"),
            Command::Ehlo(h) => write!(f, "EHLO {h}"),
            Command::Mail { from, params } => write!(f, "MAIL FROM:{from}{params}"),
            Command::Rcpt { to, params } => write!(f, "RCPT TO:{to}{params}"),
            Command::Vrfy(a) => write!(f, "VRFY {a}"),
            Command::Expn(a) => write!(f, "EXPN {a}"),
            Command::Help(Some(t)) => write!(f, "HELP {t}"),
            Command::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Command::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Command::Auth {
                mechanism,
                initial: Some(i),
            } => write!(f, "AUTH {mechanism} {i}"),
            Command::Auth {
                mechanism,
                initial: None,
            } => write!(f, "AUTH {mechanism}"),
            other => f.write_str(other.verb()),
        }
    }
}

const VERBS: [&str; 18] = [
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
    "STARTTLS", "AUTH", "SEND", "SOML", "SAML", "TURN", "BDAT",
];

fn known_verb(prefix: &str) -> bool {
    VERBS
        .iter()
        .any(|v| v.len() >= 4 && v[..4].eq_ignore_ascii_case(prefix))
}

/// The longest chunk size taken: 20 digits (u64::MAX has 20), RFC 3030 2 `bdat-cmd`.
const MAX_BDAT_DIGITS: usize = 20;

/// `chunk-size [SP end-marker]`: the size is 1*DIGIT, the marker `LAST` (any case).
fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .ok_or(CommandError::Syntax("BDAT requires a chunk size"))?;
    if size.len() > MAX_BDAT_DIGITS || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("BDAT chunk size must be a number"));
    }
    let size = size
        .parse::<u64>()
        .map_err(|_| CommandError::Syntax("BDAT chunk size must be a number"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected BDAT <size> [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("expected BDAT <size> [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn no_arg(arg: &str, cmd: Command) -> Result<Command, CommandError> {
    if arg.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("no parameters allowed"))
    }
}

/// `FROM:` / `TO:` prefix, case-insensitive; spaces after the colon are tolerated later.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::BodyType;

    fn p(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn every_verb_case_insensitive() {
        assert_eq!(
            p("helo walton.net").unwrap(),
            Command::Helo("walton.net".into())
        );
        assert_eq!(p("EhLo x.test").unwrap(), Command::Ehlo("x.test".into()));
        assert_eq!(p("data").unwrap(), Command::Data);
        assert_eq!(p("RSET").unwrap(), Command::Rset);
        assert_eq!(p("noop hello").unwrap(), Command::Noop);
        assert_eq!(p("Quit").unwrap(), Command::Quit);
        assert_eq!(p("VRFY riker").unwrap(), Command::Vrfy("riker".into()));
        assert_eq!(p("EXPN staff").unwrap(), Command::Expn("staff".into()));
        assert_eq!(p("HELP").unwrap(), Command::Help(None));
        assert_eq!(p("help mail").unwrap(), Command::Help(Some("mail".into())));
        assert_eq!(p("starttls").unwrap(), Command::StartTls);
        assert_eq!(
            p("SEND FROM:<a@b.test>").unwrap(),
            Command::Obsolete("SEND")
        );
        assert_eq!(
            p("soml FROM:<a@b.test>").unwrap(),
            Command::Obsolete("SOML")
        );
        assert_eq!(
            p("SAML FROM:<a@b.test>").unwrap(),
            Command::Obsolete("SAML")
        );
        assert_eq!(p("TURN").unwrap(), Command::Turn);
        assert_eq!(
            p("auth plain AGEAYg==").unwrap(),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            }
        );
    }

    #[test]
    fn mail_and_rcpt() {
        let Command::Mail { from, params } =
            p("MAIL FROM:<johnboy@walton.net> SIZE=1000 BODY=8BITMIME SMTPUTF8").unwrap()
        else {
            panic!()
        };
        assert_eq!(from.to_string(), "<johnboy@walton.net>");
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(BodyType::EightBitMime));
        assert!(params.smtputf8);
        assert!(matches!(
            p("mail from:<>").unwrap(),
            Command::Mail {
                from: ReversePath::Null,
                ..
            }
        ));
        assert!(matches!(
            p("MAIL FROM: <a@b.test>").unwrap(),
            Command::Mail { .. }
        ));
        assert!(matches!(
            p("RCPT TO:<riker@starfleet.org>").unwrap(),
            Command::Rcpt { .. }
        ));
    }

    #[test]
    fn errors() {
        assert_eq!(p("FOO"), Err(CommandError::Unrecognized));
        assert_eq!(p(""), Err(CommandError::Unrecognized));
        assert!(matches!(p("HELO"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("EHLO   "), Err(CommandError::Syntax(_))));
        assert!(matches!(p("MAIL <a@b.test>"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            p("MAIL FROM:<a@>"),
            Err(CommandError::BadSender(_))
        ));
        assert!(matches!(
            p("RCPT TO:<>"),
            Err(CommandError::BadRecipient(_))
        ));
        assert!(matches!(
            p("RCPT TO:<a@b.test> XNOTIFY=NEVER"),
            Err(CommandError::UnsupportedParam(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b.test> SIZE=abc"),
            Err(CommandError::BadParamValue(_))
        ));
        assert!(matches!(p("DATA now"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("VRFY"), Err(CommandError::Syntax(_))));
        assert_eq!(Command::parse(b"\xff\xfe"), Err(CommandError::Unrecognized));
        assert!(matches!(
            Command::parse(b"MAIL FROM:<\xff@x>"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            p("BDAT 1000").unwrap(),
            Command::Bdat {
                size: 1000,
                last: false
            }
        );
        assert_eq!(
            p("bdat 0 last").unwrap(),
            Command::Bdat {
                size: 0,
                last: true
            }
        );
        assert_eq!(
            p("BDAT 18446744073709551615 LAST").unwrap(),
            Command::Bdat {
                size: u64::MAX,
                last: true
            }
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT +1",
            "BDAT 1.5",
            "BDAT 18446744073709551616",
            "BDAT 000000000000000000001",
            "BDAT 10 LASTX",
            "BDAT 10 LAST more",
        ] {
            assert!(matches!(p(bad), Err(CommandError::Syntax(_))), "{bad}");
        }
        assert_eq!(
            Command::Bdat {
                size: 7,
                last: true
            }
            .to_line(),
            b"BDAT 7 LAST\r\n"
        );
    }

    #[test]
    fn writes_wire_form() {
        let c = p("mail from:<a@b.test> size=10").unwrap();
        assert_eq!(c.to_line(), b"MAIL FROM:<a@b.test> SIZE=10\r\n");
        assert_eq!(
            p("rcpt to:<postmaster>").unwrap().to_line(),
            b"RCPT TO:<postmaster>\r\n"
        );
        assert_eq!(Command::Quit.to_line(), b"QUIT\r\n");
    }
}
