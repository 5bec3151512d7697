//! Configuration errors a person can act on: file, line:column, key path, the problem and the fix.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The file as it was named (the `origin` given to `from_toml_str`).
    pub file: PathBuf,
    /// 1-based line and column (in characters), when known.
    pub location: Option<(usize, usize)>,
    /// Dotted key path such as `limits.max_recipients` or `users[0].name`; empty when unknown.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file ({via}): {source}; fix: {}", path.display(), read_fix(source))]
    Read {
        path: PathBuf,
        /// How the file was chosen: "--config", "$TERN_CONFIG" or the default location.
        via: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The TOML could not be parsed or did not fit the schema (stops at the first problem).
    #[error("{0}")]
    Parse(Issue),
    /// The file parsed but some values are invalid; every problem found is listed, one per line.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Issue>),
}

impl ConfigError {
    /// The individual problems (empty for `Read`).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Parse(issue) => std::slice::from_ref(issue),
            ConfigError::Invalid(issues) => issues,
        }
    }
}

fn join_lines(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(Issue::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_fix(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            "create the file, or name an existing one with --config or $TERN_CONFIG"
        }
        std::io::ErrorKind::PermissionDenied => "make the file readable by the user tern runs as",
        std::io::ErrorKind::InvalidData => "save the file as UTF-8 text",
        _ => "check the path and that it is a readable file",
    }
}

/// 1-based (line, column) of a byte offset; columns count characters, like editors do.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

/// Writes a key the way TOML would need it: bare when it can be, quoted otherwise.
pub(crate) fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Collects issues while a configuration is being validated.
pub(crate) struct Issues<'a> {
    text: &'a str,
    file: &'a Path,
    list: Vec<Issue>,
}

impl<'a> Issues<'a> {
    pub(crate) fn new(text: &'a str, file: &'a Path) -> Self {
        Issues {
            text,
            file,
            list: Vec::new(),
        }
    }

