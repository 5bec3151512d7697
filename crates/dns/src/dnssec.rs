//! DNSSEC-validated lookups for DANE (RFC 7672 2.1 and 2.2): a second hickory resolver with
//! validation on, used for nothing else, and the typed answers it gives ([`Dnssec`], [`Tlsa`]).
//!
//! Hickory validates the answers itself (RRSIGs up to the trust anchors: its built-in root
//! anchors, or the DNSKEY records of `dns.dnssec_trust_anchor`); the AD bit of the upstream
//! resolver is not trusted.
//!
//! A resolver that cannot validate at all (one that strips RRSIGs, a test's fake DNS) would make
//! every signed answer look bogus, and with it defer all mail to signed domains. So the first
//! DANE lookup, and one every [`PROBE_EVERY`] after it, asks for the trust anchor's own DNSKEY
//! RRset: when that does not validate, one warning is logged and every DANE lookup answers
//! "insecure" (no DANE) until a later probe succeeds. When it does validate, a bogus answer is
//! bogus (RFC 7672 2.1.1: defer, never downgrade).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::ResolveHosts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as NetDnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use crate::error::DnsError;
use crate::hickory::nameservers_config;
use crate::resolver::MxRecord;

/// How often the validation probe is repeated (after a success or a failure alike).
pub const PROBE_EVERY: Duration = Duration::from_secs(600);

/// After a probe that got no answer at all (timeout, SERVFAIL): ask again this soon.
pub const PROBE_RETRY: Duration = Duration::from_secs(60);

/// The DNSSEC status of an answer (RFC 4033 5): `Secure` validated up to a trust anchor,
/// `Insecure` provably unsigned (or not validated at all, see the module docs), `Bogus` signed
/// but failing validation, with why. A secure NXDOMAIN or NODATA is `Secure(vec![])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dnssec<T> {
    Secure(T),
    Insecure(T),
    Bogus(String),
}

impl<T> Dnssec<T> {
    pub fn is_secure(&self) -> bool {
        matches!(self, Dnssec::Secure(_))
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Dnssec<U> {
        match self {
            Dnssec::Secure(t) => Dnssec::Secure(f(t)),
            Dnssec::Insecure(t) => Dnssec::Insecure(f(t)),
            Dnssec::Bogus(why) => Dnssec::Bogus(why),
        }
    }
}

/// One TLSA record (RFC 6698 2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// The TLSA base name of a service (RFC 6698 3, RFC 7672 2.2.3): `_25._tcp.mx.example.`.
pub fn tlsa_name(host: &str, port: u16) -> String {
    format!("_{port}._tcp.{}", host.trim_end_matches('.'))
}

/// What the last probe found.
#[derive(Debug, Clone, Copy)]
struct Probed {
    at: Instant,
    validates: bool,
    /// Retry after [`PROBE_RETRY`] rather than [`PROBE_EVERY`].
    soon: bool,
}

/// The validating resolver behind [`crate::HickoryResolver`]'s DNSSEC lookups.
pub struct DnssecResolver {
    inner: TokioResolver,
    /// The owner name of the trust anchor (the root for hickory's built-in anchors).
    anchor: Name,
    probed: tokio::sync::Mutex<Option<Probed>>,
}

impl std::fmt::Debug for DnssecResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnssecResolver")
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

/// The owner name of the first DNSKEY record of a zone-file text (hickory's trust anchor file
/// format): the first token of the first line that is not blank, a comment or a directive.
fn anchor_owner(text: &str) -> Option<Name> {
    text.lines()
        .map(|l| l.split(';').next().unwrap_or("").trim())
        .find(|l| !l.is_empty() && !l.starts_with('$'))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|owner| Name::from_ascii(owner).ok())
        .map(|mut n| {
            n.set_fqdn(true);
            n
        })
}

