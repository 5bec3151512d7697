//! DMARC `pct=` (RFC 7489 6.3, 6.6.4). mail-auth 0.13 follows DMARCbis, which replaced `pct=`
//! with `t=`, and drops the tag when it parses a record; receivers still see `pct=` on most
//! published records. We find the record mail-auth applied (the first DMARC record at the From
//! domain or a parent that mail-auth parses to the same record; hickory has it cached) and read
//! that one tag from it.

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::rr::RData;

use super::verifier::Verifier;

/// Parents of a domain to look at; DMARC's tree walk stops at eight labels too.
const MAX_NAMES: usize = 8;

impl Verifier {
    /// The `pct=` of the record `applied` that was found for `from_domain`; 100 when absent,
    /// invalid, or the record cannot be found again.
    pub(crate) async fn dmarc_pct(&self, from_domain: &str, applied: &Dmarc) -> u8 {
        let mut name = from_domain.trim_end_matches('.');
        for _ in 0..MAX_NAMES {
            let query = format!("_dmarc.{name}.");
            if let Ok(lookup) = self.auth.resolver().txt_lookup(query.as_str()).await {
                for record in lookup.answers() {
                    let RData::TXT(txt) = &record.data else {
                        continue;
                    };
                    let text: Vec<u8> = txt.txt_data.concat();
                    if Dmarc::parse(&text).is_ok_and(|d| &d == applied) {
                        return pct_tag(&text);
                    }
                }
            }
            match name.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => name = parent,
                _ => break,
            }
        }
        100
    }
}

/// The value of the `pct` tag of a DMARC record: an integer 0-100; anything else is ignored
/// (RFC 7489 6.3: "pct: ... Integer percentage ... default is 100").
pub(crate) fn pct_tag(record: &[u8]) -> u8 {
    let Ok(text) = std::str::from_utf8(record) else {
        return 100;
    };
    text.split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::pct_tag;

    #[test]
    fn pct_is_read_and_defaults_to_100() {
        assert_eq!(pct_tag(b"v=DMARC1; p=reject; pct=25"), 25);
        assert_eq!(pct_tag(b"v=DMARC1; p=reject; PCT = 0 ;"), 0);
        assert_eq!(pct_tag(b"v=DMARC1; p=reject"), 100);
        assert_eq!(pct_tag(b"v=DMARC1; p=reject; pct=250"), 100);
        assert_eq!(pct_tag(b"v=DMARC1; p=reject; pct=x"), 100);
    }
}
