//! `tls`: the `[tls]` certificate loads (as `tern serve` loads it), names the hostname in its
//! subjectAltName (RFC 6125 6.4.4: that, not the CN, is what clients match) and is within its
//! validity period. The few X.509 fields needed are read with a minimal DER walker: tern has no
//! X.509 parser, and names and dates are all this needs.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::json;

use super::{Check, Context, Status};

const ID: &str = "tls";
/// Renew before this: ACME clients renew at 30 days left, so less means renewal is failing.
const WARN_DAYS: i64 = 21;

pub(super) fn tls(ctx: &Context) -> Check {
    let Some(tls) = &ctx.cfg.tls else {
        return Check::new(
            ID,
            Status::Warn,
            "no [tls]: no STARTTLS, so Gmail marks your mail as not encrypted and senders deliver to you in clear text",
        )
        .fix(format!(
            "get a certificate for {} (e.g. from an ACME client such as certbot) and set [tls] cert and key",
            ctx.hostname
        ));
    };
    if let Err(e) = tern_server::TlsProvider::load(&tls.cert, &tls.key) {
        return Check::new(
            ID,
            Status::Fail,
            format!(
                "the certificate {} with key {} does not load: {e}",
                tls.cert.display(),
                tls.key.display()
            ),
        )
        .fix("point [tls] cert at the full chain (PEM) and key at its private key");
    }
    let leaf = match first_cert(&tls.cert) {
        Ok(c) => c,
        Err(e) => {
            return Check::new(ID, Status::Fail, e)
                .fix("point [tls] cert at a PEM certificate chain")
        }
    };
    let info = match parse(leaf.as_ref()) {
        Some(i) => i,
        None => {
            return Check::new(
                ID,
                Status::Warn,
                format!("cannot read the names and dates of {}", tls.cert.display()),
            )
        }
    };
    judge(
        &info,
        &ctx.hostname,
        chrono::Utc::now().timestamp(),
        &tls.cert,
    )
}

fn judge(info: &CertInfo, hostname: &str, now: i64, path: &Path) -> Check {
    let days_left = (info.not_after - now).div_euclid(86_400);
    let expires = chrono::DateTime::from_timestamp(info.not_after, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| info.not_after.to_string());
    let details = json!({
        "file": path.display().to_string(),
        "names": info.names,
        "not_after": expires,
        "days_left": days_left,
        "self_signed": info.self_signed,
    });
    let renew = format!("renew the certificate for {hostname} and reload tern (SIGHUP)");
    if !info.names.iter().any(|n| matches_name(n, hostname)) {
        return Check::new(
            ID,
            Status::Fail,
            format!(
                "the certificate is for {}, not {hostname}",
                if info.names.is_empty() {
                    "no DNS name".to_string()
                } else {
                    info.names.join(", ")
                }
            ),
        )
        .fix(format!(
            "get a certificate whose subjectAltName includes {hostname}"
        ))
        .details(details);
    }
    if now < info.not_before {
        return Check::new(
            ID,
            Status::Fail,
            "the certificate is not valid yet (check the clock)",
        )
        .fix(renew)
        .details(details);
    }
    if now >= info.not_after {
        return Check::new(
            ID,
            Status::Fail,
            format!("the certificate expired on {expires}"),
        )
        .fix(renew)
        .details(details);
    }
    let note = if info.self_signed {
        " (self-signed: senders encrypt but cannot authenticate it)"
    } else {
        ""
    };
    if days_left < WARN_DAYS {
        return Check::new(
            ID,
            Status::Warn,
            format!("the certificate for {hostname} expires in {days_left} days ({expires}){note}"),
        )
        .fix(renew)
        .details(details);
    }
    Check::new(
        ID,
        Status::Ok,
        format!(
            "the certificate covers {hostname}, valid until {expires} ({days_left} days){note}"
        ),
    )
    .details(details)
}

