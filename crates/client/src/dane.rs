//! DANE for SMTP (RFC 7672): the server certificate is judged by the host's DNSSEC-validated
//! TLSA records instead of the webpki roots.
//!
//! - DANE-EE (usage 3): the end-entity certificate (selector 0) or its public key (selector 1),
//!   exactly (matching 0) or by SHA-256 (1) or SHA-512 (2), is the one in a record; its name,
//!   chain and dates are not checked (RFC 7672 3.1.1).
//! - DANE-TA (usage 2): a certificate the server sent (in its chain) matches a record; the end
//!   entity must chain to it (it is then the only trust anchor), be valid now and carry one of
//!   the reference names, the MX host name first (RFC 7672 3.1.2 and 3.2.2).
//!
//! PKIX-TA/PKIX-EE (usages 0 and 1), unknown selectors and matching types are unusable
//! (RFC 7672 3.1.3) and are dropped by [`usable`]; a host with no usable record gets mandatory
//! but unauthenticated TLS from the caller. A certificate that matches no record fails the
//! handshake ([`DaneMismatch`]); it never falls back to cleartext.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// One TLSA record (RFC 6698 2.1): certificate usage, selector, matching type, association data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DaneRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl DaneRecord {
    /// RFC 7672 3.1.3: only DANE-TA(2) and DANE-EE(3), with selector 0 or 1 and matching type
    /// 0, 1 or 2, are usable for SMTP. A SHA-2 digest of the wrong length is unusable too.
    pub fn is_usable(&self) -> bool {
        let len_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && len_ok
    }

    /// "3 1 1", as records are written and talked about.
    pub fn params(&self) -> String {
        format!("{} {} {}", self.usage, self.selector, self.matching)
    }

    /// Whether `cert` (DER) is what this record describes (selector and matching type); false
    /// when the certificate cannot be parsed for its public key.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match ParsedCertificate::try_from(cert) {
                Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected,
            1 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
            2 => aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        digest == self.data
    }
}

