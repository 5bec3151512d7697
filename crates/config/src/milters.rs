//! `[[milters]]`: content filters spoken to with the Sendmail milter protocol (rspamd,
//! OpenDKIM, clamav-milter...). Each table names one filter; they are consulted in the order
//! written. The address syntax follows Postfix's `smtpd_milters` (`inet:host:port`,
//! `unix:/path`), and Sendmail's `inet:port@host` is accepted too, since that is how
//! OpenDKIM and OpenDMARC write their `Socket` setting.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::defaults;
use crate::error::Issues;
use crate::fields::duration;
use crate::raw::{RawConfig, RawMilter};

/// One configured milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterConfig {
    /// Names the milter in logs and replies to the operator; unique.
    pub name: String,
    pub address: MilterAddress,
    /// The longest wait for the connection and for each reply.
    pub timeout: Duration,
    /// The longest the whole end-of-message exchange (headers, body, modifications, verdict)
    /// may take.
    pub message_timeout: Duration,
    /// What a message gets when this milter cannot be asked.
    pub on_failure: OnFailure,
    /// The listeners whose sessions this milter sees; never empty.
    pub apply_to: Vec<MilterListener>,
}

impl MilterConfig {
    /// Whether sessions of this listener go through the milter.
    pub fn applies_to(&self, listener: MilterListener) -> bool {
        self.apply_to.contains(&listener)
    }
}

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterAddress::Inet(addr) => write!(f, "inet:{addr}"),
            MilterAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `on_failure`: what happens when the milter is down, times out, or answers nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The step gets `451 4.7.1` and the client tries again later (Postfix's
    /// `milter_default_action = tempfail`): nothing passes unfiltered.
    Tempfail,
    /// The message goes on as if this milter were not configured.
    Accept,
}

/// The listeners `apply_to` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MilterListener {
    Smtp,
    Submission,
    Submissions,
}

impl MilterListener {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "smtp" => Some(Self::Smtp),
            "submission" => Some(Self::Submission),
            "submissions" => Some(Self::Submissions),
            _ => None,
        }
    }
}

/// Validates every `[[milters]]` table.
pub(crate) fn milters(v: &mut Issues, raw: &RawConfig) -> Vec<MilterConfig> {
    let mut out: Vec<MilterConfig> = Vec::new();
    for (i, entry) in raw.milters.iter().enumerate() {
        let key = format!("milters[{i}]");
        let Some(milter) = milter(v, entry.get_ref(), &key) else {
            continue;
        };
        if out.iter().any(|m| m.name == milter.name) {
            v.add(
                Some(entry.get_ref().name.span()),
                format!("{key}.name"),
                format!("milter name \"{}\" is used twice", milter.name),
                "give each [[milters]] table its own name",
            );
            continue;
        }
        out.push(milter);
    }
    out
}

fn milter(v: &mut Issues, raw: &RawMilter, key: &str) -> Option<MilterConfig> {
    let name = raw.name.get_ref().trim().to_string();
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        v.add(
            Some(raw.name.span()),
            format!("{key}.name"),
            format!("\"{}\" is not a valid milter name", raw.name.get_ref()),
            "use up to 64 letters, digits, '-', '_' or '.', e.g. \"rspamd\"",
        );
    }
    let address = parse_address(raw.address.get_ref());
    if address.is_none() {
        v.add(
            Some(raw.address.span()),
            format!("{key}.address"),
            format!("invalid milter address \"{}\"", raw.address.get_ref()),
            "write \"inet:127.0.0.1:11332\" (or \"inet:11332@127.0.0.1\") or \"unix:/run/rspamd/milter.sock\"",
        );
    }
    let timeout = duration(
        v,
        &raw.timeout,
        &format!("{key}.timeout"),
        defaults::MILTER_TIMEOUT,
        false,
        crate::caps::MILTER_TIMEOUT,
    );
    let message_timeout = duration(
        v,
        &raw.message_timeout,
        &format!("{key}.message_timeout"),
        defaults::MILTER_MESSAGE_TIMEOUT,
        false,
        crate::caps::MILTER_MESSAGE_TIMEOUT,
    );
    let on_failure = match raw.on_failure.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("tempfail") => OnFailure::Tempfail,
        Some("accept") => OnFailure::Accept,
        Some(other) => {
            v.add(
                raw.on_failure.as_ref().map(Spanned::span),
                format!("{key}.on_failure"),
                format!("unknown on_failure \"{other}\""),
                "use \"tempfail\" (the default: 451, the client retries) or \"accept\" (the mail goes on unfiltered)",
            );
            OnFailure::Tempfail
        }
    };
    let apply_to = match &raw.apply_to {
        None => vec![MilterListener::Smtp],
        Some(list) => {
            let mut listeners = Vec::new();
            for (j, item) in list.get_ref().iter().enumerate() {
                match MilterListener::parse(item.get_ref().trim()) {
                    Some(l) if !listeners.contains(&l) => listeners.push(l),
                    Some(_) => {}
                    None => v.add(
                        Some(item.span()),
                        format!("{key}.apply_to[{j}]"),
                        format!("unknown listener \"{}\"", item.get_ref()),
                        "use \"smtp\", \"submission\" or \"submissions\"",
                    ),
                }
            }
            if listeners.is_empty() && list.get_ref().is_empty() {
                v.add(
                    Some(list.span()),
                    format!("{key}.apply_to"),
                    "apply_to is empty, so the milter would never be asked",
                    "name at least one listener, e.g. [\"smtp\"], or remove the [[milters]] table",
                );
            }
            listeners
        }
    };
    Some(MilterConfig {
        name: name_ok.then_some(name)?,
        address: address?,
        timeout,
        message_timeout,
        on_failure,
        apply_to,
    })
}