/// RFC 6125 6.4.3: a wildcard stands for exactly one whole left-most label.
fn matches_name(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match (pattern.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && suffix.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

fn first_cert(path: &Path) -> Result<CertificateDer<'static>, String> {
    let mut iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match iter.next() {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(format!("cannot read {}: {e}", path.display())),
        None => Err(format!("{} holds no certificate", path.display())),
    }
}

/// What the check needs of a certificate.
#[derive(Debug, PartialEq, Eq)]
struct CertInfo {
    not_before: i64,
    not_after: i64,
    /// subjectAltName dNSNames, else (no SAN extension) the subject CN.
    names: Vec<String>,
    self_signed: bool,
}

/// One DER TLV: (tag, content, rest). Definite lengths only (DER, X.690 10.1).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
const OID_CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3

/// RFC 5280 4.1: Certificate ::= SEQUENCE { tbsCertificate, ... }; TBSCertificate ::= SEQUENCE
/// { [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, [1], [2], [3] extensions }.
fn parse(der: &[u8]) -> Option<CertInfo> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (mut tag, mut field, mut next) = tlv(rest)?;
    if tag == 0xa0 {
        rest = next;
        (tag, field, next) = tlv(rest)?;
    }
    let _serial = (tag, field);
    let (_, _sig_alg, next) = tlv(next)?;
    let (_, issuer, next) = tlv(next)?;
    let (SEQUENCE, validity, next) = tlv(next)? else {
        return None;
    };
    let (_, subject, next) = tlv(next)?;
    let (_, _spki, mut next) = tlv(next)?;
    let (t1, before, vrest) = tlv(validity)?;
    let (t2, after, _) = tlv(vrest)?;
    let not_before = time(t1, before)?;
    let not_after = time(t2, after)?;
    let mut names = Vec::new();
    let mut has_san = false;
    while !next.is_empty() {
        let (tag, content, more) = tlv(next)?;
        next = more;
        if tag != 0xa3 {
            continue;
        }
        let (SEQUENCE, mut exts, _) = tlv(content)? else {
            return None;
        };
        while !exts.is_empty() {
            let (_, ext, more) = tlv(exts)?;
            exts = more;
            let (0x06, oid, mut ext_rest) = tlv(ext)? else {
                return None;
            };
            if oid != OID_SAN {
                continue;
            }
            has_san = true;
            // Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
            let (mut t, mut value, r) = tlv(ext_rest)?;
            if t == 0x01 {
                ext_rest = r;
                (t, value, _) = tlv(ext_rest)?;
            }
            if t != 0x04 {
                return None;
            }
            let (SEQUENCE, mut general_names, _) = tlv(value)? else {
                return None;
            };
            while !general_names.is_empty() {
                let (tag, name, more) = tlv(general_names)?;
                general_names = more;
                // GeneralName dNSName [2] IA5String (RFC 5280 4.2.1.6).
                if tag == 0x82 {
                    names.push(String::from_utf8_lossy(name).to_ascii_lowercase());
                }
            }
        }
    }
    if !has_san {
        names.extend(common_name(subject));
    }
    Some(CertInfo {
        not_before,
        not_after,
        names,
        self_signed: issuer == subject,
    })
}

/// The CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (_, set, more) = tlv(name)?;
        name = more;
        let (_, atv, _) = tlv(set)?;
        let (_, oid, value) = tlv(atv)?;
        if oid == OID_CN {
            let (_, text, _) = tlv(value)?;
            return Some(String::from_utf8_lossy(text).to_ascii_lowercase());
        }
    }
    None
}

/// UTCTime (YYMMDDHHMMSSZ; years 50-99 are 19xx, RFC 5280 4.1.2.5.1) or GeneralizedTime
/// (YYYYMMDDHHMMSSZ) as Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    let full = match tag {
        0x17 if digits.len() == 12 => {
            let yy: u32 = digits.get(..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{digits}")
        }
        0x18 if digits.len() == 14 => digits.to_string(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_and_dates_are_read_from_a_certificate() {
        let info = parse(&cert(&["mx.example.test", "*.example.test"])).unwrap();
        assert_eq!(info.names, ["mx.example.test", "*.example.test"]);
        assert!(info.self_signed);
        // rcgen's default validity: 1975 to 4096.
        assert_eq!(info.not_before, 157_766_400, "1975-01-01");
        assert!(
            info.not_after > 4_000_000_000,
            "4096-01-01, a GeneralizedTime"
        );
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(matches_name("*.example.test", "mx.example.test"));
        assert!(!matches_name("*.example.test", "a.mx.example.test"));
        assert!(!matches_name("*.example.test", "example.test"));
        assert!(matches_name("MX.example.test", "mx.example.test"));
    }

    #[test]
    fn expiry_warns_then_fails() {
        let info = CertInfo {
            not_before: 0,
            not_after: 100 * 86_400,
            names: vec!["mx.example.test".into()],
            self_signed: false,
        };
        let p = Path::new("c.pem");
        assert_eq!(judge(&info, "mx.example.test", 0, p).status, Status::Ok);
        assert_eq!(
            judge(&info, "mx.example.test", 90 * 86_400, p).status,
            Status::Warn
        );
        assert_eq!(
            judge(&info, "mx.example.test", 100 * 86_400, p).status,
            Status::Fail
        );
        assert_eq!(judge(&info, "other.test", 0, p).status, Status::Fail);
    }

    #[test]
    fn times_parse_in_both_forms() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x18, b"19700102000000Z"), Some(86_400));
        assert_eq!(time(0x17, b"7001010000Z"), None);
    }
}
