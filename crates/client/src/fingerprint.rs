//! SHA-256 certificate fingerprints, for pinning a server's certificate (`tern send
//! --tls-fingerprint`, msmtp's `tls_fingerprint`): parsed from the forms people paste, written the
//! way `openssl x509 -noout -fingerprint -sha256` prints them.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 digest of a DER certificate (32 octets). Built only by [`CertFingerprint::of`] or
/// by parsing, so it always has exactly the length SHA-256 gives.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

/// Why a string is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("empty fingerprint")]
    Empty,
    #[error("{0:?} is not a hexadecimal digit")]
    NotHex(char),
    #[error("with colons, every byte is two hex digits (AB:CD:...)")]
    BadGroup,
    /// 20 octets is what `openssl x509 -fingerprint` prints without `-sha256`.
    #[error("{0} bytes is a SHA-1 fingerprint; give the SHA-256 one (openssl x509 -noout -fingerprint -sha256 -in CERT)")]
    Sha1(usize),
    #[error("{0} bytes; a SHA-256 fingerprint has 32 (64 hex digits)")]
    Length(usize),
}

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        // SHA-256 output is always 32 octets; copy_from_slice would panic otherwise, so zip.
        for (o, d) in out.iter_mut().zip(digest.as_ref()) {
            *o = *d;
        }
        CertFingerprint(out)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Accepts 64 hex digits, or 32 colon-separated pairs (`AB:CD:...`), in either case, with an
    /// optional `sha256:` / `SHA256:` prefix, or openssl's whole output line
    /// (`sha256 Fingerprint=AB:CD:...`). Surrounding white space is ignored.
    pub fn parse(s: &str) -> Result<Self, FingerprintError> {
        let mut s = s.trim();
        for prefix in ["sha256 fingerprint=", "sha256:", "sha256="] {
            if s.len() >= prefix.len()
                && s.is_char_boundary(prefix.len())
                && s[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                s = s[prefix.len()..].trim_start();
                break;
            }
        }
        if s.is_empty() {
            return Err(FingerprintError::Empty);
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit() && *c != ':') {
            return Err(FingerprintError::NotHex(c));
        }
        let digits: Vec<u8> = if s.contains(':') {
            if s.split(':').any(|group| group.len() != 2) {
                return Err(FingerprintError::BadGroup);
            }
            s.bytes().filter(|b| *b != b':').collect()
        } else {
            s.bytes().collect()
        };
        let octets = digits.len() / 2;
        match (digits.len() % 2, octets) {
            (0, 32) => {}
            (0, 20) => return Err(FingerprintError::Sha1(20)),
            _ => return Err(FingerprintError::Length(octets)),
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
            *o = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(CertFingerprint(out))
    }
}

/// The value of an ASCII hex digit (already checked by the caller; anything else is 0).
fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

impl FromStr for CertFingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `AB:CD:...`, upper case, as openssl prints it (so a user can compare it by eye).
impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256("abc"), FIPS 180-2 appendix B.1.
    const ABC: &str = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";

    #[test]
    fn digest_and_display() {
        let fp = CertFingerprint::of(b"abc");
        let colons: Vec<String> = ABC
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        assert_eq!(fp.to_string(), colons.join(":"));
    }

    #[test]
    fn the_forms_msmtp_and_openssl_users_paste() {
        let want = CertFingerprint::of(b"abc");
        let colons = want.to_string();
        for s in [
            ABC.to_string(),
            ABC.to_lowercase(),
            colons.clone(),
            colons.to_lowercase(),
            format!("sha256:{ABC}"),
            format!("SHA256:{colons}"),
            format!("sha256 Fingerprint={colons}"),
            format!("SHA256 Fingerprint={colons}\n"),
            format!("  {ABC}  "),
        ] {
            assert_eq!(CertFingerprint::parse(&s), Ok(want), "{s:?}");
        }
    }

    #[test]
    fn wrong_inputs_say_why() {
        use FingerprintError::*;
        assert_eq!(CertFingerprint::parse(""), Err(Empty));
        assert_eq!(CertFingerprint::parse("sha256:"), Err(Empty));
        assert_eq!(CertFingerprint::parse(&ABC[..40]), Err(Sha1(20)));
        assert_eq!(CertFingerprint::parse(&ABC[..62]), Err(Length(31)));
        assert_eq!(CertFingerprint::parse(&ABC[..63]), Err(Length(31)));
        assert_eq!(CertFingerprint::parse(&format!("{ABC}00")), Err(Length(33)));
        assert_eq!(
            CertFingerprint::parse(&ABC.replace('B', "x")),
            Err(NotHex('x'))
        );
        assert_eq!(CertFingerprint::parse("sha1:AB"), Err(NotHex('s')));
        assert_eq!(CertFingerprint::parse("ABC:D"), Err(BadGroup));
        assert_eq!(CertFingerprint::parse("é"), Err(NotHex('é')));
        assert!(Sha1(20).to_string().contains("-sha256"));
    }
}
