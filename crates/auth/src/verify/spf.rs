//! SPF at MAIL FROM (RFC 7208): the MAIL FROM identity, or HELO for the null sender (2.4), with
//! mail-auth's evaluation (ten-lookup limit included), our void-lookup count on top, a deadline,
//! and the `spf_fail_reject` decision.

use std::net::IpAddr;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{Parameters, SpfOutput, SpfResult};

use super::outcome::{AuthResult, SmtpReply, SpfIdentity, SpfOutcome, SpfVerdict};
use super::verifier::Verifier;
use super::void::{void_lookups, Counted, MAX_VOID_LOOKUPS};

impl Verifier {
    /// The SPF check made at MAIL FROM; `None` when `[checks] spf = false`. `mail_from` is the
    /// reverse-path without brackets (empty for `<>`), `helo` the EHLO/HELO argument.
    pub async fn check_spf_mail(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> Option<SpfOutcome> {
        if !self.checks.spf {
            return None;
        }
        Some(self.spf(ip, helo, mail_from).await)
    }

    /// The SPF evaluation whatever `[checks] spf` says (for `tern spf check`).
    pub async fn spf(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfOutcome {
        let helo = helo.trim_end_matches('.');
        let identity = if mail_from.is_empty() {
            SpfIdentity::Helo(helo.to_string())
        } else {
            SpfIdentity::MailFrom(mail_from.to_string())
        };
        let domain = match &identity {
            SpfIdentity::Helo(h) => h.to_ascii_lowercase(),
            SpfIdentity::MailFrom(a) => a
                .rsplit_once('@')
                .map_or(helo, |(_, d)| d)
                .trim_end_matches('.')
                .to_ascii_lowercase(),
        };
        let host = self.authserv_id.as_str();
        let params = match &identity {
            SpfIdentity::Helo(_) => SpfParameters::verify_ehlo(ip, helo, host),
            SpfIdentity::MailFrom(from) => SpfParameters::verify_mail_from(ip, helo, host, from),
        };
        let ipv4 = Counted::new(&self.caches.ipv4);
        let ipv6 = Counted::new(&self.caches.ipv6);
        let mx = Counted::new(&self.caches.mx);
        let params = Parameters::new(params)
            .with_txt_cache(&self.caches.txt)
            .with_mx_cache(&mx)
            .with_ipv4_cache(&ipv4)
            .with_ipv6_cache(&ipv6)
            .with_ptr_cache(&self.caches.ptr);
        let evaluated = tokio::time::timeout(self.deadline, self.auth.verify_spf(params)).await;
        let (output, mut explanation) = match evaluated {
            Ok(output) => {
                let void = void_lookups(ip, &ipv4, &ipv6, &mx);
                let decided = !matches!(
                    output.result(),
                    SpfResult::TempError | SpfResult::PermError | SpfResult::None
                );
                if decided && void > MAX_VOID_LOOKUPS {
                    (
                        output.with_result(SpfResult::PermError),
                        Some(format!(
                            "{void} DNS lookups for mechanisms found nothing; at most {MAX_VOID_LOOKUPS} are allowed (RFC 7208 4.6.4)"
                        )),
                    )
                } else {
                    let exp = output.explanation().map(str::to_string);
                    (output, exp)
                }
            }
            Err(_) => (
                SpfOutput::new(domain.clone()).with_result(SpfResult::TempError),
                Some(format!(
                    "the DNS lookups did not finish within {}s",
                    self.deadline.as_secs()
                )),
            ),
        };
        let result = AuthResult::from(output.result());
        if explanation.is_none() {
            explanation = Some(explain(result, &domain, ip));
        }
        let verdict = if result == AuthResult::Fail && self.checks.spf_fail_reject {
            SpfVerdict::Reject(SmtpReply {
                code: 550,
                status: "5.7.23",
                text: format!(
                    "SPF validation failed: {domain} does not allow {ip} to send its mail"
                ),
            })
        } else {
            SpfVerdict::Accept
        };
        SpfOutcome {
            result,
            identity,
            domain,
            explanation,
            verdict,
            output,
        }
    }
}

/// What a result means, for people (RFC 7208 2.6).
fn explain(result: AuthResult, domain: &str, ip: IpAddr) -> String {
    match result {
        AuthResult::Pass => format!("{domain} designates {ip} as a permitted sender"),
        AuthResult::Fail => format!("{domain} does not designate {ip} as a permitted sender (-all)"),
        AuthResult::SoftFail => {
            format!("{domain} does not designate {ip} but asks not to reject (~all)")
        }
        AuthResult::Neutral => format!("{domain} makes no assertion about {ip} (?all or no match)"),
        AuthResult::None => format!("{domain} publishes no SPF record"),
        AuthResult::TempError => {
            format!("a DNS lookup for {domain} failed temporarily (SERVFAIL, timeout); try again")
        }
        AuthResult::PermError => format!(
            "the SPF record of {domain} cannot be evaluated: a syntax error, more than 10 DNS lookups, or an include/redirect without a record (RFC 7208 4.6.4, 5.2)"
        ),
    }
}

impl Verifier {
    /// An `Authentication-Results:` field (RFC 8601) with this SPF result alone, for
    /// `tern spf check`.
    pub fn spf_header(&self, outcome: &SpfOutcome, ip: IpAddr, helo: &str) -> String {
        use mail_auth::common::headers::HeaderWriter;
        let ar = mail_auth::AuthenticationResults::new(&self.authserv_id);
        let ar = match &outcome.identity {
            SpfIdentity::MailFrom(from) => {
                ar.with_spf_mailfrom_result(&outcome.output, ip, from, helo)
            }
            SpfIdentity::Helo(name) => ar.with_spf_ehlo_result(&outcome.output, ip, name),
        };
        ar.to_header()
    }
}