impl fmt::Display for DaneRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.params())?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The usable records of a TLSA RRset (RFC 7672 3.1.3), duplicates removed.
pub fn usable(records: &[DaneRecord]) -> Vec<DaneRecord> {
    let mut out: Vec<DaneRecord> = Vec::new();
    for r in records.iter().filter(|r| r.is_usable()) {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

/// What [`crate::CertCheck::Dane`] checks: the host's usable TLSA records and the reference
/// names for DANE-TA (the MX host name first; the next-hop domain may follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneCheck {
    pub records: Vec<DaneRecord>,
    pub names: Vec<String>,
}

/// The certificate matched no TLSA record (carried through rustls's error to
/// `tls::handshake_failure`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DANE: certificate of {host} does not match its TLSA records ({params}{detail})")]
pub struct DaneMismatch {
    pub host: String,
    /// The records' parameters, "3 1 1, 2 1 1".
    pub params: String,
    /// Why a DANE-TA record that matched a certificate of the chain did not verify, if one did.
    pub detail: String,
}

/// The verifier for [`DaneCheck`]: handshake signatures checked as always, the certificate by
/// the TLSA records.
#[derive(Debug)]
pub(crate) struct DaneVerifier {
    pub(crate) check: DaneCheck,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// Ok when a record matches (RFC 7672 3.1); the mismatch otherwise.
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), DaneMismatch> {
        let mut detail = String::new();
        // DANE-EE first: cheapest, and no further checks.
        for r in self.check.records.iter().filter(|r| r.usage == 3) {
            if r.matches(end_entity) {
                return Ok(());
            }
        }
        for r in self.check.records.iter().filter(|r| r.usage == 2) {
            for ta in intermediates.iter().filter(|c| r.matches(c)) {
                match self.chains_to(ta, end_entity, intermediates, now) {
                    Ok(()) => return Ok(()),
                    Err(why) => {
                        detail = format!(
                            "; {} matched a certificate of the chain, but {why}",
                            r.params()
                        )
                    }
                }
            }
        }
        Err(DaneMismatch {
            host: self.check.names.first().cloned().unwrap_or_default(),
            params: self
                .check
                .records
                .iter()
                .map(DaneRecord::params)
                .collect::<Vec<_>>()
                .join(", "),
            detail,
        })
    }

    /// RFC 7672 3.1.2 / 3.2.2: `end_entity` chains to `ta` (the only anchor), is valid now and
    /// has one of the reference names.
    fn chains_to(
        &self,
        ta: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(ta.clone().into_owned())
            .map_err(|e| format!("it is not usable as a trust anchor ({e})"))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        // The first name's failure is the one reported: the MX host name, the one that counts.
        let mut first: Option<String> = None;
        for name in &self.check.names {
            let Ok(server_name) = ServerName::try_from(name.clone()) else {
                continue;
            };
            match verifier.verify_server_cert(end_entity, intermediates, &server_name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    first.get_or_insert_with(|| {
                        format!("the end-entity certificate does not verify for {name} ({e})")
                    });
                }
            }
        }
        Err(first.unwrap_or_else(|| "no reference name".to_string()))
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(m) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(m)),
            ))),
        }
    }

    crate::tls::handshake_signatures_by_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    fn spki(cert: &CertificateDer<'_>) -> Vec<u8> {
        ParsedCertificate::try_from(cert)
            .unwrap()
            .subject_public_key_info()
            .as_ref()
            .to_vec()
    }

    fn self_signed(name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone()
    }

    /// A CA and a leaf for `name` signed by it: (leaf, ca).
    fn chain(name: &str, expired: bool) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(vec![]).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let leaf = params.signed_by(&key, &issuer).unwrap();
        (leaf.der().clone(), ca.der().clone())
    }

    fn verifier(records: Vec<DaneRecord>) -> DaneVerifier {
        DaneVerifier {
            check: DaneCheck {
                records,
                names: vec!["mx.remote.test".into()],
            },
            provider: provider(),
        }
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> DaneRecord {
        DaneRecord {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn dane_ee_spki_sha256_matches_and_mismatches() {
        let cert = self_signed("whatever.test");
        let v = verifier(vec![rec(3, 1, 1, sha256(&spki(&cert)))]);
        assert!(v.verify(&cert, &[], UnixTime::now()).is_ok());
        let other = self_signed("whatever.test");
        let e = v.verify(&other, &[], UnixTime::now()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DANE: certificate of mx.remote.test does not match its TLSA records (3 1 1)"
        );
    }

    #[test]
    fn dane_ee_full_certificate_sha256_and_sha512_and_exact() {
        let cert = self_signed("x.test");
        let v = verifier(vec![rec(3, 0, 1, sha256(cert.as_ref()))]);
        assert!(v.verify(&cert, &[], UnixTime::now()).is_ok());
        let sha512 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, cert.as_ref())
            .as_ref()
            .to_vec();
        assert!(verifier(vec![rec(3, 0, 2, sha512)])
            .verify(&cert, &[], UnixTime::now())
            .is_ok());
        assert!(verifier(vec![rec(3, 0, 0, cert.as_ref().to_vec())])
            .verify(&cert, &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn dane_ee_ignores_name_and_dates() {
        let (leaf, _ca) = chain("elsewhere.test", true);
        let v = verifier(vec![rec(3, 1, 1, sha256(&spki(&leaf)))]);
        assert!(v.verify(&leaf, &[], UnixTime::now()).is_ok());
    }

    #[test]
    fn dane_ta_with_the_anchor_in_the_chain() {
        let (leaf, ca) = chain("mx.remote.test", false);
        let v = verifier(vec![rec(2, 1, 1, sha256(&spki(&ca)))]);
        assert!(v
            .verify(&leaf, std::slice::from_ref(&ca), UnixTime::now())
            .is_ok());
        // The anchor must be sent: without it nothing matches.
        assert!(v.verify(&leaf, &[], UnixTime::now()).is_err());
    }

    #[test]
    fn dane_ta_with_the_wrong_name_fails() {
        let (leaf, ca) = chain("other.remote.test", false);
        let v = verifier(vec![rec(2, 1, 1, sha256(&spki(&ca)))]);
        let e = v
            .verify(&leaf, std::slice::from_ref(&ca), UnixTime::now())
            .unwrap_err();
        assert!(
            e.to_string().contains("does not verify for mx.remote.test"),
            "{e}"
        );
        // The next-hop domain as a second reference name is accepted.
        let v = DaneVerifier {
            check: DaneCheck {
                records: vec![rec(2, 1, 1, sha256(&spki(&ca)))],
                names: vec!["mx.remote.test".into(), "other.remote.test".into()],
            },
            provider: provider(),
        };
        assert!(v
            .verify(&leaf, std::slice::from_ref(&ca), UnixTime::now())
            .is_ok());
    }

    #[test]
    fn dane_ta_rejects_an_expired_leaf() {
        let (leaf, ca) = chain("mx.remote.test", true);
        let v = verifier(vec![rec(2, 1, 1, sha256(&spki(&ca)))]);
        assert!(v
            .verify(&leaf, std::slice::from_ref(&ca), UnixTime::now())
            .is_err());
    }

    #[test]
    fn unusable_records_are_dropped() {
        let d = vec![0u8; 32];
        let all = vec![
            rec(0, 1, 1, d.clone()),
            rec(1, 1, 1, d.clone()),
            rec(3, 2, 1, d.clone()),
            rec(3, 1, 3, d.clone()),
            rec(3, 1, 1, vec![1, 2, 3]),
            rec(3, 1, 1, d.clone()),
            rec(3, 1, 1, d.clone()),
            rec(2, 0, 2, vec![0u8; 64]),
        ];
        assert_eq!(
            usable(&all),
            vec![rec(3, 1, 1, d), rec(2, 0, 2, vec![0u8; 64])]
        );
    }
}
