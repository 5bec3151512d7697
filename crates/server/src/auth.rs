//! Password checks for SMTP AUTH against `[[users]]` argon2 hashes. CPU-heavy by design, so the
//! driver runs it on the blocking pool, never on an async worker.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

use tern_config::Config;
use tern_proto::sasl::Credentials;

/// The canonical user name if the credentials are right. Unknown users cost the same time as
/// known ones (a dummy hash is verified) so timing does not reveal which names exist.
pub fn verify(cfg: &Config, creds: &Credentials) -> Option<String> {
    if creds
        .authzid
        .as_deref()
        .is_some_and(|z| !z.eq_ignore_ascii_case(&creds.username))
    {
        return None;
    }
    let user = cfg.user(&creds.username);
    let hash = user
        .and_then(|u| u.password.as_deref())
        .unwrap_or(DUMMY_HASH);
    let parsed = PasswordHash::new(hash).ok()?;
    let ok = Argon2::default()
        .verify_password(creds.password.as_bytes(), &parsed)
        .is_ok();
    match (ok, user) {
        (true, Some(u)) if u.password.is_some() => Some(u.name.clone()),
        _ => None,
    }
}

/// argon2id hash of a random password nobody knows.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi";

/// `tern passwd`: an argon2id hash with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn verifies_hashes() {
        let hash = hash_password("correct horse").unwrap();
        let cfg = Config::from_toml_str(
            &format!("hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n[[users]]\nname = \"alice@tern.test\"\npassword = \"{hash}\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        let creds = |u: &str, p: &str| Credentials {
            authzid: None,
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(
            verify(&cfg, &creds("alice@tern.test", "correct horse")).as_deref(),
            Some("alice@tern.test")
        );
        assert_eq!(
            verify(&cfg, &creds("ALICE@tern.test", "correct horse")).as_deref(),
            Some("alice@tern.test")
        );
        assert_eq!(verify(&cfg, &creds("alice@tern.test", "wrong")), None);
        assert_eq!(verify(&cfg, &creds("bob@tern.test", "correct horse")), None);
    }
}