impl DnssecResolver {
    /// A validating resolver asking `nameservers` (the system configuration when empty), each
    /// query under `timeout`, trusting the DNSKEY records of `trust_anchor` (hickory's root
    /// anchors when None).
    pub fn new(
        nameservers: &[SocketAddr],
        timeout: Duration,
        trust_anchor: Option<&Path>,
    ) -> Result<Self, DnsError> {
        let fail = |name: &str, reason: String| DnsError::Temporary {
            name: name.to_string(),
            reason,
        };
        let (anchors, anchor) = match trust_anchor {
            None => (TrustAnchors::default(), Name::root()),
            Some(path) => {
                let shown = path.display().to_string();
                let text =
                    std::fs::read_to_string(path).map_err(|e| fail(&shown, e.to_string()))?;
                let anchors: TrustAnchors = text
                    .parse()
                    .map_err(|e| fail(&shown, format!("not a DNSKEY trust anchor file: {e}")))?;
                // The probe asks for the DNSKEY RRset of the (first) anchor's owner name.
                let owner = anchor_owner(&text)
                    .ok_or_else(|| fail(&shown, "holds no DNSKEY record".into()))?;
                (anchors, owner)
            }
        };
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| fail("/etc/resolv.conf", e.to_string()))?
        } else {
            let mut b = TokioResolver::builder_with_config(
                nameservers_config(nameservers),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().timeout = timeout;
            b.options_mut().attempts = 1;
            b
        };
        builder.options_mut().validate = true;
        // DANE names are DNS names: /etc/hosts has no signatures.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let inner = builder
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| fail("DNSSEC resolver", e.to_string()))?;
        Ok(Self {
            inner,
            anchor,
            probed: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether the resolver returns what validation needs: the trust anchor's DNSKEY RRset
    /// validates. Probed at most every [`PROBE_EVERY`]; concurrent callers wait for one probe.
    pub async fn validates(&self) -> bool {
        let mut probed = self.probed.lock().await;
        if let Some(p) = *probed {
            let every = if p.soon { PROBE_RETRY } else { PROBE_EVERY };
            if p.at.elapsed() < every {
                return p.validates;
            }
        }
        let (validates, soon, why) = match self
            .inner
            .lookup(self.anchor.clone(), RecordType::DNSKEY)
            .await
        {
            Ok(lookup) => {
                let secure = lookup
                    .answers()
                    .iter()
                    .any(|r| r.record_type() == RecordType::DNSKEY && r.proof == Proof::Secure);
                (
                    secure,
                    false,
                    (!secure).then(|| "the DNSKEY answer does not validate".to_string()),
                )
            }
            Err(e) if e.is_no_records_found() => (false, false, Some(e.to_string())),
            Err(NetError::Dns(NetDnsError::DnssecBogus)) => {
                (false, false, Some("the DNSKEY answer is bogus".to_string()))
            }
            Err(e) => (false, true, Some(e.to_string())),
        };
        let before = probed.map(|p| p.validates);
        match (&why, before) {
            (Some(why), None | Some(true)) => tracing::warn!(
                trust_anchor = %self.anchor,
                reason = %why,
                "dane: the resolver does not return DNSSEC records; DANE is off until it does"
            ),
            (None, None | Some(false)) => tracing::info!(
                trust_anchor = %self.anchor,
                "dane: the resolver returns DNSSEC records that validate; DANE is on"
            ),
            _ => {}
        }
        *probed = Some(Probed {
            at: Instant::now(),
            validates,
            soon,
        });
        validates
    }

    /// The records of type `rtype` at `name`, with their DNSSEC status. NXDOMAIN is
    /// [`DnsError::NxDomain`] when insecure, `Secure(vec![])` when proven.
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Dnssec<Vec<Record>>, DnsError> {
        let shown = name.trim_end_matches('.').to_string();
        let qname = Name::from_ascii(format!("{shown}.")).map_err(|e| DnsError::Temporary {
            name: shown.clone(),
            reason: e.to_string(),
        })?;
        match self.inner.lookup(qname, rtype).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup.answers().to_vec();
                Ok(classify_positive(&shown, rtype, records))
            }
            Err(NetError::Dns(NetDnsError::DnssecBogus)) => Ok(Dnssec::Bogus(format!(
                "the {rtype} records of {shown} fail DNSSEC validation"
            ))),
            Err(NetError::Dns(NetDnsError::Nsec { proof, .. })) => match proof {
                Proof::Bogus => Ok(Dnssec::Bogus(format!(
                    "the denial of {rtype} records for {shown} fails DNSSEC validation"
                ))),
                Proof::Secure => Ok(Dnssec::Secure(Vec::new())),
                _ => negative(&shown, false, false),
            },
            Err(NetError::Dns(NetDnsError::NoRecordsFound(NoRecords {
                response_code,
                authorities,
                ..
            }))) => {
                let auth = authorities.as_deref().unwrap_or(&[]);
                if auth.iter().any(|r| r.proof == Proof::Bogus) {
                    return Ok(Dnssec::Bogus(format!(
                        "the denial of {rtype} records for {shown} fails DNSSEC validation"
                    )));
                }
                let secure = auth.iter().any(|r| r.proof == Proof::Secure);
                negative(
                    &shown,
                    secure,
                    response_code == hickory_resolver::proto::op::ResponseCode::NXDomain,
                )
            }
            Err(e) => Err(DnsError::Temporary {
                name: shown,
                reason: e.to_string(),
            }),
        }
    }

    /// The MX RRset of `domain` and whether it is signed (RFC 7672 2.2.1).
    pub async fn mx(&self, domain: &str) -> Result<Dnssec<Vec<MxRecord>>, DnsError> {
        Ok(self.lookup(domain, RecordType::MX).await?.map(|records| {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                    }),
                    _ => None,
                })
                .collect()
        }))
    }

    /// The A and AAAA records of `host`: secure only when both RRsets (or their denials) are
    /// (RFC 7672 2.2.2).
    pub async fn ips(&self, host: &str) -> Result<Dnssec<Vec<IpAddr>>, DnsError> {
        let v4 = self.lookup(host, RecordType::A).await;
        let v6 = self.lookup(host, RecordType::AAAA).await;
        let (v4, v6) = match (v4, v6) {
            (Err(DnsError::NxDomain(n)), Err(DnsError::NxDomain(_))) => {
                return Err(DnsError::NxDomain(n))
            }
            (Err(DnsError::NxDomain(_)), Ok(v)) | (Ok(v), Err(DnsError::NxDomain(_))) => {
                (v, Dnssec::Insecure(Vec::new()))
            }
            (a, b) => (a?, b?),
        };
        let ips = |records: &[Record]| -> Vec<IpAddr> {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect()
        };
        Ok(match (v4, v6) {
            (Dnssec::Bogus(why), _) | (_, Dnssec::Bogus(why)) => Dnssec::Bogus(why),
            (Dnssec::Secure(a), Dnssec::Secure(b)) => Dnssec::Secure([ips(&a), ips(&b)].concat()),
            (Dnssec::Secure(a) | Dnssec::Insecure(a), Dnssec::Secure(b) | Dnssec::Insecure(b)) => {
                Dnssec::Insecure([ips(&a), ips(&b)].concat())
            }
        })
    }

    /// The TLSA records of `_<port>._tcp.<host>` (RFC 7672 2.2.3). A secure NXDOMAIN or NODATA
    /// is `Secure(vec![])`: no DANE for that host; an insecure one `Insecure(vec![])`.
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Dnssec<Vec<Tlsa>>, DnsError> {
        let name = tlsa_name(host, port);
        let found = match self.lookup(&name, RecordType::TLSA).await {
            Err(DnsError::NxDomain(_)) => return Ok(Dnssec::Insecure(Vec::new())),
            other => other?,
        };
        Ok(found.map(|records| {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some(Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    }),
                    _ => None,
                })
                .collect()
        }))
    }
}

