//! The name `tern send` gives in EHLO when `--helo` is not given. RFC 5321 4.1.1.1 asks for a
//! fully qualified domain name, or an address literal when the host has none; servers with
//! Postfix's `reject_non_fqdn_helo_hostname` refuse a bare `EHLO vm` with 504 5.5.2.

use std::path::Path;

use tern_client::HeloName;

/// The hosts file that `hostname --fqdn` and the C library's resolver read first.
const HOSTS: &str = "/etc/hosts";

/// The config's `hostname` if it has a dot; else the system's canonical name if that has one;
/// else the address literal of the connection's local end.
pub fn default_name(config_hostname: &str) -> HeloName {
    let system = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let hosts = std::fs::read_to_string(Path::new(HOSTS)).unwrap_or_default();
    choose(config_hostname, &system, &hosts)
}

/// [`default_name`] with its inputs given: the config's hostname, the system host name and the
/// text of the hosts file.
pub fn choose(config_hostname: &str, system: &str, hosts: &str) -> HeloName {
    if is_fqdn(config_hostname) {
        return HeloName::Name(config_hostname.to_string());
    }
    match canonical_name(system, hosts) {
        Some(name) if is_fqdn(&name) => HeloName::Name(name),
        _ => HeloName::LocalAddress,
    }
}

/// The system's canonical name: the host name itself if it is qualified, else the first name of
/// the hosts-file line that lists it (the canonical name, hosts(5)), as `hostname --fqdn` does.
fn canonical_name(system: &str, hosts: &str) -> Option<String> {
    let system = system.trim().trim_end_matches('.');
    if system.is_empty() {
        return None;
    }
    if is_fqdn(system) {
        return Some(system.to_string());
    }
    hosts.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let _address = words.next()?;
        let names: Vec<&str> = words.collect();
        names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(system))
            .then(|| names.first().map(|n| n.trim_end_matches('.').to_string()))
            .flatten()
    })
}

/// A domain name of at least two labels (not `localhost`, not `vm`), letters, digits, hyphens.
fn is_fqdn(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.contains('.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "127.0.0.1 localhost\n# 10.0.0.9 vm.commented.test vm\n\
                         10.0.0.7 vm.example.test vm\n127.0.0.1 other\n";

    fn name(n: &str) -> HeloName {
        HeloName::Name(n.to_string())
    }

    #[test]
    fn config_hostname_first_if_qualified() {
        assert_eq!(choose("mx.example.test", "vm", ""), name("mx.example.test"));
        // The embedded default is the bare system name: not good enough for EHLO.
        assert_eq!(choose("vm", "vm", HOSTS), name("vm.example.test"));
    }

    #[test]
    fn canonical_name_from_the_hosts_file() {
        assert_eq!(choose("localhost", "VM", HOSTS), name("vm.example.test"));
        assert_eq!(
            choose("localhost", "box.example.test", ""),
            name("box.example.test")
        );
        // This machine's case: `127.0.0.1 vm` has no qualified name.
        assert_eq!(
            choose("vm", "vm", "127.0.0.1 localhost\n127.0.0.1 vm\n"),
            HeloName::LocalAddress
        );
        assert_eq!(choose("localhost", "", HOSTS), HeloName::LocalAddress);
        assert_eq!(choose("localhost", "other", HOSTS), HeloName::LocalAddress);
    }

    #[test]
    fn fqdn_rule() {
        assert!(is_fqdn("a.b") && is_fqdn("mx.example.test."));
        assert!(!is_fqdn("vm") && !is_fqdn("localhost") && !is_fqdn("10.0.0.1"));
        assert!(!is_fqdn("a..b") && !is_fqdn("-a.b"));
    }
}
