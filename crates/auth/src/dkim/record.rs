//! The DNS side of a DKIM key: the TXT record to publish at `<selector>._domainkey.<domain>`
//! (RFC 6376 3.6.2.1) and whether what is published there matches a key.

use base64::Engine;
use mail_auth::common::crypto::SigningKey;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;

use crate::dkim::key::PrivateKey;

/// RFC 1035 3.3: one character-string holds at most 255 octets; longer TXT data is split
/// into several strings, which DKIM verifiers join again (RFC 6376 3.6.2.2).
const TXT_STRING_MAX: usize = 255;

/// The TXT record that publishes a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimRecord {
    /// `<selector>._domainkey.<domain>`, without the trailing dot.
    pub name: String,
    /// The record's text, e.g. `v=DKIM1; k=ed25519; p=...`.
    pub value: String,
}

impl DkimRecord {
    /// The record for `key` published under `selector` of `domain`.
    pub fn new(domain: &str, selector: &str, key: &PrivateKey) -> Self {
        let p = base64::engine::general_purpose::STANDARD.encode(key.public_key());
        Self {
            name: format!("{selector}._domainkey.{}", domain.trim_end_matches('.')),
            value: format!("v=DKIM1; k={}; p={p}", key.key_type().record_tag()),
        }
    }

    /// The record as a zone-file line, its text split into strings of at most 255 octets:
    /// `s._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p=MIIB..." "..."`.
    pub fn zone_line(&self) -> String {
        let strings: Vec<String> = self
            .value
            .as_bytes()
            .chunks(TXT_STRING_MAX)
            // The value is ASCII (tags and base64), so every chunk is whole characters.
            .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
            .collect();
        format!("{}. IN TXT {}", self.name, strings.join(" "))
    }
}

/// What the published records say about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordCheck {
    /// A DKIM record is published and verifies signatures made with the key.
    Matches,
    /// No TXT record with a DKIM key at that name.
    Missing,
    /// DKIM records are published but none fits the key; one line per record and why.
    Mismatch(Vec<String>),
}

/// Compares the TXT records found at the key's name (each with its strings joined) with
/// `key`. A record matches when a signature made with `key` verifies under the published
/// key, which is the test a receiver applies; the record is parsed by mail-auth, the same
/// parser tern will verify inbound mail with.
pub fn check_record(key: &PrivateKey, records: &[Vec<u8>]) -> RecordCheck {
    let probe = b"tern dkim check: does the published key verify this?";
    let signed = key.signing_key().sign(&probe[..]);
    let mut problems = Vec::new();
    for raw in records {
        let text = String::from_utf8_lossy(raw);
        let trimmed = text.trim_start();
        // RFC 6376 3.6.1: v= is optional but, when present, first; other TXT records at the
        // name (none should exist) are not DKIM keys.
        if !(trimmed.starts_with("v=DKIM1") || trimmed.contains("p=")) {
            continue;
        }
        let verdict = match (DomainKey::parse(raw), &signed) {
            (Err(e), _) => format!("cannot be used: {e}"),
            (Ok(_), Err(e)) => format!("cannot sign with the key: {e}"),
            (Ok(published), Ok(signature)) => {
                match published
                    .p
                    .verify_bytes(&probe[..], signature, key.signing_key().algorithm())
                {
                    Ok(()) => return RecordCheck::Matches,
                    Err(_) => "holds a different public key (or the wrong k= type)".to_string(),
                }
            }
        };
        problems.push(format!("\"{}\" {verdict}", shorten(trimmed)));
    }
    if problems.is_empty() {
        RecordCheck::Missing
    } else {
        RecordCheck::Mismatch(problems)
    }
}

fn shorten(text: &str) -> String {
    const SHOW: usize = 60;
    match text.char_indices().nth(SHOW) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::key::{generate_key, KeyAlgorithm};

    fn key(algorithm: KeyAlgorithm) -> PrivateKey {
        PrivateKey::from_pem(generate_key(algorithm).unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn zone_line_splits_long_records() {
        let rsa = key(KeyAlgorithm::Rsa2048);
        let record = DkimRecord::new("Example.test.", "s1", &rsa);
        assert_eq!(record.name, "s1._domainkey.Example.test");
        assert!(
            record.value.starts_with("v=DKIM1; k=rsa; p=MII"),
            "{}",
            record.value
        );
        let line = record.zone_line();
        assert!(
            line.starts_with("s1._domainkey.Example.test. IN TXT \""),
            "{line}"
        );
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.len() >= 2, "{line}");
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), record.value);
    }

    #[test]
    fn published_records_are_matched_against_the_key() {
        for algorithm in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Ed25519] {
            let mine = key(algorithm);
            let other = key(algorithm);
            let good = DkimRecord::new("example.test", "s", &mine)
                .value
                .into_bytes();
            let bad = DkimRecord::new("example.test", "s", &other)
                .value
                .into_bytes();
            let spf = b"v=spf1 -all".to_vec();
            assert_eq!(
                check_record(&mine, &[spf.clone(), good.clone()]),
                RecordCheck::Matches
            );
            assert_eq!(
                check_record(&mine, std::slice::from_ref(&spf)),
                RecordCheck::Missing
            );
            assert_eq!(check_record(&mine, &[]), RecordCheck::Missing);
            match check_record(&mine, &[bad]) {
                RecordCheck::Mismatch(why) => {
                    assert_eq!(why.len(), 1);
                    assert!(why[0].contains("different public key"), "{why:?}");
                }
                other => panic!("{other:?}"),
            }
            match check_record(&mine, &[b"v=DKIM1; p=".to_vec()]) {
                RecordCheck::Mismatch(why) => assert!(why[0].contains("cannot be used"), "{why:?}"),
                other => panic!("{other:?}"),
            }
        }
        // An Ed25519 key published with the RSA type does not verify.
        let ed = key(KeyAlgorithm::Ed25519);
        let wrong_type = DkimRecord::new("example.test", "s", &ed)
            .value
            .replace("k=ed25519", "k=rsa");
        assert!(matches!(
            check_record(&ed, &[wrong_type.into_bytes()]),
            RecordCheck::Mismatch(_)
        ));
    }
}
