//! Delivery status notifications (RFC 3464): the bounce ("failed") and delay-warning ("delayed")
//! messages tern sends back to a sender. A pure builder: it takes what the queue knows about the
//! recipients and the original message, and returns the complete RFC 5322 message as bytes.
//!
//! The MIME is written by hand rather than with mail-builder: a report is three fixed parts, and
//! what matters is exact control over details a general builder decides for itself: the
//! `report-type` parameter of multipart/report (RFC 6522), the message/delivery-status body,
//! which is a block of header-like fields that must be written verbatim (never encoded), and the
//! original header section copied byte for byte (RFC 6522 text/rfc822-headers), with a boundary
//! checked against all of it.
//!
//! Every line ends in CRLF and is at most 998 octets (RFC 5322 2.1.1): long diagnostic texts are
//! cut to [`MAX_DIAGNOSTIC`] bytes and folded, over-long original header lines are truncated.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tern_proto::{rfc5322_date, HeaderSection};
use tern_queue::StoredReply;

/// What happened to a recipient (RFC 3464 2.3.3; tern never reports "expanded").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Will not be delivered: a permanent failure, or the queue gave up.
    Failed,
    /// Not delivered yet, still being retried.
    Delayed,
    /// Stored in the recipient's mailbox (NOTIFY=SUCCESS, RFC 3461 4.1).
    Delivered,
    /// Handed to a next hop that does not offer DSN, so no further notification will come
    /// (NOTIFY=SUCCESS, RFC 3461 5.2.2).
    Relayed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }

    fn is_success(self) -> bool {
        matches!(self, Action::Delivered | Action::Relayed)
    }
}

/// One recipient's block of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The address delivery was attempted to (after alias expansion).
    pub final_recipient: String,
    /// The address as the client gave it, when it differs (RFC 3464 Original-Recipient).
    pub original_recipient: Option<String>,
    /// The sender's own ORCPT (RFC 3461 4.2, `addr-type;address`): the Original-Recipient,
    /// ahead of `original_recipient`.
    pub orcpt: Option<String>,
    pub action: Action,
    /// The reply that decided the outcome: a remote server's ("550 5.1.1 no such user", with
    /// the host that gave it) or one tern decided on ("554 5.4.6 mail loop", no host). A remote
    /// reply becomes `Diagnostic-Code: smtp; <the reply>` and its host `Remote-MTA: dns;
    /// <host name>` (RFC 3464 2.3.5, 2.3.6); tern's own is only in the text and the Status.
    pub reply: StoredReply,
    pub last_attempt: Option<SystemTime>,
    /// For delayed recipients: when the queue gives up (RFC 3464 Will-Retry-Until).
    pub will_retry_until: Option<SystemTime>,
}

/// Everything a report says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name: Reporting-MTA, the From address and the Message-ID domain.
    pub reporting_mta: &'a str,
    /// Who the report goes to (the original envelope sender, or the postmaster).
    pub to: &'a str,
    /// When the original message was received (RFC 3464 Arrival-Date).
    pub arrival_date: SystemTime,
    /// The original message's queue id (`X-Queue-ID`), for the operator's log search.
    pub queue_id: Option<&'a str>,
    pub recipients: &'a [RecipientReport],
    /// The original message, or at least its header section: only the header section is
    /// returned (RFC 6522 text/rfc822-headers), unless `return_full`.
    pub original: &'a [u8],
    /// RET=FULL on a failure report (RFC 3461 4.3): `original` is the whole message, and is
    /// returned whole as message/rfc822.
    pub return_full: bool,
    /// The sender's ENVID (RFC 3461 4.4), returned as Original-Envelope-Id.
    pub envid: Option<&'a str>,
    /// The report's own Date; also used to make the Message-ID.
    pub date: SystemTime,
}

/// Diagnostic texts longer than this (in bytes) are cut: a multi-line reply joined into one can
/// be long, and nothing in a bounce needs more.
pub const MAX_DIAGNOSTIC: usize = 2000;

/// RFC 5322 2.1.1: a line is at most 998 octets without its CRLF.
const MAX_LINE: usize = 998;

