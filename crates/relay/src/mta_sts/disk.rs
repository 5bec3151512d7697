//! The MTA-STS policy cache on disk (RFC 8461 5.1: a sender keeps the policies it has seen for
//! their `max_age`). Without it a restart forgets every policy, and an attacker who blocks the
//! HTTPS fetch for a while after it downgrades `enforce` domains to plain opportunistic TLS.
//!
//! One small file per domain, `<data_dir>/mta-sts/<domain>.policy`, in the policy's own syntax
//! (RFC 8461 3.2) after two lines of tern's own: the TXT `id` it was fetched under and the wall
//! clock time it expires at (Unix seconds). Written to a temporary name and renamed, so a crash
//! leaves the old file or the new one; not fsync'd: it is a cache, and losing the newest entry
//! to a power failure only means fetching it again.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::policy::{parse_policy, Policy};

/// A policy file is a handful of lines; anything bigger is not ours.
const MAX_FILE: u64 = 64 * 1024;

/// The directory under `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mta-sts")
}

/// The file of `domain`, or None when the name could not be a file name of ours (the domain
/// came from a recipient address: only lower-case LDH labels and dots are used as names).
fn file(data_dir: &Path, domain: &str) -> Option<PathBuf> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then(|| dir(data_dir).join(format!("{domain}.policy")))
}

/// The cached policy of `domain`: its TXT id, the policy and when it expires. None when there
/// is no file, it cannot be read or parsed (logged), or it has expired (and is removed).
pub fn load(data_dir: &Path, domain: &str) -> Option<(String, Policy, SystemTime)> {
    let path = file(data_dir, domain)?;
    let text = match read_bounded(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "relay: cannot read a cached MTA-STS policy");
            return None;
        }
    };
    match decode(&text) {
        Some((id, policy, expires)) if expires > SystemTime::now() => Some((id, policy, expires)),
        Some(_) => {
            let _ = std::fs::remove_file(&path);
            None
        }
        None => {
            tracing::warn!(path = %path.display(), "relay: ignoring a cached MTA-STS policy that does not parse");
            None
        }
    }
}

/// Keeps `policy` (fetched under TXT `id`) for `domain` until `expires`. A failure is logged:
/// the policy still applies from memory.
pub fn save(data_dir: &Path, domain: &str, id: &str, policy: &Policy, expires: SystemTime) {
    let Some(path) = file(data_dir, domain) else {
        return;
    };
    let result = (|| -> io::Result<()> {
        std::fs::create_dir_all(dir(data_dir))?;
        let tmp = path.with_extension("policy.tmp");
        std::fs::write(&tmp, encode(id, policy, expires))?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "relay: cannot cache the MTA-STS policy on disk");
    }
}

fn read_bounded(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

fn encode(id: &str, policy: &Policy, expires: SystemTime) -> String {
    let secs = expires
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    // The id is from a TXT record already checked to be 1-32 alphanumerics (RFC 8461 3.1).
    let mut out = format!(
        "tern-id: {id}\ntern-expires: {secs}\nversion: STSv1\nmode: {}\n",
        policy.mode
    );
    for mx in &policy.mx {
        out.push_str(&format!("mx: {mx}\n"));
    }
    out.push_str(&format!("max_age: {}\n", policy.max_age.as_secs()));
    out
}

fn decode(text: &str) -> Option<(String, Policy, SystemTime)> {
    let (first, rest) = text.split_once('\n')?;
    let (second, policy_text) = rest.split_once('\n')?;
    let id = first.strip_prefix("tern-id: ")?.trim();
    let secs: u64 = second.strip_prefix("tern-expires: ")?.trim().parse().ok()?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let policy = parse_policy(policy_text).ok()?;
    Some((
        id.to_string(),
        policy,
        UNIX_EPOCH + Duration::from_secs(secs),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::policy::Mode;
    use super::*;

    fn policy() -> Policy {
        Policy {
            mode: Mode::Enforce,
            mx: vec!["mx.example.test".into(), "*.example.test".into()],
            max_age: Duration::from_secs(86400),
        }
    }

    #[test]
    fn a_saved_policy_loads_back_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        save(dir.path(), "example.test", "abc123", &policy(), later);
        let (id, p, expires) = load(dir.path(), "example.test").unwrap();
        assert_eq!((id.as_str(), &p), ("abc123", &policy()));
        assert_eq!(
            expires.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            later.duration_since(UNIX_EPOCH).unwrap().as_secs()
        );
        // Expired: gone, and the file with it.
        let past = SystemTime::now() - Duration::from_secs(1);
        save(dir.path(), "old.test", "x1", &policy(), past);
        assert!(load(dir.path(), "old.test").is_none());
        assert!(!dir.path().join("mta-sts/old.test.policy").exists());
    }

    #[test]
    fn names_that_are_not_plain_domains_are_never_files() {
        let dir = tempfile::tempdir().unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        for bad in ["../etc", "a/b.test", "", ".hidden", "UPPER.test", "a..b"] {
            save(dir.path(), bad, "id1", &policy(), later);
            assert!(load(dir.path(), bad).is_none(), "{bad}");
        }
        assert!(!dir.path().join("mta-sts").exists());
    }

    #[test]
    fn a_damaged_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mta-sts")).unwrap();
        for text in [
            "garbage",
            "tern-id: a\ntern-expires: soon\nversion: STSv1\n",
            "tern-id: bad id!\ntern-expires: 99999999999\nversion: STSv1\nmode: enforce\nmx: a.test\nmax_age: 5\n",
            "tern-id: a\ntern-expires: 99999999999\nversion: STSv2\n",
        ] {
            std::fs::write(dir.path().join("mta-sts/d.test.policy"), text).unwrap();
            assert!(load(dir.path(), "d.test").is_none(), "{text:?}");
        }
    }
}
