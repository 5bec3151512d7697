//! Building the message `tern send` sends, with mail-builder: Date, Message-ID, MIME-Version,
//! multipart/mixed with attachments, multipart/alternative for text + HTML, a UTF-8 text part whose
//! transfer encoding follows its content, and every attachment in base64 with its file name
//! (RFC 2231 `filename*=` when the name is not ASCII). Bcc never becomes a header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mail_builder::headers::address::Address as MbAddress;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

/// A mailbox as written in a header: optional display name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub addr: String,
}

impl Mailbox {
    /// `addr`, `<addr>` or `Display Name <addr>`.
    pub fn parse(s: &str) -> Mailbox {
        let s = s.trim();
        if let (Some(open), true) = (s.rfind('<'), s.ends_with('>')) {
            let name = s[..open].trim().trim_matches('"').trim();
            return Mailbox {
                name: (!name.is_empty()).then(|| name.to_string()),
                addr: s[open + 1..s.len() - 1].trim().to_string(),
            };
        }
        Mailbox {
            name: None,
            addr: s.to_string(),
        }
    }

    fn to_builder(&self) -> MbAddress<'_> {
        MbAddress::new_address(self.name.as_deref(), self.addr.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct Compose {
    pub from: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Extra header fields from `--header`, already validated.
    pub headers: Vec<(String, String)>,
    /// The Message-ID without angle brackets.
    pub message_id: String,
}

/// Header fields that `--header` may not set: tern writes them itself (Bcc never).
pub const RESERVED_HEADERS: [&str; 9] = [
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
];

/// Checks a `--header "Name: value"` argument (RFC 5322 2.2: the name is printable ASCII
/// without colon; the value has no line breaks).
pub fn parse_header_arg(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once(':')
        .ok_or_else(|| format!("--header {arg:?}: expected \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!("--header {arg:?}: invalid field name"));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("--header {arg:?}: line breaks are not allowed"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "--header {name}: set by tern (use --from/--to/--cc/--bcc/--subject)"
        ));
    }
    // mail-builder recognises these two by exact spelling when deciding what to generate.
    let name = match lower.as_str() {
        "date" => "Date".to_string(),
        "message-id" => "Message-ID".to_string(),
        _ => name.to_string(),
    };
    Ok((name, value.trim().to_string()))
}

/// Base64 in 76-character lines (RFC 2045 6.8), each ending in CRLF.
fn base64_lines(data: &[u8]) -> String {
    let encoded = STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

pub fn build(c: &Compose) -> Vec<u8> {
    let mut b = MessageBuilder::new();
    if let Some(from) = &c.from {
        b = b.from(from.to_builder());
    }
    if !c.to.is_empty() {
        b = b.to(c.to.iter().map(Mailbox::to_builder).collect::<Vec<_>>());
    }
    if !c.cc.is_empty() {
        b = b.cc(c.cc.iter().map(Mailbox::to_builder).collect::<Vec<_>>());
    }
    if let Some(s) = &c.subject {
        b = b.subject(s.as_str());
    }
    let user_id = c.headers.iter().any(|(n, _)| n == "Message-ID");
    if !user_id {
        b = b.message_id(c.message_id.as_str());
    }
    for (name, value) in &c.headers {
        // Non-ASCII values become RFC 2047 encoded words; ASCII ones are written as given.
        b = if value.is_ascii() {
            b.header(name.as_str(), Raw::new(value.as_str()))
        } else {
            b.header(name.as_str(), Text::new(value.as_str()))
        };
    }
    // mail-builder picks 7bit, quoted-printable or base64 for text parts from their content.
    let text = c.text.as_deref().map(|t| MimePart::new("text/plain", t));
    let html = c.html.as_deref().map(|h| MimePart::new("text/html", h));
    let body = match (text, html) {
        (Some(t), Some(h)) => MimePart::new("multipart/alternative", vec![t, h]),
        (None, Some(h)) => h,
        (Some(t), None) => t,
        (None, None) => MimePart::new("text/plain", ""),
    };
    let body = if c.attachments.is_empty() {
        body
    } else {
        let mut parts = vec![body];
        for a in &c.attachments {
            // Always base64, also for text files, so the bytes come back exactly as they were;
            // a preset Content-Transfer-Encoding makes mail-builder write the body verbatim.
            parts.push(
                MimePart::new(a.content_type.as_str(), base64_lines(&a.data).into_bytes())
                    .attachment(a.filename.as_str())
                    .transfer_encoding("base64"),
            );
        }
        MimePart::new("multipart/mixed", parts)
    };
    b.body(body).write_to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &[u8]) -> String {
        String::from_utf8(m.to_vec()).unwrap()
    }

    #[test]
    fn mailbox_forms() {
        assert_eq!(Mailbox::parse("a@b.test").addr, "a@b.test");
        let m = Mailbox::parse("\"Jo Doe\" <jo@b.test>");
        assert_eq!(
            (m.name.as_deref(), m.addr.as_str()),
            (Some("Jo Doe"), "jo@b.test")
        );
        assert_eq!(Mailbox::parse("<x@y.test>").name, None);
    }

    #[test]
    fn header_args() {
        assert_eq!(
            parse_header_arg("X-Tag: a b").unwrap(),
            ("X-Tag".into(), "a b".into())
        );
        assert_eq!(
            parse_header_arg("message-id: <1@x>").unwrap().0,
            "Message-ID"
        );
        assert!(parse_header_arg("Bcc: x@y").is_err());
        assert!(parse_header_arg("No colon").is_err());
        assert!(parse_header_arg("Bad Name: x").is_err());
    }

    #[test]
    fn structure_and_attachments() {
        let c = Compose {
            from: Some(Mailbox::parse("Me <me@a.test>")),
            to: vec![Mailbox::parse("you@b.test")],
            subject: Some("caf\u{e9}".into()),
            text: Some("hello\n.dot\n".into()),
            html: Some("<p>hi</p>".into()),
            attachments: vec![Attachment {
                filename: "r\u{e9}sum\u{e9} \u{fc}.pdf".into(),
                content_type: "application/pdf".into(),
                data: (0..=255u8).collect(),
            }],
            message_id: "id1@a.test".into(),
            ..Compose::default()
        };
        let m = text(&build(&c));
        for needle in [
            "Message-ID: <id1@a.test>\r\n",
            "MIME-Version: 1.0\r\n",
            "Date: ",
            "multipart/mixed",
            "multipart/alternative",
            "text/plain; charset=\"utf-8\"",
            "filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%BC.pdf",
            "Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF",
        ] {
            assert!(m.contains(needle), "missing {needle:?} in\n{m}");
        }
        assert!(!m.contains("Bcc"));
        assert!(m.lines().all(|l| l.len() <= 998));
    }
}
