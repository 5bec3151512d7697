//! A delivery reply in plain words: "Gmail: not authenticated (DKIM/SPF not aligned with From,
//! DMARC)" for `550 5.7.26 ...` from gmail-smtp-in.l.google.com. The console and `tern queue`
//! show it next to the raw reply, which stays the authority.
//!
//! The table is data ([`RULES`]): the first rule whose provider, enhanced status code and text
//! markers all match gives the words, and a provider, when the reply came from a known one, is
//! put in front. Codes are RFC 3463 enhanced status codes (`class.subject.detail`); the generic
//! rules at the end of the table name the RFC 3463 subject (X.1 address, X.2 mailbox, X.3 mail
//! system, X.4 network and routing, X.5 protocol, X.6 content, X.7 security or policy) so that
//! every 4xx/5xx reply says at least what kind of trouble it is.
//!
//! Provider codes and texts checked against:
//! - Google, "Gmail SMTP errors and codes", https://support.google.com/a/answer/3726730 (421
//!   4.7.0 "TLS required for RCPT domain", "unusual rate of unsolicited mail", 4.7.28/5.7.28
//!   rate limits, 4.7.26/5.7.26 unauthenticated, 5.7.27 SPF, 4.7.25/5.7.25 PTR, 4.7.30 DKIM,
//!   4.7.32 DMARC alignment, 4.7.40/5.7.40 no DMARC record, 452 4.2.2 over quota, 552 5.3.4
//!   size) and Google's "Email sender guidelines" FAQ.
//! - Microsoft, "Email non-delivery reports and SMTP errors in Exchange Online"
//!   (https://learn.microsoft.com/troubleshoot/exchange/email-delivery/ndr/non-delivery-reports-in-exchange-online)
//!   and "Fix error code 5.7.700 through 5.7.750" (5.7.606/5.7.708 banned or refused sending IP);
//!   outlook.com's "part of their network is on our block list (S3150)" (also S3140).
//! - Yahoo's postmaster error codes: `421 4.7.0 [TSS04] Messages from ... temporarily deferred
//!   due to unexpected volume or user complaints`.
//! - Spamhaus-style DNSBL rejections, as Exchange Online words them: "Client host [...] blocked
//!   using Spamhaus".

use tern_proto::EnhancedCode;
use tern_queue::StoredReply;

/// A mail provider, recognised by the host name that gave the reply (RFC 3464 Remote-MTA).
#[derive(Debug)]
struct Provider {
    /// How a person calls it.
    name: &'static str,
    /// Host names ending in one of these (after a dot, or equal) are this provider's.
    suffixes: &'static [&'static str],
}

const GMAIL: &str = "Gmail";
const OUTLOOK: &str = "Outlook";
const YAHOO: &str = "Yahoo";

/// Known providers; the first whose suffix matches wins.
static PROVIDERS: &[Provider] = &[
    Provider {
        name: GMAIL,
        suffixes: &["google.com", "googlemail.com", "gmail.com"],
    },
    Provider {
        name: OUTLOOK,
        suffixes: &[
            "protection.outlook.com",
            "outlook.com",
            "hotmail.com",
            "live.com",
            "microsoft.com",
        ],
    },
    Provider {
        name: YAHOO,
        suffixes: &["yahoodns.net", "yahoo.com", "aol.com"],
    },
    Provider {
        name: "iCloud",
        suffixes: &["icloud.com", "apple.com", "me.com"],
    },
    Provider {
        name: "GMX/Web.de",
        suffixes: &["gmx.net", "gmx.de", "gmx.com", "web.de"],
    },
    Provider {
        name: "Proton",
        suffixes: &["protonmail.ch", "proton.me", "protonmail.com"],
    },
    Provider {
        name: "Zoho",
        suffixes: &["zoho.com", "zoho.eu", "zohomail.com"],
    },
    Provider {
        name: "Mimecast",
        suffixes: &["mimecast.com", "mimecast.co.za"],
    },
    Provider {
        name: "Proofpoint",
        suffixes: &["pphosted.com", "ppe-hosted.com", "proofpoint.com"],
    },
    Provider {
        name: "Fastmail",
        suffixes: &["messagingengine.com", "fastmail.com"],
    },
    Provider {
        name: "Yandex",
        suffixes: &["yandex.net", "yandex.ru"],
    },
    Provider {
        name: "Mail.ru",
        suffixes: &["mail.ru"],
    },
    Provider {
        name: "Cisco Secure Email",
        suffixes: &["iphmx.com"],
    },
    Provider {
        name: "Barracuda",
        suffixes: &["barracudanetworks.com"],
    },
];

