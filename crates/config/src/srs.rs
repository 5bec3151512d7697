//! `[srs]`: the Sender Rewriting Scheme for mail that a local alias forwards off-host. The
//! secret file is read here, at load time, so that a missing or weak secret is a start-up error
//! (and a `tern check-config` finding) rather than forwarded mail that fails SPF.

use std::fmt;
use std::path::PathBuf;

use toml::Spanned;

use crate::defaults;
use crate::error::Issues;
use crate::fields::{domain_name, file_fix};
use crate::raw::RawConfig;
use crate::values::parse_duration;

/// Shortest secret accepted, in bytes: an HMAC key much shorter than this can be guessed from
/// a few SRS addresses seen in the wild (`tern srs keygen` writes 32 random bytes as base64).
pub const MIN_SECRET_LEN: usize = 16;

/// Longest `srs.max_age`, in days. The SRS timestamp counts days modulo 1024 (two base32
/// characters), so an age near 1024 days could not tell an old stamp from a new one; a bounce
/// arrives within days, so a year is more than any bounce needs.
pub const MAX_AGE_DAYS_CAP: u16 = 365;

/// `[srs]` when SRS is on (a secret is configured); `Config::srs` is `None` when it is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrsConfig {
    /// The file the secrets were read from.
    pub secret_file: PathBuf,
    pub secrets: SrsSecrets,
    /// The domain of every SRS address tern writes (`SRS0=...@domain`); bounces come back to it,
    /// so its MX must be this host, and its SPF record must allow this host to send.
    pub domain: String,
    /// An SRS address whose timestamp is older than this many days is refused (1..=365).
    pub max_age_days: u16,
}

/// The HMAC keys, one per line of the secret file: the first signs new SRS addresses, every one
/// verifies (so a new secret can be put first while addresses made with the old one still come
/// back). Never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct SrsSecrets {
    signing: Vec<u8>,
    verify_only: Vec<Vec<u8>>,
}

impl SrsSecrets {
    /// `None` when `lines` is empty.
    pub fn new(mut lines: Vec<Vec<u8>>) -> Option<Self> {
        if lines.is_empty() {
            return None;
        }
        let signing = lines.remove(0);
        Some(Self {
            signing,
            verify_only: lines,
        })
    }

    /// The key new SRS addresses are made with.
    pub fn signing(&self) -> &[u8] {
        &self.signing
    }

    /// Every key an incoming SRS address may have been made with, the signing one first.
    pub fn all(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.signing.as_slice()).chain(self.verify_only.iter().map(Vec::as_slice))
    }
}

// Hand-written so a stray `{:?}` of the configuration never logs a secret.
impl fmt::Debug for SrsSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SrsSecrets({} keys, redacted)",
            1 + self.verify_only.len()
        )
    }
}

/// Validates `[srs]`: `None` (SRS off) without `secret_file`.
pub(crate) fn srs(v: &mut Issues, raw: &RawConfig, hostname: &str) -> Option<SrsConfig> {
    let r = &raw.srs;
    let Some(file) = &r.secret_file else {
        // A domain or max_age without a secret does nothing: say so rather than forward with
        // the original sender while the admin believes SRS is on.
        for (key, value) in [("srs.domain", &r.domain), ("srs.max_age", &r.max_age)] {
            if let Some(value) = value {
                v.add(
                    Some(value.span()),
                    key,
                    format!("{key} is set but srs.secret_file is not, so SRS is off"),
                    "set srs.secret_file to a file made with `tern srs keygen --out FILE`, or remove the [srs] table",
                );
            }
        }
        return None;
    };
    let secrets = secrets(v, file);
    let domain = match &r.domain {
        Some(d) => domain_name(v, d, "srs.domain"),
        None => Some(hostname.to_string()),
    };
    let max_age_days = max_age(v, &r.max_age);
    Some(SrsConfig {
        secret_file: PathBuf::from(file.get_ref()),
        secrets: secrets?,
        domain: domain?,
        max_age_days,
    })
}

fn secrets(v: &mut Issues, file: &Spanned<String>) -> Option<SrsSecrets> {
    let path = PathBuf::from(file.get_ref());
    let keygen = format!(
        "create one with `tern srs keygen --out {}`",
        if file.get_ref().trim().is_empty() {
            "FILE".to_string()
        } else {
            path.display().to_string()
        }
    );
    let problem = |v: &mut Issues, problem: String, fix: String| {
        v.add(Some(file.span()), "srs.secret_file", problem, fix);
        None
    };
    if file.get_ref().trim().is_empty() {
        return problem(v, "the path is empty".into(), keygen);
    }
    let bytes = match crate::files::read_bounded(&path, crate::files::MAX_SMALL_FILE) {
        Ok(b) => b,
        Err(e) => {
            return problem(
                v,
                format!("cannot read \"{}\": {e}", path.display()),
                format!("{}, or {keygen}", file_fix(&e)),
            )
        }
    };
    let mut lines = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if line.len() < MIN_SECRET_LEN {
            return problem(
                v,
                format!(
                    "line {} of \"{}\" is a secret of {} bytes; at least {MIN_SECRET_LEN} are needed",
                    n + 1,
                    path.display(),
                    line.len()
                ),
                format!("replace it with a long random secret ({keygen} and copy its line)"),
            );
        }
        lines.push(line.to_vec());
    }
    match SrsSecrets::new(lines) {
        Some(s) => Some(s),
        None => problem(
            v,
            format!("\"{}\" holds no secret (it is empty)", path.display()),
            keygen,
        ),
    }
}

