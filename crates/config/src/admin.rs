//! `[admin]`: the admin HTTP listener (Prometheus `/metrics`, the JSON API, the web console).
//! Off unless `listen` is set. The bearer token is read here, at load time, so a missing or
//! empty token file is a start-up error, and a listener reachable from other hosts without a
//! token is refused outright: the API can delete and bounce mail.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::error::Issues;
use crate::raw::RawConfig;
use crate::values::parse_socket_addr_default_port;

/// The port `listen = "127.0.0.1"` means.
pub const DEFAULT_ADMIN_PORT: u16 = 8025;

/// Shortest token accepted: a bearer token is a password an attacker can try over the network.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `None` only when `listen` is a loopback address.
    pub token: Option<AdminToken>,
    pub token_file: Option<PathBuf>,
    /// Recipient domains kept as `domain_class` label values; others are `other`. `None`: the
    /// built-in list of large providers (tern_metrics::DEFAULT_TOP_DOMAINS).
    pub metrics_domains: Option<Vec<String>>,
}

/// The bearer token; its Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(redacted)")
    }
}

pub(crate) fn admin(v: &mut Issues, raw: &RawConfig) -> Option<AdminConfig> {
    let r = &raw.admin;
    let Some(listen) = &r.listen else {
        for (key, set) in [
            ("admin.token_file", r.token_file.is_some()),
            ("admin.metrics_domains", r.metrics_domains.is_some()),
        ] {
            if set {
                v.add(
                    None,
                    key,
                    format!("{key} is set but admin.listen is not, so the admin listener is off"),
                    "set admin.listen (e.g. \"127.0.0.1:8025\"), or remove the key",
                );
            }
        }
        return None;
    };
    let Some(addr) = parse_socket_addr_default_port(listen.get_ref(), DEFAULT_ADMIN_PORT) else {
        v.add(
            Some(listen.span()),
            "admin.listen",
            format!("invalid address \"{}\"", listen.get_ref()),
            "write an IP address and port, e.g. \"127.0.0.1:8025\" or \"[::1]:8025\"",
        );
        return None;
    };
    let token = match &r.token_file {
        Some(file) => Some(read_token(v, file.get_ref(), file.span())?),
        None => None,
    };
    if token.is_none() && !addr.ip().is_loopback() {
        v.add(
            Some(listen.span()),
            "admin.token_file",
            format!(
                "admin.listen = \"{addr}\" is reachable from other hosts, and the API can delete and bounce mail: a token is required"
            ),
            "set admin.token_file to a file holding a long random token (e.g. `openssl rand -hex 32 > /etc/tern/admin.token`), or listen on 127.0.0.1",
        );
        return None;
    }
    let metrics_domains = r.metrics_domains.as_ref().map(|list| {
        list.get_ref()
            .iter()
            .map(|d| d.get_ref().trim_end_matches('.').to_ascii_lowercase())
            .collect()
    });
    Some(AdminConfig {
        listen: addr,
        token,
        token_file: r.token_file.as_ref().map(|f| PathBuf::from(f.get_ref())),
        metrics_domains,
    })
}

fn read_token(v: &mut Issues, file: &str, span: std::ops::Range<usize>) -> Option<AdminToken> {
    let path = PathBuf::from(file);
    let fix = "write a long random token into it, e.g. `openssl rand -hex 32 > FILE`";
    let text = match crate::files::read_bounded_string(&path, crate::files::MAX_SMALL_FILE) {
        Ok(t) => t,
        Err(e) => {
            v.add(
                Some(span),
                "admin.token_file",
                format!("cannot read \"{}\": {e}", path.display()),
                format!("{}, or {fix}", crate::fields::file_fix(&e)),
            );
            return None;
        }
    };
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        v.add(
            Some(span),
            "admin.token_file",
            format!(
                "\"{}\" must hold one token of at least {MIN_TOKEN_LEN} visible characters",
                path.display()
            ),
            fix,
        );
        return None;
    }
    Some(AdminToken(token.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::Config;

    fn issues(text: &str) -> Vec<String> {
        match Config::from_toml_str(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .issues()
                .iter()
                .map(|i| format!("{}: {}", i.key, i.problem))
                .collect(),
        }
    }

    #[test]
    fn off_by_default_and_loopback_needs_no_token() {
        let cfg = Config::from_toml_str("", Path::new("t.toml")).unwrap();
        assert!(cfg.admin.is_none());
        let cfg = Config::from_toml_str("[admin]\nlisten = \"127.0.0.1\"\n", Path::new("t.toml"))
            .unwrap();
        let a = cfg.admin.unwrap();
        assert_eq!(a.listen.port(), super::DEFAULT_ADMIN_PORT);
        assert!(a.token.is_none() && a.metrics_domains.is_none());
    }

    #[test]
    fn a_listener_other_hosts_can_reach_needs_a_token() {
        let found = issues("[admin]\nlisten = \"0.0.0.0:8025\"\n");
        assert!(
            found
                .iter()
                .any(|i| i.starts_with("admin.token_file:") && i.contains("token is required")),
            "{found:?}"
        );
        let found = issues("[admin]\nlisten = \"[::]:8025\"\n");
        assert!(
            found.iter().any(|i| i.starts_with("admin.token_file:")),
            "{found:?}"
        );
    }

    #[test]
    fn the_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let text = |p: &Path| {
            format!(
                "[admin]\nlisten = \"0.0.0.0:8025\"\ntoken_file = {:?}\n",
                p.display().to_string()
            )
        };
        let cfg = Config::from_toml_str(&text(&good), Path::new("t.toml")).unwrap();
        let token = cfg.admin.unwrap().token.unwrap();
        assert_eq!(token.as_str(), "0123456789abcdef0123");
        assert_eq!(format!("{token:?}"), "AdminToken(redacted)");
        assert!(issues(&text(&short))[0].contains("at least 16"));
        assert!(issues(&text(&dir.path().join("missing")))[0].contains("cannot read"));
        // Keys that do nothing without listen are pointed out.
        assert!(issues("[admin]\nmetrics_domains = [\"gmail.com\"]\n")[0]
            .starts_with("admin.metrics_domains:"));
    }
}