/// The provider that runs `host`, if a known one does.
fn provider_of(host: &str) -> Option<&'static Provider> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    PROVIDERS.iter().find(|p| {
        p.suffixes
            .iter()
            .any(|s| host == *s || host.strip_suffix(s).is_some_and(|rest| rest.ends_with('.')))
    })
}

/// One line of the table.
#[derive(Debug)]
struct Rule {
    /// Only for replies from this provider ([`Provider::name`]); `None`: any sender, tern too.
    provider: Option<&'static str>,
    /// Enhanced status codes, `class.subject.detail`, where `x` in a place matches any value
    /// (`x.7.26`: 4.7.26 and 5.7.26). Empty: any code.
    codes: &'static [&'static str],
    /// Lower-case substrings of the reply text, any one of which must appear. Empty: none needed.
    markers: &'static [&'static str],
    /// The words.
    words: &'static str,
    /// A reply this rule is for, `code enhanced text` (the unit test checks that this rule, and
    /// not an earlier one, answers it).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the unit tests only"))]
    example: &'static str,
}

/// The table, most specific first. Provider rules with markers, then provider codes, then
/// markers any server uses, then RFC 3463 codes, then RFC 3463 subjects.
static RULES: &[Rule] = &[
    // --- Gmail (support.google.com/a/answer/3726730) ---
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.0"],
        markers: &["tls required"],
        words: "TLS required by the receiving domain",
        example: "421 4.7.0 TLS required for RCPT domain, closing connection.",
    },
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.0"],
        markers: &["unusual rate of unsolicited mail"],
        words: "temporarily blocked: unusual rate of unsolicited mail from this IP",
        example: "421 4.7.0 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
    },
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.26"],
        markers: &[],
        words: "not authenticated (DKIM/SPF not aligned with From, DMARC)",
        example: "550 5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users",
    },
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.27"],
        markers: &[],
        words: "SPF did not pass for the sending IP",
        example: "550 5.7.27 The sender's SPF record doesn't authorize the sending IP",
    },
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.30"],
        markers: &[],
        words: "DKIM did not pass (not signed, or the signature does not verify)",
        example: "550 5.7.30 DKIM authentication didn't pass",
    },
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.32"],
        markers: &[],
        words: "From domain not aligned with the SPF or DKIM domain (DMARC)",
        example: "550 5.7.32 The From: header isn't aligned with either the authenticated SPF or DKIM organizational domain",
    },
    Rule {
        provider: Some(GMAIL),
        codes: &["x.7.31", "x.7.40"],
        markers: &[],
        words: "the From domain has no DMARC record",
        example: "550 5.7.40 Your email has been rejected because the sending domain does not have a DMARC record",
    },
    // --- Outlook / Microsoft 365 ---
    Rule {
        provider: None,
        codes: &[],
        markers: &["s3150", "s3140"],
        words: "Outlook: sending IP on Microsoft's block list (ask for delisting)",
        example: "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
    },
    Rule {
        provider: None,
        codes: &["5.7.606", "5.7.708", "5.7.511"],
        markers: &[],
        words: "Outlook: banned sending IP (ask Microsoft for delisting)",
        example: "550 5.7.606 Access denied, banned sending IP [192.0.2.1].",
    },
    // --- Yahoo / AOL ---
    Rule {
        provider: Some(YAHOO),
        codes: &[],
        markers: &["tss04", "tss09", "temporarily deferred"],
        words: "temporarily deferred: unexpected volume or user complaints",
        example: "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
    },
    // --- Any server: block lists ---
    Rule {
        provider: None,
        codes: &["x.7.x", "x.0.0"],
        markers: &[
            "spamhaus",
            "block list",
            "blocked using",
            "blacklisted",
            "blocklisted",
            "listed at",
            "listed in",
            "listed on",
            "dnsbl",
            "banned sending ip",
        ],
        words: "sending IP on a block list (Spamhaus or similar DNSBL)",
        example: "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus.",
    },
    Rule {
        provider: None,
        codes: &["4.7.0", "4.7.1", "4.2.0", "4.3.0", "4.0.0"],
        markers: &["greylist", "graylist", "try again later", "please retry"],
        words: "temporarily deferred (greylisting or rate limit); tern retries",
        example: "451 4.7.1 Greylisted, please try again in 300 seconds",
    },
    // --- Authentication and reverse DNS, any server ---
    Rule {
        provider: None,
        codes: &["x.7.26", "x.7.1", "x.7.0", "5.7.509"],
        markers: &["dmarc"],
        words: "rejected by the sender domain's DMARC policy",
        example: "550 5.7.1 Email rejected per DMARC policy for example.org",
    },
    Rule {
        provider: None,
        codes: &["x.7.25"],
        markers: &[],
        words: "no PTR (reverse DNS) for the sending IP",
        example: "550 5.7.25 The IP address sending this message does not have a PTR record setup",
    },
    Rule {
        provider: None,
        codes: &["x.7.28"],
        markers: &[],
        words: "rate-limited: suspicious volume from this IP or domain",
        example: "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
    },
    Rule {
        provider: None,
        codes: &["x.7.26", "x.7.27", "x.7.23", "x.7.20", "x.7.21", "x.7.22", "x.7.24"],
        markers: &[],
        words: "not authenticated (SPF/DKIM/DMARC did not pass)",
        example: "550 5.7.23 The message was rejected because of Sender Policy Framework violation",
    },
    // --- TLS and tern's own route trouble ---
    Rule {
        provider: None,
        codes: &["x.7.10", "x.7.11", "5.7.0", "4.7.0", "x.7.4", "5.3.3"],
        markers: &[
            "tls required",
            "starttls",
            "must issue a starttls",
            "encryption required",
        ],
        words: "TLS required by the receiving server",
        example: "530 5.7.0 Must issue a STARTTLS command first",
    },
    Rule {
        provider: None,
        codes: &["x.7.10", "x.7.11"],
        markers: &[],
        words: "TLS required (encryption needed or too weak)",
        example: "550 5.7.10 Encryption needed",
    },
    Rule {
        provider: None,
        codes: &["x.7.5"],
        markers: &[],
        words: "TLS or certificate problem (the handshake or verification failed)",
        example: "451 4.7.5 host mx.example.test[192.0.2.1]: TLS handshake failed: invalid peer certificate",
    },
    Rule {
        provider: None,
        codes: &["x.7.8", "x.7.9", "x.7.57"],
        markers: &[],
        words: "authentication to the relay host failed or is required",
        example: "535 5.7.8 Username and Password not accepted",
    },
    // --- RFC 3463 codes ---
    Rule {
        provider: None,
        codes: &["5.7.1"],
        markers: &[],
        words: "refused by the receiver's policy",
        example: "550 5.7.1 Message rejected as spam by Content Filtering",
    },
    Rule {
        provider: None,
        codes: &["4.7.x"],
        markers: &[],
        words: "temporarily deferred by the receiver's policy; tern retries",
        example: "451 4.7.1 Service unavailable",
    },
    Rule {
        provider: None,
        codes: &["x.1.10"],
        markers: &["null mx"],
        words: "the domain accepts no mail (null MX)",
        example: "556 5.1.10 example.org does not accept mail (null MX, RFC 7505)",
    },
    Rule {
        provider: None,
        codes: &["x.1.1", "x.1.10"],
        markers: &[],
        words: "mailbox does not exist",
        example: "550 5.1.1 The email account that you tried to reach does not exist.",
    },
    Rule {
        provider: None,
        codes: &["x.2.2"],
        markers: &[],
        words: "mailbox full",
        example: "452 4.2.2 The recipient's inbox is out of storage space.",
    },
    Rule {
        provider: None,
        codes: &["x.4.5", "x.3.2", "x.2.0", "x.2.1", "x.3.0"],
        markers: &["busy", "too many", "rate", "quickly", "limit"],
        words: "the receiver is busy or limits the rate; tern retries",
        example: "421 4.4.5 Server busy, try again later.",
    },
    Rule {
        provider: None,
        codes: &["x.2.1"],
        markers: &[],
        words: "mailbox disabled",
        example: "550 5.2.1 The email account that you tried to reach is disabled.",
    },
    Rule {
        provider: None,
        codes: &["x.3.4", "x.2.3"],
        markers: &[],
        words: "message too big",
        example: "552 5.3.4 Your message exceeded Google's message size limits.",
    },
    Rule {
        provider: None,
        codes: &["x.4.1", "x.4.2", "x.4.0"],
        markers: &[],
        words: "could not connect / connection lost",
        example: "451 4.4.1 host mx.example.test[192.0.2.1]: connection refused",
    },
    Rule {
        provider: None,
        codes: &["x.4.3", "x.1.2", "x.4.4"],
        markers: &[],
        words: "domain has no mail server (DNS)",
        example: "550 5.1.2 example.invalid: domain does not exist (NXDOMAIN)",
    },
    Rule {
        provider: None,
        codes: &["x.4.6"],
        markers: &[],
        words: "mail loop (routing points back here)",
        example: "554 5.4.6 mail loop: every MX host of example.org is this server",
    },
    Rule {
        provider: None,
        codes: &["x.4.7"],
        markers: &[],
        words: "expired: gave up after too long in the queue",
        example: "451 4.4.7 gave up after 5days in the queue (queue.max_age); last error: 451 4.4.1 refused",
    },
    Rule {
        provider: None,
        codes: &["x.1.3", "x.1.7", "x.1.8"],
        markers: &[],
        words: "bad address syntax or sender domain",
        example: "553 5.1.3 the stored recipient <a b@x> is not valid",
    },
    Rule {
        provider: None,
        codes: &["x.6.3", "x.6.7"],
        markers: &[],
        words: "the receiver cannot take this message's encoding (8BITMIME/SMTPUTF8)",
        example: "553 5.6.7 the next hop does not support SMTPUTF8",
    },
    Rule {
        provider: None,
        codes: &["5.0.0"],
        markers: &["bounced by the administrator"],
        words: "bounced by the administrator",
        example: "554 5.0.0 bounced by the administrator",
    },
    // --- RFC 3463 subjects: what kind of trouble, when nothing more precise matched ---
    Rule {
        provider: None,
        codes: &["2.x.x"],
        markers: &[],
        words: "accepted",
        example: "250 2.0.0 OK 1700000000 queued",
    },
    Rule {
        provider: None,
        codes: &["x.1.x"],
        markers: &[],
        words: "address problem",
        example: "550 5.1.0 address rejected",
    },
    Rule {
        provider: None,
        codes: &["x.2.x"],
        markers: &[],
        words: "mailbox problem",
        example: "450 4.2.0 mailbox unavailable",
    },
    Rule {
        provider: None,
        codes: &["x.3.x"],
        markers: &[],
        words: "the receiving mail system has a problem",
        example: "451 4.3.0 Mail server temporarily rejected message.",
    },
    Rule {
        provider: None,
        codes: &["x.4.x"],
        markers: &[],
        words: "network or routing problem",
        example: "451 4.4.9 routing trouble",
    },
    Rule {
        provider: None,
        codes: &["x.5.x"],
        markers: &[],
        words: "SMTP protocol problem",
        example: "451 4.5.0 unexpected reply: 354 (host x, in reply to RCPT TO)",
    },
    Rule {
        provider: None,
        codes: &["x.6.x"],
        markers: &[],
        words: "message content refused",
        example: "554 5.6.0 content rejected",
    },
    Rule {
        provider: None,
        codes: &["5.7.x"],
        markers: &[],
        words: "refused by the receiver's security policy",
        example: "554 5.7.99 policy",
    },
    Rule {
        provider: None,
        codes: &["4.x.x"],
        markers: &[],
        words: "temporary failure; tern retries",
        example: "451 4.0.0 local error in processing",
    },
    Rule {
        provider: None,
        codes: &["5.x.x"],
        markers: &[],
        words: "permanent failure",
        example: "554 5.0.0 transaction failed",
    },
];

