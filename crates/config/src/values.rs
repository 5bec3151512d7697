//! Small parsers and checks for config values: durations, byte sizes, socket addresses, networks, names.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

/// Parses a humantime duration ("30s", "5m", "1h 30m", "5d").
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| e.to_string())
}

/// Parses a byte size written as a string: "1048576", "25MiB", "10 MB", "64k".
/// SI units (kB/MB/GB, and the bare K/M/G) are powers of 1000, IEC units (KiB/MiB/GiB) powers of 1024.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: String = number.chars().filter(|c| *c != '_').collect();
    if number.is_empty() {
        return Err("it does not start with a number".to_string());
    }
    let number: u64 = number
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown unit \"{other}\"")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "the size is too large".to_string())
}

/// Lower-cases a domain and strips one trailing dot (the DNS root), so "Example.TEST." == "example.test".
pub(crate) fn normalize_domain(domain: &str) -> String {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    domain.to_ascii_lowercase()
}

/// True for a syntactically valid domain name (RFC 1035 2.3.1 / RFC 1123 2.1 host name rules):
/// dot-separated labels of letters, digits and hyphens, no label starting or ending with a hyphen,
/// labels of 1..=63 octets, 253 octets in all. A single label ("localhost") is allowed.
pub(crate) fn is_domain(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Splits "local@domain" at the last '@'; both parts must be non-empty and contain no whitespace.
pub(crate) fn split_address(address: &str) -> Option<(&str, &str)> {
    if address.chars().any(char::is_whitespace) {
        return None;
    }
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((local, domain))
}

/// Parses "IP:PORT" or "[IPv6]:PORT", or a bare IP address that then gets `default_port`.
pub(crate) fn parse_socket_addr_default_port(text: &str, default_port: u16) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

/// Parses a CIDR network ("10.0.0.0/8", "fd00::/8"); a bare address means a single host (/32 or /128).
pub(crate) fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net);
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Parses a route target "host", "host:port", "[v6]:port", "[v6]" or a bare IPv6 address.
/// Returns the host (IPv6 without brackets) and the port, `default_port` when none is given.
pub(crate) fn parse_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected \"{after}\" after ']'")),
            },
        }
    } else if text.matches(':').count() == 1 {
        let (host, port) = text.split_once(':').unwrap_or((text, ""));
        (host, Some(port))
    } else {
        (text, None)
    };
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("invalid port \"{port}\" (expected 1-65535)")),
        },
    };
    if host.parse::<IpAddr>().is_err() && !is_domain(host.strip_suffix('.').unwrap_or(host)) {
        return Err(format!(
            "\"{host}\" is neither a domain name nor an IP address"
        ));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("five minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("25MiB"), Ok(25 * 1024 * 1024));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("64k"), Ok(64_000));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size("1_000B"), Ok(1000));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999 GiB").is_err());
    }

    #[test]
    fn domains() {
        assert!(is_domain("localhost"));
        assert!(is_domain("mx.example.test"));
        assert!(is_domain("a-b.c1"));
        assert!(!is_domain(""));
        assert!(!is_domain("-a.test"));
        assert!(!is_domain("a-.test"));
        assert!(!is_domain("a..test"));
        assert!(!is_domain("a.test."));
        assert!(!is_domain("under_score.test"));
        assert!(!is_domain("sp ace.test"));
        assert!(!is_domain(&"a".repeat(64)));
        assert!(is_domain(&"a".repeat(63)));
        assert_eq!(normalize_domain("Example.TEST."), "example.test");
    }

    #[test]
    fn addresses() {
        assert_eq!(split_address("a@b.test"), Some(("a", "b.test")));
        assert_eq!(split_address("\"a@x\"@b.test"), Some(("\"a@x\"", "b.test")));
        assert_eq!(split_address("ab.test"), None);
        assert_eq!(split_address("@b.test"), None);
        assert_eq!(split_address("a@"), None);
        assert_eq!(split_address("a b@c"), None);
    }

    #[test]
    fn socket_addrs() {
        let p = |s| parse_socket_addr_default_port(s, 53).map(|a| a.to_string());
        assert_eq!(p("127.0.0.1:5353").as_deref(), Some("127.0.0.1:5353"));
        assert_eq!(p("127.0.0.1").as_deref(), Some("127.0.0.1:53"));
        assert_eq!(p("::1").as_deref(), Some("[::1]:53"));
        assert_eq!(p("[::1]").as_deref(), Some("[::1]:53"));
        assert_eq!(p("[::1]:54").as_deref(), Some("[::1]:54"));
        assert_eq!(p("dns.test:53"), None);
    }

    #[test]
    fn networks() {
        let n = |s| parse_network(s).map(|n| n.to_string());
        assert_eq!(n("127.0.0.0/8").as_deref(), Some("127.0.0.0/8"));
        assert_eq!(n("10.1.2.3").as_deref(), Some("10.1.2.3/32"));
        assert_eq!(n("::1").as_deref(), Some("::1/128"));
        assert_eq!(n("10.0.0.0/33"), None);
        assert_eq!(n("example.test"), None);
    }

    #[test]
    fn host_ports() {
        assert_eq!(parse_host_port("mx.test", 25), Ok(("mx.test".into(), 25)));
        assert_eq!(
            parse_host_port("127.0.0.1:2626", 25),
            Ok(("127.0.0.1".into(), 2626))
        );
        assert_eq!(parse_host_port("[::1]:2626", 25), Ok(("::1".into(), 2626)));
        assert_eq!(parse_host_port("[::1]", 25), Ok(("::1".into(), 25)));
        assert_eq!(parse_host_port("::1", 25), Ok(("::1".into(), 25)));
        assert!(parse_host_port("mx.test:0", 25).is_err());
        assert!(parse_host_port("mx.test:99999", 25).is_err());
        assert!(parse_host_port("mx.test:", 25).is_err());
        assert!(parse_host_port("bad host", 25).is_err());
        assert!(parse_host_port("", 25).is_err());
        assert!(parse_host_port("[::1", 25).is_err());
    }
}
