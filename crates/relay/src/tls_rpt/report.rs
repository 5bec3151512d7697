//! The report itself (RFC 8460 4.4): JSON, gzip'd (`application/tlsrpt+gzip`), its file name
//! (5.1) and, for `mailto:`, the message that carries it (5.3). No I/O.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Map, Value};

use super::store::DomainData;

/// A report's period: Unix seconds, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: u64,
    pub end: u64,
}

/// Who reports.
#[derive(Debug, Clone)]
pub struct Submitter<'a> {
    pub organization: &'a str,
    pub contact: &'a str,
    /// The sending domain (`outbound.helo_name`): `TLS-Report-Submitter`, the file name.
    pub domain: &'a str,
}

pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The report's `report-id`: the period and domain, unique per submitter.
pub fn report_id(submitter: &Submitter<'_>, domain: &str, period: Period) -> String {
    format!(
        "{}.{}.{}@{}",
        period.start, period.end, domain, submitter.domain
    )
}

/// RFC 8460 4.4: the JSON report about `domain` for `period`.
pub fn json(submitter: &Submitter<'_>, domain: &str, period: Period, data: &DomainData) -> Value {
    let policies: Vec<Value> = data
        .policies
        .iter()
        .map(|p| {
            let mut policy = Map::new();
            policy.insert("policy-type".into(), json!(p.policy.kind.as_str()));
            policy.insert("policy-string".into(), json!(p.policy.strings));
            policy.insert("policy-domain".into(), json!(domain));
            if !p.policy.mx_hosts.is_empty() {
                policy.insert("mx-host".into(), json!(p.policy.mx_hosts));
            }
            let details: Vec<Value> = p
                .details
                .iter()
                .map(|row| {
                    let mut m = Map::new();
                    m.insert("result-type".into(), json!(row.result.as_str()));
                    let d = &row.details;
                    if let Some(ip) = d.sending_mta_ip {
                        m.insert("sending-mta-ip".into(), json!(ip.to_string()));
                    }
                    if let Some(mx) = &d.receiving_mx_hostname {
                        m.insert("receiving-mx-hostname".into(), json!(mx));
                    }
                    if let Some(ip) = d.receiving_ip {
                        m.insert("receiving-ip".into(), json!(ip.to_string()));
                    }
                    m.insert("failed-session-count".into(), json!(row.count));
                    if let Some(info) = &d.additional_information {
                        m.insert("additional-information".into(), json!(info));
                    }
                    if let Some(code) = &d.failure_reason_code {
                        m.insert("failure-reason-code".into(), json!(code));
                    }
                    Value::Object(m)
                })
                .collect();
            json!({
                "policy": Value::Object(policy),
                "summary": {
                    "total-successful-session-count": p.successes,
                    "total-failure-session-count": p.failures,
                },
                "failure-details": details,
            })
        })
        .collect();
    json!({
        "organization-name": submitter.organization,
        "date-range": {
            "start-datetime": rfc3339(period.start),
            "end-datetime": rfc3339(period.end.saturating_sub(1).max(period.start)),
        },
        "contact-info": submitter.contact,
        "report-id": report_id(submitter, domain, period),
        "policies": policies,
    })
}

pub fn gzip(json: &Value) -> std::io::Result<Vec<u8>> {
    let text = serde_json::to_vec(json).map_err(std::io::Error::other)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text)?;
    gz.finish()
}

/// RFC 8460 5.1: `<sender>!<policy-domain>!<begin-timestamp>!<end-timestamp>.json.gz`.
pub fn file_name(submitter: &Submitter<'_>, domain: &str, period: Period) -> String {
    format!(
        "{}!{}!{}!{}.json.gz",
        submitter.domain, domain, period.start, period.end
    )
}

