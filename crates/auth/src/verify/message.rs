//! The end-of-DATA checks: every DKIM signature (RFC 6376), the ARC chain (RFC 8617), DMARC
//! (RFC 7489) from those and the SPF result of MAIL FROM, the disposition that follows from
//! the policy and `[checks]`, and the Authentication-Results field (RFC 8601) that records it.
//! ARC is reported only: a valid chain does not override a DMARC failure here.

use std::net::IpAddr;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, Error, Parameters, SpfOutput,
};
use tokio::time::{timeout_at, Instant};

use super::outcome::{
    AuthResult, Disposition, DkimSignatureResult, DmarcPolicy, DmarcSummary, MessageVerdict,
    SmtpReply, SpfIdentity, SpfOutcome,
};
use super::verifier::Verifier;
use crate::arc::{ArcSealer, NotSealed};

fn deadline_error() -> Error {
    Error::Dns(mail_auth::DnsError::Resolver(
        "verification deadline passed".into(),
    ))
}

impl Verifier {
    /// Checks a received message (header section, empty line, body, CRLF line endings) from a
    /// client at `ip` that said `helo` and `MAIL FROM:<mail_from>`; `spf` is what
    /// [`Verifier::check_spf_mail`] returned for it. Never fails: DNS trouble becomes
    /// `temperror`.
    pub async fn check_message(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: Option<&SpfOutcome>,
        message: &[u8],
    ) -> MessageVerdict {
        self.check_message_sealed(ip, helo, mail_from, spf, message, None)
            .await
    }

    /// [`Verifier::check_message`], and with a `sealer` also the ARC set (RFC 8617) to put in
    /// front of the copies that are forwarded ([`MessageVerdict::arc_seal`]): sealed over the
    /// chain as validated here, with our Authentication-Results as its
    /// ARC-Authentication-Results. A refused message (see [`MessageVerdict::disposition`]) is
    /// not sealed.
    pub async fn check_message_sealed(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: Option<&SpfOutcome>,
        message: &[u8],
        sealer: Option<&ArcSealer>,
    ) -> MessageVerdict {
        let until = Instant::now() + self.deadline;
        let parsed = AuthenticatedMessage::parse(message);
        let checks = self.checks;

        let dkim_out: Vec<DkimOutput<'_>> = match (&parsed, checks.dkim) {
            (Some(msg), true) => {
                let params = Parameters::new(msg)
                    .with_txt_cache(&self.caches.txt)
                    .with_mx_cache(&self.caches.mx)
                    .with_ipv4_cache(&self.caches.ipv4)
                    .with_ipv6_cache(&self.caches.ipv6)
                    .with_ptr_cache(&self.caches.ptr);
                match timeout_at(until, self.auth.verify_dkim(params)).await {
                    Ok(out) => out,
                    Err(_) => vec![DkimOutput::temp_err(deadline_error())],
                }
            }
            _ => Vec::new(),
        };

