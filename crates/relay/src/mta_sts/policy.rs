//! The MTA-STS records and policies themselves (RFC 8461 3.1, 3.2, 4.1): the `_mta-sts` TXT
//! record, the policy file's `key: value` lines, and which MX hosts a policy's patterns allow.
//! No I/O.

use std::time::Duration;

/// RFC 8461 3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_AGE_CAP: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed policy (RFC 8461 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// The `mx` patterns, lower case, without trailing dots: `mail.example.com` or
    /// `*.example.com`.
    pub mx: Vec<String>,
    /// Capped at [`MAX_AGE_CAP`].
    pub max_age: Duration,
}

impl Policy {
    /// True when `host` (an MX name) matches one of the policy's `mx` patterns.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }

    /// The patterns as the policy lists them, for messages.
    pub fn patterns(&self) -> String {
        if self.mx.is_empty() {
            "none".into()
        } else {
            self.mx.join(", ")
        }
    }
}

/// A policy that applies to one delivery: its domain and the policy (mode enforce or testing).
#[derive(Debug, Clone)]
pub struct Applied {
    pub domain: String,
    pub policy: Policy,
}

/// RFC 8461 4.1: `mail.example.com` matches itself only; `*.example.com` matches exactly one
/// more label on the left (`mx1.example.com`, not `example.com` nor `a.b.example.com`).
/// Case-insensitive, trailing dots ignored.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && !suffix.is_empty() && rest == suffix,
            None => false,
        },
        None => pattern == host,
    }
}

/// Parses a policy body (RFC 8461 3.2): `key: value` lines (CRLF or LF), `version: STSv1`,
/// `mode`, `max_age` required, `mx` (one or more) required unless the mode is `none`. Unknown
/// keys are ignored; of a repeated key other than `mx` the first counts.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("policy line without \":\": {:?}", clip(line)));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" if version.is_none() => version = Some(value.to_string()),
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {:?}", clip(other))),
                })
            }
            "max_age" if max_age.is_none() => {
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!("invalid max_age {:?}", clip(value)));
                }
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("invalid max_age {:?}", clip(value)))?;
                max_age = Some(Duration::from_secs(secs.min(MAX_AGE_CAP)));
            }
            "mx" => {
                let p = value.trim_end_matches('.').to_ascii_lowercase();
                if !valid_pattern(&p) {
                    return Err(format!("invalid mx pattern {:?}", clip(value)));
                }
                mx.push(p);
            }
            _ => {}
        }
    }
    match version.as_deref() {
        Some("STSv1") => {}
        Some(v) => return Err(format!("unsupported version {:?}", clip(v))),
        None => return Err("no version field".into()),
    }
    let mode = mode.ok_or("no mode field")?;
    let max_age = max_age.ok_or("no max_age field")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx field".into());
    }
    Ok(Policy { mode, mx, max_age })
}

fn valid_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// What the `_mta-sts` TXT lookup says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txt {
    /// Exactly one `v=STSv1` record, with this `id`.
    Id(String),
    /// No record, or not exactly one valid one (RFC 8461 3.1: no MTA-STS then).
    Absent(String),
    /// The DNS could not say (SERVFAIL, timeout).
    Unknown(String),
}

/// RFC 8461 3.1: records not starting with `v=STSv1;` are discarded; exactly one must remain,
/// with an `id` of 1 to 32 letters and digits.
pub fn parse_txt(records: &[Vec<u8>]) -> Txt {
    let sts: Vec<&[u8]> = records
        .iter()
        .map(Vec::as_slice)
        .filter(|r| r.starts_with(b"v=STSv1"))
        .collect();
    let [record] = sts.as_slice() else {
        return Txt::Absent(format!("{} v=STSv1 records", sts.len()));
    };
    let Ok(text) = std::str::from_utf8(record) else {
        return Txt::Absent("the record is not UTF-8".into());
    };
    let mut fields = text.split(';').map(str::trim);
    if fields.next() != Some("v=STSv1") {
        return Txt::Absent("the record does not start with v=STSv1;".into());
    }
    for field in fields {
        if let Some(id) = field.strip_prefix("id=") {
            let id = id.trim();
            if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Txt::Id(id.to_string());
            }
            return Txt::Absent(format!("invalid id {:?}", clip(id)));
        }
    }
    Txt::Absent("the record has no id".into())
}