    pub(crate) fn add(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.list.push(Issue {
            file: self.file.to_path_buf(),
            location: span.map(|s| line_col(self.text, s.start)),
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    /// All issues in file order (unpositioned ones last), or `Ok` when there are none.
    pub(crate) fn finish(mut self) -> Result<(), Vec<Issue>> {
        if self.list.is_empty() {
            return Ok(());
        }
        // Stable sort: issues at the same place keep the order the checks found them in.
        self.list
            .sort_by_key(|i| i.location.unwrap_or((usize::MAX, usize::MAX)));
        Err(self.list)
    }
}

/// Turns a toml/serde error into an `Issue` with position, key path and a fix.
pub(crate) fn parse_issue(error: &toml::de::Error, text: &str, file: &Path) -> Issue {
    let span = error.span();
    // When the document itself parses, the error is about the schema (a key or a value's type);
    // otherwise it is TOML syntax and the key can only be guessed from the line.
    let document = DeTable::parse(text).ok();
    let key = match (&span, &document) {
        (Some(s), Some(table)) => key_path_in(table.get_ref(), s.start),
        (Some(s), None) => guess_key_path(text, s.start),
        (None, _) => None,
    }
    .unwrap_or_default();
    let (problem, fix) = explain(error.message(), &key, document.is_none());
    Issue {
        file: file.to_path_buf(),
        location: span.map(|s| line_col(text, s.start)),
        key,
        problem,
        fix,
    }
}

/// Rewrites serde's wording into the file's terms ("key", not "field") and picks a fix.
fn explain(message: &str, key: &str, syntax: bool) -> (String, String) {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let problem = match rest.split_once(", expected one of ") {
            Some((name, valid)) => format!("unknown key {name}; valid keys here: {valid}"),
            None => match rest.split_once(", expected ") {
                Some((name, valid)) => {
                    format!("unknown key {name}; the only valid key here is {valid}")
                }
                None => format!("unknown key {}", rest.split(',').next().unwrap_or(rest)),
            },
        };
        return (
            problem,
            "remove the key or correct its spelling (see docs/configuration.md)".into(),
        );
    }
    if let Some(name) = message.strip_prefix("missing field ") {
        let fix = format!("add {} = ... to this table", name.trim_matches('`'));
        return (format!("required key {name} is missing"), fix);
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        // serde names Rust types; say what a person writes in TOML instead.
        let problem = message
            .replace("expected i64", "expected a whole number")
            .replace("expected u64", "expected a whole number");
        return (problem, type_hint(key));
    }
    if syntax || key.is_empty() {
        return (
            message.to_string(),
            "correct the TOML syntax at this position (see https://toml.io)".into(),
        );
    }
    (message.to_string(), type_hint(key))
}

/// What a value of this key looks like, by the key's last name.
fn type_hint(key: &str) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    let hint = match last {
        "command_timeout"
        | "data_timeout"
        | "connect_timeout"
        | "attempt_timeout"
        | "max_age"
        | "delay_warning"
        | "min_data_rate_grace"
        | "interval" => "write a duration string such as \"30s\", \"5m\" or \"1h\"",
        "retry_schedule" => "write a list of durations such as [\"5m\", \"10m\", \"1h\"]",
        "max_message_size" | "max_header_size" | "max_data_memory" => {
            "write a number of bytes such as 26214400 (or a string such as \"25MiB\")"
        }
        "listen" => "write a list of addresses such as [\"127.0.0.1:25\", \"[::1]:25\"]",
        "nameservers" => "write a list of addresses such as [\"127.0.0.1:53\"]",
        "trusted_networks" | "deny_networks" | "allow_networks" => {
            "write a list of networks such as [\"127.0.0.0/8\", \"::1/128\"]"
        }
        "min_data_rate" => "write bytes per second such as 1024 (or a string such as \"1KiB\")",
        "domains" => "write a list of domain names such as [\"example.test\"]",
        "require_tls_for_auth"
        | "enforce_sender"
        | "catch_all"
        | "vrfy"
        | "expn"
        | "mta_sts"
        | "enabled"
        | "dane" => "write true or false",
        "users" => "write each user as a [[users]] table with name = \"user@domain\"",
        "headers" => "write a list of header field names such as [\"From\", \"Subject\"]",
        "subdomains" => "write true or false",
        "selector" | "key_file" => "write the value as a quoted string",
        "tls" if key == "tls" => "write a [tls] table with cert = \"...\" and key = \"...\"",
        "tls" => "write one of \"none\", \"opportunistic\", \"required\"",
        "hostname"
        | "helo_name"
        | "data_dir"
        | "level"
        | "format"
        | "cert"
        | "key"
        | "host"
        | "user"
        | "password"
        | "password_file"
        | "name"
        | "mta_sts_ca_file"
        | "dnssec_trust_anchor"
        | "organization"
        | "contact"
        | "from" => "write the value as a quoted string",
        _ if key.starts_with("routes.") => {
            "write \"host[:port]\" or a table { host = \"...\", port = 25, tls = \"required\" }"
        }
        _ if key.starts_with("aliases.") => {
            "write a list of addresses such as [\"alice@example.test\"]"
        }
        _ if key.starts_with("limits.")
            || last.ends_with("port")
            || last.starts_with("concurrency")
            || last == "max_received_headers" =>
        {
            "write a whole number without quotes"
        }
        _ => "use a value of the type shown in docs/configuration.md",
    };
    hint.to_string()
}

/// The dotted key path of the deepest key or value whose span contains `offset`, e.g. `users[1].name`.
fn key_path_in(table: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut path = Vec::new();
    if find_in_table(table, offset, &mut path) {
        Some(path.concat().trim_start_matches('.').to_string())
    } else {
        None
    }
}

/// For a document that does not parse: the key on the error's line, under the nearest `[table]` header.
fn guess_key_path(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| bare(k))?;
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|t| bare(t));
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(format!(".{}", quote_key(key.get_ref())));
        // Children first: a table's own span is only its header, and the deepest match names the key best.
        if find_in_value(value.get_ref(), offset, path)
            || contains(&key.span(), offset)
            || contains(&value.span(), offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    match value {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                if find_in_value(item.get_ref(), offset, path) || contains(&item.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_col(text, 12), (2, 6));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn key_quoting() {
        assert_eq!(quote_key("max_recipients"), "max_recipients");
        assert_eq!(quote_key("other.test"), "\"other.test\"");
        assert_eq!(quote_key("*"), "\"*\"");
    }

    #[test]
    fn key_paths_from_offsets() {
        let text = "hostname = \"x\"\n[limits]\nmax_recipients = 5\n[[users]]\nname = \"a\"\n[[users]]\nname = \"b\"\n[routes]\n\"p.test\" = { host = \"h\" }\n";
        let table = DeTable::parse(text).unwrap();
        let at = |needle: &str| key_path_in(table.get_ref(), text.find(needle).unwrap());
        assert_eq!(at("\"x\"").as_deref(), Some("hostname"));
        assert_eq!(at("5").as_deref(), Some("limits.max_recipients"));
        assert_eq!(at("[limits]").as_deref(), Some("limits"));
        assert_eq!(at("\"b\"").as_deref(), Some("users[1].name"));
        assert_eq!(at("\"h\"").as_deref(), Some("routes.\"p.test\".host"));
    }

    #[test]
    fn key_guessed_for_broken_documents() {
        let text = "a = 1\n[limits]\nmax_recipients = = 5\n";
        assert_eq!(
            guess_key_path(text, text.find("= 5").unwrap()).as_deref(),
            Some("limits.max_recipients")
        );
        assert_eq!(guess_key_path("x = = 1\n", 4).as_deref(), Some("x"));
        assert_eq!(guess_key_path("[limits\n", 7), None);
    }

    #[test]
    fn issue_display() {
        let issue = Issue {
            file: "tern.toml".into(),
            location: Some((7, 20)),
            key: "limits.command_timeout".into(),
            problem: "invalid duration \"5 minutes\"".into(),
            fix: "use a humantime duration".into(),
        };
        assert_eq!(
            issue.to_string(),
            "tern.toml:7:20: limits.command_timeout: invalid duration \"5 minutes\"; fix: use a humantime duration"
        );
        let bare = Issue {
            location: None,
            key: String::new(),
            ..issue
        };
        assert_eq!(
            bare.to_string(),
            "tern.toml: invalid duration \"5 minutes\"; fix: use a humantime duration"
        );
    }
}