/// `inet:HOST:PORT`, `inet:[V6]:PORT`, `inet:PORT@HOST` or `unix:/absolute/path`. The host is
/// an IP address (or `localhost`): a milter is a local service, and a name lookup per SMTP
/// session would only add a way to fail.
pub(crate) fn parse_address(text: &str) -> Option<MilterAddress> {
    let text = text.trim();
    if let Some(path) = text
        .strip_prefix("unix:")
        .or_else(|| text.strip_prefix("local:"))
    {
        let path = PathBuf::from(path);
        return path.is_absolute().then_some(MilterAddress::Unix(path));
    }
    let rest = text
        .strip_prefix("inet:")
        .or_else(|| text.strip_prefix("inet6:"))?;
    let (host, port) = match rest.split_once('@') {
        Some((port, host)) => (host, port),
        None => {
            let (host, port) = rest.rsplit_once(':')?;
            (host, port)
        }
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    Some(MilterAddress::Inet(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn load(toml: &str) -> Result<Config, String> {
        Config::from_toml_str(toml, std::path::Path::new("tern.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_milter_table_with_its_defaults_and_every_key() {
        let cfg = load(
            "[[milters]]\nname = \"rspamd\"\naddress = \"inet:127.0.0.1:11332\"\n\
             [[milters]]\nname = \"dkim\"\naddress = \"unix:/run/opendkim.sock\"\n\
             timeout = \"5s\"\nmessage_timeout = \"1m\"\non_failure = \"accept\"\n\
             apply_to = [\"submission\", \"submissions\"]\n",
        )
        .unwrap();
        let [a, b] = &cfg.milters[..] else {
            panic!("two milters")
        };
        assert_eq!(
            (a.name.as_str(), a.timeout, a.message_timeout, a.on_failure),
            (
                "rspamd",
                Duration::from_secs(30),
                Duration::from_secs(300),
                OnFailure::Tempfail
            )
        );
        assert_eq!(a.apply_to, [MilterListener::Smtp]);
        assert_eq!(b.address, MilterAddress::Unix("/run/opendkim.sock".into()));
        assert_eq!(
            (b.timeout, b.message_timeout, b.on_failure),
            (
                Duration::from_secs(5),
                Duration::from_secs(60),
                OnFailure::Accept
            )
        );
        assert!(b.applies_to(MilterListener::Submissions) && !b.applies_to(MilterListener::Smtp));
        assert!(load("").unwrap().milters.is_empty());
    }

    #[test]
    fn mistakes_name_the_key_and_the_fix() {
        let e = load(
            "[[milters]]\nname = \"a b\"\naddress = \"127.0.0.1:1\"\non_failure = \"drop\"\n\
             apply_to = [\"lmtp\"]\ntimeout = \"0s\"\n\
             [[milters]]\nname = \"x\"\naddress = \"inet:127.0.0.1:1\"\n\
             [[milters]]\nname = \"x\"\naddress = \"inet:127.0.0.1:2\"\n",
        )
        .unwrap_err();
        for needle in [
            "milters[0].name",
            "milters[0].address: invalid milter address \"127.0.0.1:1\"",
            "inet:127.0.0.1:11332",
            "milters[0].on_failure: unknown on_failure \"drop\"",
            "milters[0].apply_to[0]: unknown listener \"lmtp\"",
            "milters[0].timeout",
            "milters[2].name: milter name \"x\" is used twice",
        ] {
            assert!(e.contains(needle), "{needle} not in {e}");
        }
        let e = load("[[milters]]\nname = \"x\"\naddress = \"inet:127.0.0.1:1\"\nport = 1\n")
            .unwrap_err();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn addresses_in_postfix_and_sendmail_syntax() {
        let inet = |s: &str| Some(MilterAddress::Inet(s.parse().unwrap()));
        assert_eq!(
            parse_address("inet:127.0.0.1:11332"),
            inet("127.0.0.1:11332")
        );
        assert_eq!(parse_address("inet:8891@127.0.0.1"), inet("127.0.0.1:8891"));
        assert_eq!(parse_address("inet:[::1]:8891"), inet("[::1]:8891"));
        assert_eq!(parse_address("inet6:8891@[::1]"), inet("[::1]:8891"));
        assert_eq!(parse_address("inet:localhost:8891"), inet("127.0.0.1:8891"));
        assert_eq!(
            parse_address("unix:/run/rspamd/milter.sock"),
            Some(MilterAddress::Unix("/run/rspamd/milter.sock".into()))
        );
        for bad in [
            "127.0.0.1:11332",
            "inet:127.0.0.1",
            "inet:127.0.0.1:0",
            "inet:mx.example:25",
            "unix:relative.sock",
            "tcp:1.2.3.4:5",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
    }
}
