//! `[tls_rpt]`: SMTP TLS Reporting (RFC 8460) of the relay's MX deliveries. Off by default:
//! reports are mail (or HTTPS POSTs) to third parties named in their DNS, about this host's
//! outbound connections, which an operator should choose to send (see docs/tls-rpt.md).

use std::time::Duration;

use crate::caps;
use crate::defaults;
use crate::error::Issues;
use crate::fields::{at, duration};
use crate::raw::RawConfig;
use crate::values::split_address;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptConfig {
    /// Results are recorded and reports sent only when true.
    pub enabled: bool,
    /// The length of one report's period (24h: one UTC day); periods are aligned to the Unix
    /// epoch, so a day starts at 00:00 UTC.
    pub interval: Duration,
    /// The report's `organization-name` (default: `outbound.helo_name`).
    pub organization: String,
    /// The report's `contact-info` (default: `postmaster@<outbound.helo_name>`).
    pub contact: String,
    /// The envelope and header sender of report mail (default: `postmaster@<outbound.helo_name>`).
    pub from: String,
}

pub(crate) fn tls_rpt(v: &mut Issues, raw: &RawConfig, helo_name: &str) -> TlsRptConfig {
    let r = &raw.tls_rpt;
    let d = defaults::tls_rpt(helo_name);
    let text = |value: &Option<toml::Spanned<String>>, default: String| match value {
        Some(t) if !t.get_ref().trim().is_empty() => t.get_ref().trim().to_string(),
        _ => default,
    };
    let from = match &r.from {
        Some(f) => {
            let text = f.get_ref().trim();
            match split_address(text) {
                Some((_, domain)) if domain_name_ok(domain) => text.to_string(),
                _ => {
                    v.add(
                        at(f),
                        "tls_rpt.from",
                        format!("\"{}\" is not a mail address", f.get_ref()),
                        "write an address such as \"postmaster@mx.example.test\"",
                    );
                    d.from.clone()
                }
            }
        }
        None => d.from.clone(),
    };
    if let Some(o) = &r.organization {
        if o.get_ref().trim().is_empty() {
            v.add(
                at(o),
                "tls_rpt.organization",
                "tls_rpt.organization is empty",
                "write the name of your organization, or remove the key (default: outbound.helo_name)",
            );
        }
    }
    TlsRptConfig {
        enabled: r.enabled.as_ref().map_or(d.enabled, |b| *b.get_ref()),
        interval: duration(
            v,
            &r.interval,
            "tls_rpt.interval",
            d.interval,
            false,
            caps::TLS_RPT_INTERVAL,
        ),
        organization: text(&r.organization, d.organization.clone()),
        contact: text(&r.contact, d.contact.clone()),
        from,
    }
}

fn domain_name_ok(domain: &str) -> bool {
    crate::values::is_domain(&crate::values::normalize_domain(domain))
}