/// Folding target for the lines we write ourselves (RFC 5322 2.1.1 "SHOULD be 78").
const FOLD_AT: usize = 78;

/// The complete DSN message: headers, and a multipart/report with the human-readable text, the
/// machine-readable status and the original header section.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    build_with(report, std::iter::empty())
}

/// [`build`] trying the given boundaries before random ones (tests force a collision with it).
fn build_with(report: &Report<'_>, boundaries: impl Iterator<Item = String>) -> Vec<u8> {
    // RFC 6533: addresses with non-ASCII characters cannot be written as rfc822 address types;
    // such reports use the "global" variants, which carry UTF-8.
    let global = !report.to.is_ascii()
        || report.recipients.iter().any(|r| {
            !r.final_recipient.is_ascii()
                || r.original_recipient.as_ref().is_some_and(|o| !o.is_ascii())
        });
    let failed = report.recipients.iter().any(|r| r.action == Action::Failed);
    let success = report.recipients.iter().all(|r| r.action.is_success());
    let full = report.return_full && failed;

    let text = human_text(report, failed);
    let status = delivery_status(report, global);
    let headers = if full {
        // RFC 3462/6522: the returned message as it was, line ends made CRLF.
        let mut m = crate::maildir::lf_to_crlf(report.original);
        if !m.ends_with(b"\r\n") {
            m.extend_from_slice(b"\r\n");
        }
        m
    } else {
        original_headers(report.original)
    };

    let boundary = pick_boundary(boundaries, &[text.as_bytes(), status.as_bytes(), &headers]);
    let eight_bit = |b: &[u8]| if b.is_ascii() { "7bit" } else { "8bit" };
    let (status_type, mut headers_type, report_type) = if global {
        (
            "message/global-delivery-status",
            "message/global-headers",
            "global-delivery-status",
        )
    } else {
        (
            "message/delivery-status",
            "text/rfc822-headers",
            "delivery-status",
        )
    };
    if full {
        headers_type = if global {
            "message/global"
        } else {
            "message/rfc822"
        };
    }

    let mut out: Vec<u8> = Vec::with_capacity(text.len() + status.len() + headers.len() + 1024);
    let mut head = String::with_capacity(1024);
    let host = clean(report.reporting_mta);
    let _ = write!(head, "Date: {}\r\n", rfc5322_date(report.date));
    let _ = write!(
        head,
        "From: \"Mail Delivery System\" <MAILER-DAEMON@{host}>\r\n"
    );
    let _ = write!(head, "To: <{}>\r\n", clean(report.to));
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if success {
        "Successful Mail Delivery Report"
    } else {
        "Delayed Mail (still being retried)"
    };
    let _ = write!(head, "Subject: {subject}\r\n");
    let _ = write!(head, "Message-ID: {}\r\n", message_id(report.date, &host));
    // RFC 3834 5: an automatic response; RFC 3464 itself forbids answering a DSN with a DSN,
    // which the null reverse-path it is sent with already ensures.
    head.push_str("Auto-Submitted: auto-replied\r\n");
    head.push_str("MIME-Version: 1.0\r\n");
    let _ = write!(
        head,
        "Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{boundary}\"\r\n"
    );
    let all_ascii = text.is_ascii() && status.is_ascii() && headers.is_ascii();
    let _ = write!(
        head,
        "Content-Transfer-Encoding: {}\r\n\r\n",
        if all_ascii { "7bit" } else { "8bit" }
    );
    head.push_str("This is a delivery status notification in MIME format (RFC 3464).\r\n\r\n");
    out.extend_from_slice(head.as_bytes());

    let mut part = |content_type: &str, body: &[u8]| {
        let mut h = format!("--{boundary}\r\nContent-Type: {content_type}\r\n");
        let _ = write!(h, "Content-Transfer-Encoding: {}\r\n", eight_bit(body));
        h.push_str("\r\n");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    };
    part(
        "text/plain; charset=utf-8\r\nContent-Description: Notification",
        text.as_bytes(),
    );
    part(
        &format!("{status_type}\r\nContent-Description: Delivery report"),
        status.as_bytes(),
    );
    let description = match (full, success) {
        (true, _) => "Undelivered message",
        (false, true) => "Message headers",
        (false, false) => "Undelivered message headers",
    };
    part(
        &format!("{headers_type}\r\nContent-Description: {description}"),
        &headers,
    );
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// The RFC 3463 status for a recipient: the reply's enhanced code when it agrees with the
/// reply code ("550 5.1.1 ..." -> "5.1.1"), else the generic code of the reply's class (5xx ->
/// 5.0.0, 4xx -> 4.0.0), else the action's (a reply of another class: failed -> 5.0.0,
/// delayed -> 4.0.0). Read from the typed reply, never from its text.
pub fn status_code(reply: &StoredReply, action: Action) -> String {
    match (reply.code() / 100, action.is_success()) {
        (4 | 5, false) | (2, true) => reply.status().to_string(),
        _ => match action {
            Action::Failed => "5.0.0".to_string(),
            Action::Delayed => "4.0.0".to_string(),
            Action::Delivered | Action::Relayed => "2.0.0".to_string(),
        },
    }
}

fn human_text(report: &Report<'_>, failed: bool) -> String {
    let host = clean(report.reporting_mta);
    let mut t = String::with_capacity(1024);
    let _ = write!(t, "This is the mail system at {host}.\r\n\r\n");
    if failed {
        t.push_str(&wrap_paragraph(if report.return_full {
            "Your message could not be delivered to one or more of its recipients. \
             Nothing more will be tried for them. The reasons are below; your message \
             is attached."
        } else {
            "Your message could not be delivered to one or more of its recipients. \
             Nothing more will be tried for them. The reasons are below; the headers \
             of your message are attached."
        }));
    } else if report.recipients.iter().all(|r| r.action.is_success()) {
        let relayed = report
            .recipients
            .iter()
            .any(|r| r.action == Action::Relayed);
        t.push_str(&wrap_paragraph(if relayed {
            "Your message was delivered to the recipients below, as you asked to be told. \
             Where it was passed on to another mail system that does not send delivery \
             notifications, this is the last you will hear about it."
        } else {
            "Your message was delivered to the mailboxes of the recipients below, as you \
             asked to be told."
        }));
    } else {
        let until = report
            .recipients
            .iter()
            .filter_map(|r| r.will_retry_until)
            .max();
        let mut p = String::from(
            "Your message has not been delivered yet to the recipients below. \
             This is only a warning: the mail system will keep trying",
        );
        match until {
            Some(u) => {
                let _ = write!(p, " until {}", rfc5322_date(u));
            }
            None => p.push_str(" for a while"),
        }
        p.push_str(
            ", and you will be told if it gives up. You do not need to send the message again.",
        );
        t.push_str(&wrap_paragraph(&p));
    }
    t.push_str("\r\n");
    if let Some(id) = report.queue_id {
        let _ = write!(t, "Queue id: {}\r\n", clean(id));
    }
    let _ = write!(
        t,
        "Message received: {}\r\n",
        rfc5322_date(report.arrival_date)
    );
    for r in report.recipients {
        t.push_str("\r\n");
        let mut who = format!("<{}>", clean(&r.final_recipient));
        if let Some(o) = &r.original_recipient {
            let _ = write!(who, " (originally <{}>)", clean(o));
        }
        match r.reply.remote_host() {
            Some(mta) => {
                let _ = write!(who, ": host {} said:", clean(mta));
            }
            None => who.push(':'),
        }
        for line in wrap(&who, "", "    ") {
            t.push_str(&line);
            t.push_str("\r\n");
        }
        for line in wrap(&diagnostic(&r.reply.to_string()), "    ", "    ") {
            t.push_str(&line);
            t.push_str("\r\n");
        }
    }
    t
}

fn delivery_status(report: &Report<'_>, global: bool) -> String {
    let addr_type = if global { "utf-8" } else { "rfc822" };
    let mut s = String::with_capacity(512);
    if let Some(id) = report.envid {
        // RFC 3464 2.2.1: first, when the sender gave an ENVID.
        s.push_str(&fold_field("Original-Envelope-Id", &clean(id)));
    }
    let _ = write!(s, "Reporting-MTA: dns; {}\r\n", clean(report.reporting_mta));
    let _ = write!(s, "Arrival-Date: {}\r\n", rfc5322_date(report.arrival_date));
    if let Some(id) = report.queue_id {
        let _ = write!(s, "X-Queue-ID: {}\r\n", clean(id));
    }
    for r in report.recipients {
        s.push_str("\r\n");
        if let Some((kind, address)) = r.orcpt.as_deref().and_then(|o| o.split_once(';')) {
            s.push_str(&fold_field(
                "Original-Recipient",
                &format!("{}; {}", clean(kind), clean(address)),
            ));
        } else if let Some(o) = &r.original_recipient {
            s.push_str(&fold_field(
                "Original-Recipient",
                &format!("{addr_type}; {}", clean(o)),
            ));
        }
        s.push_str(&fold_field(
            "Final-Recipient",
            &format!("{addr_type}; {}", clean(&r.final_recipient)),
        ));
        let _ = write!(s, "Action: {}\r\n", r.action.as_str());
        let _ = write!(s, "Status: {}\r\n", status_code(&r.reply, r.action));
        if let Some(mta) = r.reply.remote_host() {
            s.push_str(&fold_field("Remote-MTA", &format!("dns; {}", clean(mta))));
            s.push_str(&fold_field(
                "Diagnostic-Code",
                &format!("smtp; {}", diagnostic(&r.reply.to_string())),
            ));
        }
        if let Some(t) = r.last_attempt {
            let _ = write!(s, "Last-Attempt-Date: {}\r\n", rfc5322_date(t));
        }
        if r.action == Action::Delayed {
            if let Some(t) = r.will_retry_until {
                let _ = write!(s, "Will-Retry-Until: {}\r\n", rfc5322_date(t));
            }
        }
    }
    s
}

/// The original header section, every line ending in CRLF and at most 998 octets (longer ones
/// are cut: the part is for reading, and a line that long is already broken).
fn original_headers(message: &[u8]) -> Vec<u8> {
    let section = HeaderSection::find(message).fields();
    let mut out = Vec::with_capacity(section.len() + 64);
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // Only the split's empty tail after the last LF: the fields hold no empty line.
            continue;
        }
        let mut end = line.len().min(MAX_LINE);
        // Don't cut a UTF-8 sequence in half.
        while end < line.len() && end > 0 && (line[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        // A bare CR or NUL has no place in a header line (RFC 5322 2.2); keep the line's length.
        out.extend(line[..end].iter().map(|&b| match b {
            b'\r' | 0 => b' ',
            b => b,
        }));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A string from the envelope or a reply, made safe for one header field or text line:
/// control characters (a CR LF would end the field) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The reply as a diagnostic: cleaned, runs of white space collapsed, cut to MAX_DIAGNOSTIC.
fn diagnostic(reply: &str) -> String {
    let cleaned = clean(reply);
    let mut out = String::with_capacity(cleaned.len().min(MAX_DIAGNOSTIC + 8));
    for word in cleaned.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.len() > MAX_DIAGNOSTIC {
        let mut end = MAX_DIAGNOSTIC;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(" [...]");
    }
    out
}

/// `Name: value` folded at spaces before column 78 where possible (RFC 5322 2.2.3), CRLF at
/// the end. A word too long for one line is split so no line passes 998 octets.
fn fold_field(name: &str, value: &str) -> String {
    let lines = wrap(value, &format!("{name}: "), " ");
    let mut out = String::with_capacity(value.len() + name.len() + 8);
    for line in lines {
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

/// Words of `text` filled into lines of about FOLD_AT characters; the first line starts with
/// `first`, the others with `rest` (a fold's leading white space). Words longer than fit in a
/// line are split at character boundaries, so every line stays well under MAX_LINE.
fn wrap(text: &str, first: &str, rest: &str) -> Vec<String> {
    // Room for a piece of a split word: far below MAX_LINE whatever the prefixes are.
    const PIECE: usize = 900;
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut has_word = false;
    for word in text.split_whitespace() {
        let mut word = word;
        while !word.is_empty() {
            let mut take = word.len().min(PIECE);
            while !word.is_char_boundary(take) {
                take -= 1;
            }
            let piece = &word[..take];
            word = &word[take..];
            if has_word && line.len() + 1 + piece.len() > FOLD_AT {
                lines.push(std::mem::replace(&mut line, rest.to_string()));
                has_word = false;
            }
            if has_word {
                line.push(' ');
            }
            line.push_str(piece);
            has_word = true;
        }
    }
    lines.push(line);
    lines
}

/// A paragraph of our own text, wrapped, each line ending in CRLF.
fn wrap_paragraph(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in wrap(text, "", "") {
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

/// `<secs.random@host>`: unique without any state (RFC 5322 3.6.4).
fn message_id(date: SystemTime, host: &str) -> String {
    let secs = date
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let host = if host.is_empty() { "localhost" } else { host };
    format!("<dsn.{secs}.{:016x}@{host}>", rand::random::<u64>())
}

/// A boundary that occurs in none of `parts` (RFC 2046 5.1.1). "=_" cannot appear in base64 or
/// at the start of a quoted-printable escape, and 128 random bits cannot be guessed by whoever
/// wrote the original headers; the check makes it certain rather than likely.
fn pick_boundary(preferred: impl Iterator<Item = String>, parts: &[&[u8]]) -> String {
    let occurs = |b: &str| {
        parts
            .iter()
            .any(|p| p.windows(b.len()).any(|w| w == b.as_bytes()))
    };
    let random = std::iter::repeat_with(|| format!("=_tern_dsn_{:032x}", rand::random::<u128>()));
    let mut last = String::new();
    for candidate in preferred.chain(random).take(64) {
        if !occurs(&candidate) {
            return candidate;
        }
        last = candidate;
    }
    // 64 random 128-bit values all present in a message of bounded size cannot happen; if it
    // ever did, a boundary longer than any part cannot occur in it (RFC 2046 allows up to 70).
    let longest = parts.iter().map(|p| p.len()).max().unwrap_or(0);
    if longest < 70 {
        return "=_".repeat(35);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders, PartType};
    use std::time::Duration;
    use tern_proto::EnhancedCode;
    use tern_queue::{Remote, Stage};

    const ORIGINAL: &[u8] = b"Received: from client.test ([127.0.0.1])\r\n\tby mx.tern.test (tern) with ESMTP\r\n\tid 1;\r\n\tSat, 28 Nov 2026 10:00:00 +0000\r\nFrom: <alice@tern.test>\r\nTo: <bob@remote.test>\r\nSubject: lunch?\r\nMessage-ID: <m1@tern.test>\r\n\r\nSecret body text.\r\n";

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn failed(addr: &str, reply: &str, mta: Option<&str>) -> RecipientReport {
        RecipientReport {
            final_recipient: addr.into(),
            original_recipient: None,
            orcpt: None,
            action: Action::Failed,
            reply: stored(reply, mta),
            last_attempt: Some(t(1_800_000_100)),
            will_retry_until: None,
        }
    }

    /// A reply as the queue stores it; from `mta` when given.
    fn stored(reply: &str, mta: Option<&str>) -> StoredReply {
        let r = StoredReply::from_legacy(reply);
        match mta {
            Some(host) => StoredReply::remote(
                r.code(),
                r.enhanced(),
                r.text(),
                Remote {
                    host: host.into(),
                    addr: None,
                    stage: Some(Stage::Rcpt),
                },
            ),
            None => r,
        }
    }

    fn report<'a>(recipients: &'a [RecipientReport], original: &'a [u8]) -> Report<'a> {
        Report {
            reporting_mta: "mx.tern.test",
            to: "alice@tern.test",
            arrival_date: t(1_800_000_000),
            queue_id: Some("0123456789abcdef0123456789abcdef"),
            recipients,
            original,
            date: t(1_800_000_200),
            return_full: false,
            envid: None,
        }
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Every line CRLF-terminated (no bare CR or LF) and at most 998 octets.
    fn assert_lines_ok(msg: &[u8]) {
        assert!(msg.ends_with(b"\r\n"));
        for (i, line) in msg.split(|&b| b == b'\n').enumerate() {
            if i + 1 == msg.split(|&b| b == b'\n').count() {
                assert!(line.is_empty());
                continue;
            }
            let line = line.strip_suffix(b"\r").expect("LF without CR");
            assert!(!line.contains(&b'\r'), "bare CR in line {i}");
            assert!(line.len() <= 998, "line {i} has {} octets", line.len());
        }
    }

    fn boundary_of(msg: &str) -> String {
        let start = msg.find("boundary=\"").unwrap() + "boundary=\"".len();
        let end = start + msg[start..].find('"').unwrap();
        msg[start..end].to_string()
    }

    #[test]
    fn status_from_enhanced_code_or_basic_code() {
        let f = Action::Failed;
        let sc = |reply: &str, action| status_code(&stored(reply, None), action);
        assert_eq!(sc("550 5.1.1 no such user", f), "5.1.1");
        assert_eq!(sc("554 5.4.6 mail loop: too many hops", f), "5.4.6");
        assert_eq!(sc("450 4.2.0 mailbox busy", Action::Delayed), "4.2.0");
        assert_eq!(sc("550 no such user", f), "5.0.0");
        assert_eq!(sc("550", f), "5.0.0");
        assert_eq!(sc("421 try later", Action::Delayed), "4.0.0");
        // Gave up after the last temporary failure: the reply's class is kept.
        assert_eq!(sc("451 4.4.1 connection refused", f), "4.4.1");
        // An enhanced code that contradicts the basic one is not believed.
        let confused = StoredReply::local(550, Some(EnhancedCode::new(4, 1, 1)), "confused");
        assert_eq!(status_code(&confused, f), "5.0.0");
        let long = StoredReply::local(550, Some(EnhancedCode::new(5, 7, 26)), "x");
        assert_eq!(status_code(&long, f), "5.7.26");
        // A reply of no failure class: the action decides.
        assert_eq!(sc("250 ok", f), "5.0.0");
        assert_eq!(sc("354 go ahead", Action::Delayed), "4.0.0");
    }

    #[test]
    fn failed_report_parses_as_multipart_report() {
        let rcpts = [
            RecipientReport {
                original_recipient: Some("Bob@Alias.test".into()),
                orcpt: None,
                ..failed(
                    "bob@remote.test",
                    "550 5.1.1 <bob@remote.test>: no such user",
                    Some("mx.remote.test"),
                )
            },
            failed(
                "carol@remote.test",
                "554 5.4.6 mail loop: too many Received headers",
                None,
            ),
        ];
        let msg = build(&report(&rcpts, ORIGINAL));
        assert_lines_ok(&msg);
        let s = text(&msg);
        assert!(!s.contains("Secret body"), "the body must not be returned");

        let parsed = MessageParser::default().parse(&msg).unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(
            parsed.header_raw("From").map(str::trim),
            Some("\"Mail Delivery System\" <MAILER-DAEMON@mx.tern.test>")
        );
        assert_eq!(
            parsed.header_raw("To").map(str::trim),
            Some("<alice@tern.test>")
        );
        assert!(parsed.date().is_some());
        assert!(parsed.message_id().unwrap().ends_with("@mx.tern.test"));
        let ct = parsed.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(ct.attribute("boundary"), Some(boundary_of(&s).as_str()));

        let PartType::Multipart(ids) = &parsed.parts[0].body else {
            panic!("root is not multipart: {:?}", parsed.parts[0].body);
        };
        assert_eq!(ids.len(), 3);
        let part = |i: usize| &parsed.parts[ids[i] as usize];
        let types: Vec<(String, Option<String>)> = (0..3)
            .map(|i| {
                let ct = part(i).content_type().unwrap();
                (ct.ctype().to_string(), ct.subtype().map(str::to_string))
            })
            .collect();
        assert_eq!(
            types,
            [
                ("text".to_string(), Some("plain".to_string())),
                ("message".to_string(), Some("delivery-status".to_string())),
                ("text".to_string(), Some("rfc822-headers".to_string())),
            ]
        );

        let PartType::Text(human) = &part(0).body else {
            panic!("text part")
        };
        assert!(
            human.contains(
                "<bob@remote.test> (originally <Bob@Alias.test>): host mx.remote.test said:"
            ),
            "{human}"
        );
        assert!(
            human.contains("    550 5.1.1 <bob@remote.test>: no such user"),
            "{human}"
        );
        assert!(
            human.contains("<carol@remote.test>:\r\n    554 5.4.6 mail loop"),
            "{human}"
        );

        let status = match &part(1).body {
            PartType::Binary(b) | PartType::InlineBinary(b) => text(b),
            PartType::Text(t) => t.to_string(),
            other => panic!("delivery-status part: {other:?}"),
        };
        let blocks: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
        assert_eq!(blocks.len(), 3, "{status}");
        assert_eq!(
            blocks[0],
            "Reporting-MTA: dns; mx.tern.test\r\nArrival-Date: Fri, 15 Jan 2027 08:00:00 +0000\r\nX-Queue-ID: 0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            blocks[1],
            "Original-Recipient: rfc822; Bob@Alias.test\r\nFinal-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user\r\nLast-Attempt-Date: Fri, 15 Jan 2027 08:01:40 +0000"
        );
        // A reply tern made up itself is not an SMTP diagnostic from a remote MTA.
        assert_eq!(
            blocks[2],
            "Final-Recipient: rfc822; carol@remote.test\r\nAction: failed\r\nStatus: 5.4.6\r\nLast-Attempt-Date: Fri, 15 Jan 2027 08:01:40 +0000"
        );

        let PartType::Text(headers) = &part(2).body else {
            panic!("headers part")
        };
        assert_eq!(
            headers.as_bytes(),
            HeaderSection::find(ORIGINAL).fields(),
            "the header section, byte for byte"
        );
    }

    #[test]
    fn delayed_report() {
        let rcpts = [RecipientReport {
            action: Action::Delayed,
            will_retry_until: Some(t(1_800_432_000)),
            ..failed(
                "bob@remote.test",
                "451 4.7.1 greylisted, come back later",
                Some("mx.remote.test"),
            )
        }];
        let msg = build(&report(&rcpts, ORIGINAL));
        assert_lines_ok(&msg);
        let s = text(&msg);
        assert!(s.contains("\r\nSubject: Delayed Mail (still being retried)\r\n"));
        assert!(
            s.contains("\r\nAction: delayed\r\nStatus: 4.7.1\r\n"),
            "{s}"
        );
        assert!(s.contains("\r\nWill-Retry-Until: Wed, 20 Jan 2027 08:00:00 +0000\r\n"));
        assert!(s.contains("keep trying until Wed, 20 Jan 2027"), "{s}");
        let parsed = MessageParser::default().parse(&msg).unwrap();
        assert_eq!(parsed.subject(), Some("Delayed Mail (still being retried)"));
    }

    #[test]
    fn will_retry_until_only_for_delayed() {
        let rcpts = [RecipientReport {
            will_retry_until: Some(t(1_800_432_000)),
            ..failed("bob@remote.test", "550 5.1.1 x", None)
        }];
        let s = text(&build(&report(&rcpts, ORIGINAL)));
        assert!(!s.contains("Will-Retry-Until"));
    }

    #[test]
    fn long_diagnostics_are_folded_and_cut() {
        let long_word = "x".repeat(5000);
        let long_reply = format!(
            "550 5.7.1 {} {long_word}",
            "policy violation because of reasons; ".repeat(40)
        );
        let rcpts = [failed(
            "bob@remote.test",
            &long_reply,
            Some("mx.remote.test"),
        )];
        let long_header = format!("X-Long: {}\r\n", "y".repeat(3000));
        let original = format!("{long_header}Subject: hi\r\n\r\nbody\r\n");
        let msg = build(&report(&rcpts, original.as_bytes()));
        assert_lines_ok(&msg);
        let s = text(&msg);
        let parsed = MessageParser::default().parse(&msg).unwrap();
        assert_eq!(parsed.parts.len(), 4, "{s}");
        // Unfolded, the diagnostic is the reply's start, cut with a marker.
        let start = s.find("Diagnostic-Code: ").unwrap();
        let end = start + s[start..].find("\r\nLast-Attempt-Date").unwrap();
        let unfolded = s[start..end].replace("\r\n ", " ");
        assert!(unfolded.starts_with("Diagnostic-Code: smtp; 550 5.7.1 policy violation"));
        assert!(unfolded.ends_with(" [...]"), "{unfolded}");
        assert!(unfolded.len() < MAX_DIAGNOSTIC + 200);
        // The over-long original header is cut, the next one kept.
        assert!(s.contains(&format!("X-Long: {}\r\nSubject: hi\r\n", "y".repeat(990))));
    }

    #[test]
    fn header_injection_through_addresses_or_replies_is_impossible() {
        let rcpts = [failed(
            "bob@remote.test\r\nBcc: evil@x",
            "550 5.1.1 bad\r\nAction: delivered\r\n\r\n--",
            Some("mx\r\nX-Evil: 1"),
        )];
        let mut r = report(&rcpts, b"Subject: a\rb\0c\r\n\r\n");
        r.to = "alice@tern.test\r\nBcc: evil@x";
        let msg = build(&r);
        assert_lines_ok(&msg);
        let s = text(&msg);
        for bad in ["\r\nBcc:", "\r\nX-Evil:", "\r\nAction: delivered"] {
            assert!(!s.contains(bad), "{bad:?} in {s}");
        }
        assert!(s.contains("Subject: a b c\r\n"));
    }

    #[test]
    fn boundary_never_occurs_in_the_content() {
        let taken = "=_tern_dsn_taken";
        let original = format!("Subject: x\r\nX-Trap: --{taken}\r\n\r\n");
        let rcpts = [failed("bob@remote.test", "550 5.1.1 x", None)];
        let msg = build_with(
            &report(&rcpts, original.as_bytes()),
            [taken.to_string(), "=_second".to_string()].into_iter(),
        );
        let s = text(&msg);
        assert_eq!(boundary_of(&s), "=_second");
        assert_eq!(s.matches("--=_second\r\n").count(), 3);
        assert_eq!(s.matches("--=_second--\r\n").count(), 1);
        let parsed = MessageParser::default().parse(&msg).unwrap();
        assert_eq!(parsed.parts.len(), 4);

        // Random boundaries differ per report and are not in the content either.
        let a = boundary_of(&text(&build(&report(&rcpts, ORIGINAL))));
        let b = boundary_of(&text(&build(&report(&rcpts, ORIGINAL))));
        assert_ne!(a, b);
        assert!(a.starts_with("=_tern_dsn_") && a.len() <= 70);
    }

    #[test]
    fn non_ascii_addresses_make_a_global_report() {
        let rcpts = [failed(
            "jörg@bücher.test",
            "550 5.1.1 unknown",
            Some("mx.test"),
        )];
        let mut r = report(&rcpts, "Subject: Grüße\r\n\r\n".as_bytes());
        r.to = "zoë@tern.test";
        let msg = build(&r);
        assert_lines_ok(&msg);
        let s = text(&msg);
        assert!(s.contains("report-type=global-delivery-status;"));
        assert!(s.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(s.contains("Content-Type: message/global-headers\r\n"));
        assert!(s.contains("Final-Recipient: utf-8; jörg@bücher.test\r\n"));
        assert!(s.contains("Content-Transfer-Encoding: 8bit\r\n"));
        let parsed = MessageParser::default().parse(&msg).unwrap();
        assert_eq!(parsed.parts.len(), 4);
    }

    #[test]
    fn plain_ascii_report_is_7bit() {
        let rcpts = [failed("bob@remote.test", "550 5.1.1 x", None)];
        let s = text(&build(&report(&rcpts, ORIGINAL)));
        assert!(!s.contains("8bit"));
        assert_eq!(s.matches("Content-Transfer-Encoding: 7bit\r\n").count(), 4);
    }
}