        let arc_out: Option<ArcOutput<'_>> = match (&parsed, checks.arc) {
            (Some(msg), true) => {
                let params = Parameters::new(msg)
                    .with_txt_cache(&self.caches.txt)
                    .with_mx_cache(&self.caches.mx)
                    .with_ipv4_cache(&self.caches.ipv4)
                    .with_ipv6_cache(&self.caches.ipv6)
                    .with_ptr_cache(&self.caches.ptr);
                Some(
                    match timeout_at(until, self.auth.verify_arc(params)).await {
                        Ok(out) => out,
                        Err(_) => ArcOutput::default()
                            .with_result(DkimResult::TempError(deadline_error())),
                    },
                )
            }
            (None, true) => Some(ArcOutput::default()),
            _ => None,
        };

        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let no_spf = SpfOutput::new(mail_from_domain.clone());
        let spf_output = spf.map_or(&no_spf, |s| &s.output);

        let dmarc_out: Option<DmarcOutput> = match (&parsed, checks.dmarc) {
            (Some(msg), true) => {
                let params = Parameters::new(DmarcParameters::new(
                    msg,
                    &dkim_out,
                    &mail_from_domain,
                    spf_output,
                ))
                .with_txt_cache(&self.caches.txt)
                .with_mx_cache(&self.caches.mx)
                .with_ipv4_cache(&self.caches.ipv4)
                .with_ipv6_cache(&self.caches.ipv6)
                .with_ptr_cache(&self.caches.ptr);
                Some(
                    match timeout_at(until, self.auth.verify_dmarc(params)).await {
                        Ok(out) => out,
                        Err(_) => DmarcOutput::default()
                            .with_dkim_result(DmarcResult::TempError(deadline_error()))
                            .with_spf_result(DmarcResult::TempError(deadline_error())),
                    },
                )
            }
            (None, true) => Some(DmarcOutput::default()),
            _ => None,
        };

        let dmarc = match &dmarc_out {
            Some(out) => Some(self.dmarc_summary(out, until).await),
            None => None,
        };
        let disposition = self.disposition(dmarc.as_ref());

        // RFC 8601 2.7.1: a message without a signature is `dkim=none`. mail-auth writes one
        // entry per signature and has no public way to write this one, so it goes in right after
        // the authserv-id, with a plain space (no folding): mail-auth writes that part of the
        // ARC-Authentication-Results verbatim into what the seal signs, and a validator sees it
        // relaxed-canonicalized, which leaves a single space as it is (RFC 6376 3.4.2).
        let unsigned = checks.dkim && dkim_out.is_empty();
        let head = if unsigned {
            format!("{}; dkim=none", self.authserv_id)
        } else {
            self.authserv_id.clone()
        };
        let mut ar = AuthenticationResults::new(&head);
        if let Some(spf) = spf {
            ar = match &spf.identity {
                SpfIdentity::MailFrom(from) => {
                    ar.with_spf_mailfrom_result(&spf.output, ip, from, helo)
                }
                SpfIdentity::Helo(name) => ar.with_spf_ehlo_result(&spf.output, ip, name),
            };
        }
        // header.d= (the signing domain, what DMARC aligns, RFC 8601 2.7.1) rather than the
        // header.i= mail-auth writes whenever the signature has an i= tag: the reports
        // receivers read and the DMARC outcome next to it are about d=.
        let by_domain: Vec<mail_auth::dkim::Signature> = dkim_out
            .iter()
            .filter_map(|o| o.signature())
            .map(|sig| mail_auth::dkim::Signature {
                i: String::new(),
                ..sig.clone()
            })
            .collect();
        // One entry per output that has a signature, in order.
        let mut by_domain = by_domain.iter();
        let reported: Vec<DkimOutput<'_>> = dkim_out
            .iter()
            .map(|o| match o.signature().and_then(|_| by_domain.next()) {
                Some(sig) => o.clone().with_signature(sig),
                None => o.clone(),
            })
            .collect();
        ar = ar.with_dkim_results(&reported, "");
        if let Some(arc) = &arc_out {
            ar = ar.with_arc_result(arc, ip);
        }
        if let Some(out) = &dmarc_out {
            ar = ar.with_dmarc_result(out);
        }

        let arc_seal = match (sealer, &parsed, &arc_out) {
            _ if matches!(
                disposition,
                Disposition::Reject(_) | Disposition::TempFail(_)
            ) =>
            {
                None
            }
            (None, _, _) | (Some(_), None, _) => None,
            (Some(_), Some(_), None) => Some(Err(NotSealed::ArcNotChecked)),
            (Some(sealer), Some(msg), Some(arc)) => Some(sealer.seal(msg, &ar, arc)),
        };
        // With only `dkim=none` to say, mail-auth would add "; none" after it.
        let authentication_results = if unsigned && ar.to_string() == head {
            format!("Authentication-Results: {head}\r\n")
        } else {
            ar.to_header()
        };

        MessageVerdict {
            spf: spf.cloned(),
            dkim: checks
                .dkim
                .then(|| dkim_out.iter().map(signature_result).collect()),
            arc: arc_out.as_ref().map(|a| AuthResult::from(a.result())),
            dmarc,
            disposition,
            authentication_results,
            arc_seal,
        }
    }

    async fn dmarc_summary(&self, out: &DmarcOutput, until: Instant) -> DmarcSummary {
        let result = AuthResult::from(&out.result());
        let policy = match out.policy() {
            Policy::Reject => DmarcPolicy::Reject,
            Policy::Quarantine => DmarcPolicy::Quarantine,
            Policy::None | Policy::Unspecified => DmarcPolicy::None,
        };
        let mut pct = 100;
        let mut applied = policy;
        if result == AuthResult::Fail && policy != DmarcPolicy::None {
            if let Some(record) = out.dmarc_record() {
                pct = timeout_at(until, self.dmarc_pct(out.domain(), record))
                    .await
                    .unwrap_or(100);
            }
            // RFC 7489 6.6.4: apply the policy to pct% of the failing messages.
            if pct < 100 && rand::random_range(0..100u8) >= pct {
                applied = policy.relaxed();
            }
        }
        DmarcSummary {
            result,
            domain: out.domain().to_string(),
            policy,
            applied,
            pct,
        }
    }

    fn disposition(&self, dmarc: Option<&DmarcSummary>) -> Disposition {
        let Some(d) = dmarc else {
            return Disposition::Deliver;
        };
        match (d.result, d.applied) {
            (AuthResult::Fail, DmarcPolicy::Reject) if self.checks.dmarc_reject => {
                Disposition::Reject(SmtpReply {
                    code: 550,
                    status: "5.7.1",
                    text: format!(
                        "DMARC policy of {} rejects this message: neither SPF nor DKIM is aligned with the From domain (RFC 7489)",
                        d.domain
                    ),
                })
            }
            (AuthResult::Fail, DmarcPolicy::Reject | DmarcPolicy::Quarantine) => {
                Disposition::Quarantine
            }
            // RFC 7489 6.6.3 step 3: a DNS failure is a temporary error; refuse temporarily only
            // when the known policy would have refused the message.
            (AuthResult::TempError, DmarcPolicy::Reject) if self.checks.dmarc_reject => {
                Disposition::TempFail(SmtpReply {
                    code: 451,
                    status: "4.7.1",
                    text: format!(
                        "DMARC evaluation for {} failed temporarily (DNS); try again later",
                        d.domain
                    ),
                })
            }
            _ => Disposition::Deliver,
        }
    }
}

fn signature_result(out: &DkimOutput<'_>) -> DkimSignatureResult {
    let reason = match out.result() {
        DkimResult::Pass | DkimResult::None => None,
        DkimResult::Neutral(e)
        | DkimResult::Fail(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => Some(e.to_string()),
    };
    DkimSignatureResult {
        result: AuthResult::from(out.result()),
        domain: out.signature().map(|s| s.d.clone()).unwrap_or_default(),
        selector: out.signature().map(|s| s.s.clone()).unwrap_or_default(),
        reason,
    }
}