/// A positive answer's status: bogus if any record is, secure if all the records (CNAMEs
/// included) are, insecure otherwise.
fn classify_positive(name: &str, rtype: RecordType, records: Vec<Record>) -> Dnssec<Vec<Record>> {
    if records.iter().any(|r| r.proof == Proof::Bogus) {
        return Dnssec::Bogus(format!(
            "the {rtype} records of {name} fail DNSSEC validation"
        ));
    }
    let secure = !records.is_empty() && records.iter().all(|r| r.proof == Proof::Secure);
    let wanted: Vec<Record> = records
        .into_iter()
        .filter(|r| r.record_type() == rtype)
        .collect();
    if secure {
        Dnssec::Secure(wanted)
    } else {
        Dnssec::Insecure(wanted)
    }
}

/// An empty answer: proven (secure) or not; an unproven NXDOMAIN stays an error as for the
/// plain lookups.
fn negative(name: &str, secure: bool, nxdomain: bool) -> Result<Dnssec<Vec<Record>>, DnsError> {
    match (secure, nxdomain) {
        (true, _) => Ok(Dnssec::Secure(Vec::new())),
        (false, true) => Err(DnsError::NxDomain(name.to_string())),
        (false, false) => Ok(Dnssec::Insecure(Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsa_names() {
        assert_eq!(tlsa_name("mx.remote.test.", 25), "_25._tcp.mx.remote.test");
    }

    #[test]
    fn the_anchor_owner_is_the_first_record_name() {
        let text = "; a comment\n$TTL 3600\n\ntest. 3600 IN DNSKEY 257 3 13 AAAA\n";
        assert_eq!(anchor_owner(text).unwrap().to_ascii(), "test.");
        assert!(anchor_owner("; nothing\n").is_none());
    }

    #[test]
    fn a_missing_or_empty_anchor_file_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("tern-dnssec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.key");
        std::fs::write(&empty, "; nothing here\n").unwrap();
        let ns = ["127.0.0.1:5353".parse().unwrap()];
        rt.block_on(async {
            assert!(
                DnssecResolver::new(&ns, Duration::from_secs(1), Some(&dir.join("missing")))
                    .is_err()
            );
            assert!(DnssecResolver::new(&ns, Duration::from_secs(1), Some(&empty)).is_err());
            assert!(DnssecResolver::new(&ns, Duration::from_secs(1), None).is_ok());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
