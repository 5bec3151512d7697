//! `[[users]] password`: the argon2 PHC string is parsed in full when the configuration is
//! loaded, so a hash that could never verify (or that would exhaust the host when it is
//! verified) is a configuration error, not a surprise at a user's first AUTH.

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Params, Version};

/// Memory cost cap, in KiB (1 GiB). `tern passwd` writes 19 MiB (the argon2 crate's default,
/// the OWASP minimum); a PHC string may ask for up to 4 TiB, and the allocation failing inside
/// the verifier would abort the whole server, not just refuse one login.
pub const MAX_M_COST_KIB: u32 = 1 << 20;
/// Iteration cap: verification runs on the blocking pool, and a huge `t` would pin a thread
/// there for hours per AUTH attempt.
pub const MAX_T_COST: u32 = 64;

/// Why `hash` is not an argon2 PHC string the AUTH verifier can use, or `Ok`.
pub(crate) fn check_phc(hash: &str) -> Result<(), String> {
    // The PHC string format (password-hash crate): $alg$v=..$params$salt$hash.
    let parsed = PasswordHash::new(hash).map_err(|e| format!("not a PHC string ({e})"))?;
    Algorithm::try_from(parsed.algorithm).map_err(|_| {
        format!(
            "unknown algorithm \"{}\" (expected argon2id, argon2i or argon2d)",
            parsed.algorithm
        )
    })?;
    if let Some(v) = parsed.version {
        Version::try_from(v).map_err(|_| format!("unsupported argon2 version v={v}"))?;
    }
    // m, t, p and the output length, checked the way the verifier will build them.
    let params = Params::try_from(&parsed).map_err(|e| format!("invalid parameters ({e})"))?;
    if params.m_cost() > MAX_M_COST_KIB {
        return Err(format!(
            "memory cost m={} KiB is above the {MAX_M_COST_KIB} KiB (1 GiB) tern verifies",
            params.m_cost()
        ));
    }
    if params.t_cost() > MAX_T_COST {
        return Err(format!(
            "time cost t={} is above the {MAX_T_COST} iterations tern verifies",
            params.t_cost()
        ));
    }
    let Some(salt) = parsed.salt else {
        return Err("the salt is missing".into());
    };
    let mut buf = [0u8; 64];
    let salt = salt
        .decode_b64(&mut buf)
        .map_err(|e| format!("the salt is not valid base64 ({e})"))?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(format!(
            "the salt is {} bytes, argon2 needs at least {}",
            salt.len(),
            argon2::MIN_SALT_LEN
        ));
    }
    if parsed.hash.is_none() {
        return Err("the hash output is missing".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_phc;

    /// `tern passwd`'s output shape (argon2id, v=19, m=19456, t=2, p=1, 16-byte salt, 32-byte hash).
    const GOOD: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi";

    #[test]
    fn a_tern_passwd_hash_passes() {
        assert_eq!(check_phc(GOOD), Ok(()));
        assert_eq!(check_phc(&GOOD.replace("argon2id", "argon2i")), Ok(()));
    }

    #[test]
    fn malformed_hashes_are_named() {
        let cases = [
            ("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ", "the hash output is missing"),
            ("$argon2id", "the salt is missing"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$!!!", "not a PHC string"),
            ("$argon2xx$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "unknown algorithm \"argon2xx\""),
            ("$argon2id$v=17$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "unsupported argon2 version v=17"),
            ("$argon2id$v=19$m=1,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "invalid parameters"),
            ("$argon2id$v=19$m=19456,t=2,p=1,x=3$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "invalid parameters"),
            ("$argon2id$v=19$m=4294967295,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "memory cost m=4294967295 KiB"),
            ("$argon2id$v=19$m=19456,t=100000,p=1$c29tZXNhbHRzb21lc2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "time cost t=100000"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$dGtqZWR6bXVuM3JzdGh1ZGVzbG1udGVzdGFi", "the salt is 4 bytes"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$dA", "output size too short"),
        ];
        for (hash, want) in cases {
            match check_phc(hash) {
                Ok(()) => panic!("{hash} was accepted"),
                Err(e) => assert!(e.contains(want), "{hash}: expected {want:?}, got {e:?}"),
            }
        }
    }
}