fn max_age(v: &mut Issues, value: &Option<Spanned<String>>) -> u16 {
    let Some(value) = value else {
        return defaults::SRS_MAX_AGE_DAYS;
    };
    const DAY: u64 = 86_400;
    let text = value.get_ref();
    let days = match parse_duration(text) {
        Ok(d) if d.as_secs() % DAY == 0 && d.subsec_nanos() == 0 => Some(d.as_secs() / DAY),
        _ => None,
    };
    match days {
        Some(d) if (1..=u64::from(MAX_AGE_DAYS_CAP)).contains(&d) => {
            u16::try_from(d).unwrap_or(defaults::SRS_MAX_AGE_DAYS)
        }
        _ => {
            v.add(
                Some(value.span()),
                "srs.max_age",
                format!(
                    "\"{text}\" is not a whole number of days from 1 to {MAX_AGE_DAYS_CAP} (the SRS timestamp counts days)"
                ),
                format!(
                    "write days such as \"{}d\" (the default)",
                    defaults::SRS_MAX_AGE_DAYS
                ),
            );
            defaults::SRS_MAX_AGE_DAYS
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Config, ConfigError};

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("tern.toml"))
    }

    fn rejects(text: &str, needles: &[&str]) {
        let message = match load(text) {
            Ok(_) => panic!("config should be rejected:\n{text}"),
            Err(e) => e.to_string(),
        };
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in:\n{message}");
        }
    }

    fn secret_file(dir: &Path, text: &str) -> String {
        let path = dir.join("srs.secret");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn off_without_a_secret() {
        assert_eq!(load("").unwrap().srs, None);
        assert_eq!(load("[srs]\n").unwrap().srs, None);
    }

    #[test]
    fn defaults_with_a_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret_file(
            dir.path(),
            "first-secret-0123456789\n\n  older-secret-0123456789  \r\n",
        );
        let cfg = load(&format!(
            "hostname = \"mx.tern.test\"\n[srs]\nsecret_file = {file:?}\n"
        ))
        .unwrap();
        let srs = cfg.srs.unwrap();
        assert_eq!(
            srs.domain, "mx.tern.test",
            "the domain defaults to the hostname"
        );
        assert_eq!(srs.max_age_days, 21);
        assert_eq!(srs.secrets.signing(), b"first-secret-0123456789");
        let all: Vec<&[u8]> = srs.secrets.all().collect();
        assert_eq!(
            all,
            [&b"first-secret-0123456789"[..], b"older-secret-0123456789"]
        );
        assert!(!format!("{:?}", srs.secrets).contains("secret-0123"));
    }

    #[test]
    fn domain_and_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret_file(dir.path(), "0123456789abcdef0123\n");
        let cfg = load(&format!(
            "[srs]\nsecret_file = {file:?}\ndomain = \"Fwd.Tern.Test.\"\nmax_age = \"7d\"\n"
        ))
        .unwrap();
        let srs = cfg.srs.unwrap();
        assert_eq!(
            (srs.domain.as_str(), srs.max_age_days),
            ("fwd.tern.test", 7)
        );
    }

    #[test]
    fn bad_values_are_named_with_their_fix() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_file(dir.path(), "0123456789abcdef0123\n");
        rejects(
            "[srs]\ndomain = \"fwd.tern.test\"\n",
            &["srs.domain", "srs.secret_file is not", "tern srs keygen"],
        );
        rejects(
            "[srs]\nsecret_file = \"/nonexistent/srs.secret\"\n",
            &[
                "srs.secret_file",
                "cannot read",
                "tern srs keygen --out /nonexistent/srs.secret",
            ],
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "long-enough-secret-123\nshort\n").unwrap();
        rejects(
            &format!("[srs]\nsecret_file = {:?}\n", short.display().to_string()),
            &["srs.secret_file", "line 2", "at least 16"],
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n\n").unwrap();
        rejects(
            &format!("[srs]\nsecret_file = {:?}\n", empty.display().to_string()),
            &["srs.secret_file", "holds no secret"],
        );
        for age in ["\"36h\"", "\"0d\"", "\"400d\"", "\"soon\""] {
            rejects(
                &format!("[srs]\nsecret_file = {good:?}\nmax_age = {age}\n"),
                &["srs.max_age", "whole number of days", "\"21d\""],
            );
        }
        rejects(
            &format!("[srs]\nsecret_file = {good:?}\ndomain = \"not a domain\"\n"),
            &["srs.domain", "not a valid domain name"],
        );
        rejects("[srs]\nsecret = \"x\"\n", &["secret"]);
    }
}