/// Whether `pattern` (`x.7.26`) matches `code`.
fn code_matches(pattern: &str, code: EnhancedCode) -> bool {
    let mut parts = pattern.split('.');
    let mut want = |value: u16| match parts.next() {
        Some("x") => true,
        Some(p) => p.parse::<u16>().is_ok_and(|p| p == value),
        None => false,
    };
    want(u16::from(code.class)) && want(code.subject) && want(code.detail)
}

impl Rule {
    fn matches(&self, provider: Option<&str>, code: EnhancedCode, text: &str) -> bool {
        (self.provider.is_none() || self.provider == provider)
            && (self.codes.is_empty() || self.codes.iter().any(|p| code_matches(p, code)))
            && (self.markers.is_empty() || self.markers.iter().any(|m| text.contains(m)))
    }
}

/// A short phrase a person understands for `reply`, with the provider in front when the reply
/// came from a known one ("Gmail: mailbox full"); `None` only for a reply outside 2xx-5xx.
pub fn plain_words(reply: &StoredReply) -> Option<String> {
    let provider = reply.remote_host().and_then(provider_of).map(|p| p.name);
    let text = reply.text().to_ascii_lowercase();
    let rule = RULES
        .iter()
        .find(|r| r.matches(provider, reply.status(), &text))?;
    Some(match provider {
        // A rule that names its provider itself ("Outlook: ...") is not prefixed twice.
        Some(name) if !rule.words.starts_with(name) => format!("{name}: {}", rule.words),
        _ => rule.words.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_queue::{Remote, Stage};

    /// The host a rule's example is given from: its provider's, else one nobody knows.
    fn host_for(rule: &Rule) -> &'static str {
        match rule.provider {
            Some(GMAIL) => "gmail-smtp-in.l.google.com",
            Some(OUTLOOK) => "example-com.mail.protection.outlook.com",
            Some(YAHOO) => "mta5.am0.yahoodns.net",
            Some(other) => panic!("add a host for {other}"),
            None => "mx.example.test",
        }
    }

    fn from(host: Option<&str>, reply: &str) -> StoredReply {
        let r = StoredReply::from_legacy(reply);
        match host {
            Some(h) => StoredReply::remote(
                r.code(),
                r.enhanced(),
                r.text(),
                Remote {
                    host: h.into(),
                    addr: None,
                    stage: Some(Stage::Rcpt),
                },
            ),
            None => r,
        }
    }

    fn index_of(reply: &StoredReply) -> Option<usize> {
        let provider = reply.remote_host().and_then(provider_of).map(|p| p.name);
        let text = reply.text().to_ascii_lowercase();
        RULES
            .iter()
            .position(|r| r.matches(provider, reply.status(), &text))
    }

    /// Every rule answers its own example: no earlier rule shadows it.
    #[test]
    fn every_rule_answers_its_example() {
        for (i, rule) in RULES.iter().enumerate() {
            let reply = from(Some(host_for(rule)), rule.example);
            assert_eq!(
                index_of(&reply),
                Some(i),
                "rule {i} ({}) does not answer its example {:?}",
                rule.words,
                rule.example
            );
            let words = plain_words(&reply).unwrap_or_default();
            assert!(words.ends_with(rule.words), "{words:?} for rule {i}");
        }
    }

    #[test]
    fn gmail_codes_are_named() {
        let g = Some("gmail-smtp-in.l.google.com");
        let cases = [
            (
                "550 5.7.26 This mail is unauthenticated",
                "Gmail: not authenticated (DKIM/SPF not aligned with From, DMARC)",
            ),
            (
                "421 4.7.26 unauthenticated, try again",
                "Gmail: not authenticated (DKIM/SPF not aligned with From, DMARC)",
            ),
            (
                "550 5.7.27 SPF",
                "Gmail: SPF did not pass for the sending IP",
            ),
            (
                "550 5.7.25 no PTR",
                "Gmail: no PTR (reverse DNS) for the sending IP",
            ),
            (
                "421 4.7.28 rate",
                "Gmail: rate-limited: suspicious volume from this IP or domain",
            ),
            (
                "550 5.7.28 rate",
                "Gmail: rate-limited: suspicious volume from this IP or domain",
            ),
            (
                "550 5.1.1 The email account that you tried to reach does not exist",
                "Gmail: mailbox does not exist",
            ),
            ("452 4.2.2 over quota", "Gmail: mailbox full"),
            ("552 5.2.2 over quota", "Gmail: mailbox full"),
            ("550 5.2.1 disabled", "Gmail: mailbox disabled"),
            ("552 5.3.4 too big", "Gmail: message too big"),
            ("552 5.2.3 too big", "Gmail: message too big"),
            (
                "421 4.7.0 TLS required for RCPT domain",
                "Gmail: TLS required by the receiving domain",
            ),
            (
                "550 5.7.1 policy",
                "Gmail: refused by the receiver's policy",
            ),
            (
                "421 4.7.0 Try again later",
                "Gmail: temporarily deferred (greylisting or rate limit); tern retries",
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(
                plain_words(&from(g, reply)).as_deref(),
                Some(want),
                "{reply}"
            );
        }
        // googlemail.com too, with a trailing dot and in upper case.
        let r = from(Some("ALT1.GMAIL-SMTP-IN.L.GOOGLEMAIL.COM."), "550 5.1.1 no");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("Gmail: mailbox does not exist")
        );
    }

    #[test]
    fn providers_are_recognised_by_host_suffix_only() {
        let name = |h: &str| provider_of(h).map(|p| p.name);
        assert_eq!(
            name("example-com.mail.protection.outlook.com"),
            Some(OUTLOOK)
        );
        assert_eq!(
            name("hotmail-com.olc.protection.outlook.com"),
            Some(OUTLOOK)
        );
        assert_eq!(name("mta7.am0.yahoodns.net"), Some(YAHOO));
        assert_eq!(name("mx01.mail.icloud.com"), Some("iCloud"));
        assert_eq!(name("mx-ha03.web.de"), Some("GMX/Web.de"));
        assert_eq!(name("mx00.gmx.net"), Some("GMX/Web.de"));
        assert_eq!(name("mail.protonmail.ch"), Some("Proton"));
        assert_eq!(name("mx.zoho.eu"), Some("Zoho"));
        assert_eq!(name("eu-smtp-inbound-1.mimecast.com"), Some("Mimecast"));
        assert_eq!(name("mx0a-001.pphosted.com"), Some("Proofpoint"));
        // A look-alike is not the provider.
        assert_eq!(name("notgoogle.com"), None);
        assert_eq!(name("google.com.evil.test"), None);
        assert_eq!(name("mx.example.test"), None);
    }

    #[test]
    fn blocklists_and_outlook_markers() {
        let o = Some("example-com.mail.protection.outlook.com");
        let r = from(o, "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. ... on our block list (S3150)");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("Outlook: sending IP on Microsoft's block list (ask for delisting)")
        );
        let r = from(
            o,
            "550 5.7.606 Access denied, banned sending IP [192.0.2.1]",
        );
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("Outlook: banned sending IP (ask Microsoft for delisting)")
        );
        let r = from(
            Some("mx.example.test"),
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        );
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("sending IP on a block list (Spamhaus or similar DNSBL)")
        );
        let r = from(
            Some("mx.example.test"),
            "550 5.7.0 your IP is listed at bl.example",
        );
        assert!(plain_words(&r).unwrap_or_default().contains("block list"));
    }

    #[test]
    fn tls_required_and_deferrals() {
        let m = Some("mx.example.test");
        let r = from(m, "530 5.7.0 Must issue a STARTTLS command first");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("TLS required by the receiving server")
        );
        let r = from(m, "550 5.7.11 Encryption too weak");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("TLS required (encryption needed or too weak)")
        );
        let r = from(m, "450 4.7.1 Greylisted for 5 minutes");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("temporarily deferred (greylisting or rate limit); tern retries")
        );
        let r = from(m, "451 4.7.1 Service unavailable");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("temporarily deferred by the receiver's policy; tern retries")
        );
        let y = Some("mta5.am0.yahoodns.net");
        let r = from(y, "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints");
        assert_eq!(
            plain_words(&r).as_deref(),
            Some("Yahoo: temporarily deferred: unexpected volume or user complaints")
        );
    }

    #[test]
    fn tern_own_replies_have_no_provider() {
        let cases = [
            (
                "451 4.4.1 host 127.0.0.1[127.0.0.1]: connection refused",
                "could not connect / connection lost",
            ),
            (
                "451 4.4.2 host mx.x.test[192.0.2.1]: timed out after 2s waiting for greeting",
                "could not connect / connection lost",
            ),
            (
                "451 4.4.3 SERVFAIL looking up MX of broken.test",
                "domain has no mail server (DNS)",
            ),
            (
                "550 5.1.2 nope.test: domain does not exist",
                "domain has no mail server (DNS)",
            ),
            (
                "556 5.1.10 null.test does not accept mail (null MX, RFC 7505)",
                "the domain accepts no mail (null MX)",
            ),
            (
                "554 5.4.6 mail loop: every MX host of x.test is this server",
                "mail loop (routing points back here)",
            ),
            (
                "554 5.0.0 bounced by the administrator",
                "bounced by the administrator",
            ),
            (
                "451 4.7.5 cannot read the route's ca_file /x: denied",
                "TLS or certificate problem (the handshake or verification failed)",
            ),
            (
                "552 5.3.4 message too big for the next hop",
                "message too big",
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(
                plain_words(&from(None, reply)).as_deref(),
                Some(want),
                "{reply}"
            );
        }
    }

    #[test]
    fn a_reply_without_enhanced_code_gets_its_class() {
        assert_eq!(
            plain_words(&from(None, "550 no such user")).as_deref(),
            Some("permanent failure")
        );
        assert_eq!(
            plain_words(&from(None, "421 closing")).as_deref(),
            Some("temporary failure; tern retries")
        );
    }

    #[test]
    fn code_patterns() {
        let c = EnhancedCode::new(5, 7, 26);
        assert!(code_matches("x.7.26", c) && code_matches("5.7.26", c) && code_matches("5.x.x", c));
        assert!(!code_matches("4.7.26", c) && !code_matches("x.7.2", c) && !code_matches("x.7", c));
        assert!(!code_matches("", c) && !code_matches("x.7.y", c));
    }
}