/// RFC 8460 5.3: the report as a `multipart/report; report-type="tlsrpt"` message from `from`
/// to `to`, with a short text part and the gzip'd JSON attached.
#[allow(clippy::too_many_arguments)] // each is one header's or part's content
pub fn message(
    submitter: &Submitter<'_>,
    from: &str,
    to: &str,
    domain: &str,
    period: Period,
    gz: &[u8],
    now: SystemTime,
    unique: &str,
) -> Vec<u8> {
    let id = report_id(submitter, domain, period);
    let boundary = format!("tlsrpt-{unique}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut m = String::new();
    m.push_str(&format!("From: <{from}>\r\n"));
    m.push_str(&format!("To: <{to}>\r\n"));
    m.push_str(&format!(
        "Date: {}\r\n",
        tern_proto::message::rfc5322_date(now)
    ));
    m.push_str(&format!(
        "Subject: Report Domain: {domain} Submitter: {} Report-ID: <{id}>\r\n",
        submitter.domain
    ));
    m.push_str(&format!(
        "Message-ID: <{unique}.tlsrpt@{}>\r\n",
        submitter.domain
    ));
    m.push_str(&format!("TLS-Report-Domain: {domain}\r\n"));
    m.push_str(&format!("TLS-Report-Submitter: {}\r\n", submitter.domain));
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\n");
    m.push_str("This is a multipart message in MIME format.\r\n\r\n");
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=\"us-ascii\"\r\n");
    m.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
    m.push_str(&format!(
        "This is an aggregate TLS report (RFC 8460) from {} about mail sent to {domain}\r\nfrom {} to {}.\r\n\r\n",
        submitter.organization,
        rfc3339(period.start),
        rfc3339(period.end),
    ));
    m.push_str(&format!("--{boundary}\r\n"));
    let name = file_name(submitter, domain, period);
    m.push_str(&format!(
        "Content-Type: application/tlsrpt+gzip; name=\"{name}\"\r\n"
    ));
    m.push_str("Content-Transfer-Encoding: base64\r\n");
    m.push_str(&format!(
        "Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
    ));
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(&String::from_utf8_lossy(chunk));
        m.push_str("\r\n");
    }
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_rpt::store::Store;
    use crate::tls_rpt::{FailureDetails, Policy, PolicyType, ResultType};
    use std::io::Read;

    fn sub() -> Submitter<'static> {
        Submitter {
            organization: "Tern Org",
            contact: "postmaster@mx.tern.test",
            domain: "mx.tern.test",
        }
    }

    fn data() -> DomainData {
        let mut s = Store::default();
        let sts = Policy {
            kind: PolicyType::Sts,
            strings: vec![
                "version: STSv1".into(),
                "mode: enforce".into(),
                "mx: mx.remote.test".into(),
                "max_age: 86400".into(),
            ],
            mx_hosts: vec!["mx.remote.test".into()],
        };
        s.success(86400, 172800, "remote.test", &Policy::none());
        s.success(86400, 172800, "remote.test", &Policy::none());
        s.failure(
            86400,
            172800,
            "remote.test",
            &sts,
            ResultType::CertificateHostMismatch,
            FailureDetails::at(
                "mx.remote.test",
                Some("127.0.0.1".parse().unwrap()),
                "certificate not valid for name",
            ),
        );
        s.get(86400, "remote.test").unwrap().1
    }

    #[test]
    fn the_json_has_rfc_8460_shape() {
        let p = Period {
            start: 86400,
            end: 172800,
        };
        let v = json(&sub(), "remote.test", p, &data());
        assert_eq!(v["organization-name"], "Tern Org");
        assert_eq!(v["contact-info"], "postmaster@mx.tern.test");
        assert_eq!(v["date-range"]["start-datetime"], "1970-01-02T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "1970-01-02T23:59:59Z");
        assert_eq!(v["report-id"], "86400.172800.remote.test@mx.tern.test");
        let pols = v["policies"].as_array().unwrap();
        assert_eq!(pols.len(), 2);
        assert_eq!(pols[0]["policy"]["policy-type"], "no-policy-found");
        assert_eq!(pols[0]["policy"]["policy-domain"], "remote.test");
        assert_eq!(pols[0]["summary"]["total-successful-session-count"], 2);
        assert_eq!(pols[0]["summary"]["total-failure-session-count"], 0);
        assert!(pols[0]["policy"].get("mx-host").is_none());
        let sts = &pols[1];
        assert_eq!(sts["policy"]["policy-type"], "sts");
        assert_eq!(sts["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(sts["policy"]["mx-host"][0], "mx.remote.test");
        assert_eq!(sts["summary"]["total-failure-session-count"], 1);
        let fd = &sts["failure-details"][0];
        assert_eq!(fd["result-type"], "certificate-host-mismatch");
        assert_eq!(fd["receiving-mx-hostname"], "mx.remote.test");
        assert_eq!(fd["receiving-ip"], "127.0.0.1");
        assert_eq!(fd["failed-session-count"], 1);
        assert!(fd["failure-reason-code"]
            .as_str()
            .unwrap()
            .contains("not valid for name"));
    }

    #[test]
    fn gzip_file_name_and_message() {
        let p = Period {
            start: 86400,
            end: 172800,
        };
        let v = json(&sub(), "remote.test", p, &data());
        let gz = gzip(&v).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        assert_eq!(
            file_name(&sub(), "remote.test", p),
            "mx.tern.test!remote.test!86400!172800.json.gz"
        );
        let m = message(
            &sub(),
            "postmaster@mx.tern.test",
            "rua@reports.test",
            "remote.test",
            p,
            &gz,
            UNIX_EPOCH,
            "u1",
        );
        let parsed = mail_parser::MessageParser::default().parse(&m).unwrap();
        assert_eq!(parsed.subject(), Some("Report Domain: remote.test Submitter: mx.tern.test Report-ID: <86400.172800.remote.test@mx.tern.test>"));
        assert_eq!(
            parsed.header_raw("TLS-Report-Domain").map(str::trim),
            Some("remote.test")
        );
        assert_eq!(
            parsed.header_raw("TLS-Report-Submitter").map(str::trim),
            Some("mx.tern.test")
        );
        let ct = mail_parser::MimeHeaders::content_type(&parsed).unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        let att = parsed.attachment(0).unwrap();
        assert_eq!(att.contents(), &gz[..]);
        assert!(crate::tls_rpt::is_report(&m));
        assert!(!crate::tls_rpt::is_report(
            b"Subject: TLS-Report-Submitter: x\r\n\r\nTLS-Report-Submitter: y\r\n"
        ));
    }
}
