//! SASL mechanisms PLAIN (RFC 4616) and LOGIN used by SMTP AUTH (RFC 4954): decoding on the
//! server, encoding on the client. Payloads are never logged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed credentials")]
    Malformed,
}

/// Credentials extracted from a SASL exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: Option<String>,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

pub fn decode_base64(s: &str) -> Result<Vec<u8>, SaslError> {
    STANDARD.decode(s.trim()).map_err(|_| SaslError::Base64)
}

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`, base64-encoded.
pub fn decode_plain(b64: &str) -> Result<Credentials, SaslError> {
    let raw = decode_base64(b64)?;
    let mut parts = raw.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authz, username, password) = (text(authz)?, text(user)?, text(pass)?);
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        authzid: (!authz.is_empty()).then_some(authz),
        username,
        password,
    })
}

pub fn encode_plain(username: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(username.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(username.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    encode_base64(&raw)
}

/// One step of LOGIN: a base64 line holding a UTF-8 string.
pub fn decode_login_step(b64: &str) -> Result<String, SaslError> {
    String::from_utf8(decode_base64(b64)?).map_err(|_| SaslError::Malformed)
}

/// RFC 4954 4: a client answering "*" cancels the exchange.
pub fn is_cancel(line: &str) -> bool {
    line.trim() == "*"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_round_trip() {
        let c = decode_plain(&encode_plain("alice@example.test", "s3cret")).unwrap();
        assert_eq!(c.username, "alice@example.test");
        assert_eq!(c.password, "s3cret");
        assert_eq!(c.authzid, None);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn plain_errors() {
        assert_eq!(decode_plain("!!!"), Err(SaslError::Base64));
        assert_eq!(
            decode_plain(&encode_base64(b"nonuls")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&encode_base64(b"\0user\0")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&encode_base64(b"a\0b\0c\0d")),
            Err(SaslError::Malformed)
        );
        assert!(decode_plain(&encode_base64(b"admin\0user\0pw"))
            .unwrap()
            .authzid
            .is_some());
    }

    #[test]
    fn login_steps() {
        assert_eq!(decode_login_step("YWxpY2U=").unwrap(), "alice");
        assert!(is_cancel("*"));
    }
}
