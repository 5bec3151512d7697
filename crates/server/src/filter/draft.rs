//! The message as the content filters see and change it: its whole header section (tern's
//! trace fields first, then the client's) as a list of fields, and its body. A milter's
//! modifications apply here, all of them or none (they are only applied once its final
//! verdict has arrived), and [`Draft::finish`] turns the result back into the trace prefix
//! and body that intake stores.
//!
//! Fields tern does not change keep their bytes exactly (a DKIM signature over them must still
//! verify). Fields a milter writes are sanitized: line breaks become CRLF, a continuation line
//! always starts with white space, and empty lines are dropped, so no value can end the header
//! section early or smuggle a field in (RFC 5322 2.2.3).

use std::io::{Read, Seek, SeekFrom};

use tern_milter::Modification;
use tern_proto::HeaderSection;
use tern_queue::{MessageBody, SpoolFile, Spooled, StoreError};

/// One header field.
#[derive(Debug, Clone)]
struct Field {
    /// The name as written.
    name: String,
    /// The whole field: name, colon, value, folding and the closing CRLF.
    raw: Vec<u8>,
}

impl Field {
    /// A field as the client wrote it. A line that is no field (no colon, no valid name) is
    /// kept with an empty name: milters do not see it, but a rewrite keeps its bytes.
    fn parse(raw: &[u8]) -> Self {
        let name = memchr::memchr(b':', raw)
            .and_then(|colon| std::str::from_utf8(&raw[..colon]).ok())
            .map(str::trim_end)
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (33..=126).contains(&b)))
            .unwrap_or("");
        Self {
            name: name.to_string(),
            raw: raw.to_vec(),
        }
    }

    /// A field a milter wrote: `Name: value`, sanitized.
    fn written(name: &str, value: &[u8]) -> Self {
        let mut raw = Vec::with_capacity(name.len() + value.len() + 4);
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        let mut first = true;
        for line in value.split(|b| *b == b'\n') {
            let line: Vec<u8> = line.iter().copied().filter(|b| *b != b'\r').collect();
            if line.iter().all(|b| *b == b' ' || *b == b'\t') {
                if first {
                    first = false;
                }
                continue;
            }
            if !first {
                raw.extend_from_slice(b"\r\n");
                if !matches!(line.first(), Some(b' ' | b'\t')) {
                    raw.push(b'\t');
                }
            }
            raw.extend_from_slice(&line);
            first = false;
        }
        raw.extend_from_slice(b"\r\n");
        Self {
            name: name.to_string(),
            raw,
        }
    }

    /// The value as a milter gets it: without the leading white space (HDR_LEADSPC is not
    /// negotiated) and the closing CRLF, folds as LF (as Sendmail and Postfix pass them), NUL
    /// (which the protocol cannot carry) as a space.
    pub fn milter_value(&self) -> Vec<u8> {
        let after = &self.raw[self
            .raw
            .iter()
            .position(|b| *b == b':')
            .map_or(0, |c| c + 1)..];
        let start = after
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(after.len());
        let mut value = &after[start..];
        while let Some(v) = value.strip_suffix(b"\n") {
            value = v.strip_suffix(b"\r").unwrap_or(v);
        }
        let mut out = Vec::with_capacity(value.len());
        let mut i = 0;
        while i < value.len() {
            match value[i] {
                b'\r' if value.get(i + 1) == Some(&b'\n') => {}
                0 => out.push(b' '),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }
}

/// Where the body (the octets after the header section's empty line) is.
#[derive(Debug)]
enum Body {
    /// The client's message in memory; the body starts at `start`.
    Memory { message: Vec<u8>, start: usize },
    /// The client's message in a spool file; the body starts at `start`.
    Spooled { file: Spooled, start: u64 },
    /// A milter's replacement.
    Replaced(Vec<u8>),
}

/// A chunk of the body for the milters, read a piece at a time.
pub struct BodyReader<'a> {
    inner: BodyReaderInner<'a>,
}

enum BodyReaderInner<'a> {
    Slice(&'a [u8]),
    /// tokio's file does its reads on the blocking pool, off the session threads.
    File(tokio::fs::File),
}

impl BodyReader<'_> {
    /// Fills `buf` with the next piece; 0 at the end.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.inner {
            BodyReaderInner::Slice(s) => {
                let n = s.len().min(buf.len());
                buf[..n].copy_from_slice(&s[..n]);
                *s = &s[n..];
                Ok(n)
            }
            BodyReaderInner::File(f) => tokio::io::AsyncReadExt::read(f, buf).await,
        }
    }
}

/// The message under filtering.
#[derive(Debug)]
pub struct Draft {
    /// tern's trace fields, as intake had them (kept as they are when nothing changes).
    prefix: String,
    fields: Vec<Field>,
    /// The octets between the last field and the body: the empty line, or nothing for a
    /// message without one.
    separator: Vec<u8>,
    body: Body,
    changed: bool,
}

impl Draft {
    /// Reads the header section (at most `max_header` octets of a spooled body, which the
    /// session has already checked against `limits.max_header_size`; blocking I/O then, so
    /// call it off the async threads).
    pub fn new(prefix: String, body: MessageBody, max_header: u64) -> std::io::Result<Self> {
        // One header section as stored (prefix, then the client's fields), split once: a
        // client line starting with white space continues the field before it, tern's or not.
        let mut section = prefix.as_bytes().to_vec();
        let (separator, body) = match body {
            MessageBody::Memory(message) => {
                let header = HeaderSection::find(&message);
                section.extend_from_slice(header.fields());
                let separator = message[header.fields().len()..header.end()].to_vec();
                let start = header.end();
                (separator, Body::Memory { message, start })
            }
            MessageBody::Spooled(file) => {
                let mut head = Vec::new();
                let limit = max_header.saturating_add(4).min(file.len());
                file.open()?.take(limit).read_to_end(&mut head)?;
                let header = HeaderSection::find(&head);
                section.extend_from_slice(header.fields());
                let separator = head[header.fields().len()..header.end()].to_vec();
                let start = header.end() as u64;
                (separator, Body::Spooled { file, start })
            }
        };
        let fields = split_fields(&section);
        Ok(Self {
            prefix,
            fields,
            separator,
            body,
            changed: false,
        })
    }

    /// The header fields as (name, value) for SMFIC_HEADER, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Vec<u8>)> {
        self.fields
            .iter()
            .filter(|f| !f.name.is_empty())
            .map(|f| (f.name.as_str(), f.milter_value()))
    }

    /// How many fields (and lines that are no field) the header section holds.
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }

    /// The body, from its first octet.
    pub fn body(&self) -> std::io::Result<BodyReader<'_>> {
        let inner = match &self.body {
            Body::Memory { message, start } => BodyReaderInner::Slice(&message[*start..]),
            Body::Replaced(b) => BodyReaderInner::Slice(b),
            Body::Spooled { file, start } => {
                let mut f = file.open()?;
                f.seek(SeekFrom::Start(*start))?;
                BodyReaderInner::File(tokio::fs::File::from_std(f))
            }
        };
        Ok(BodyReader { inner })
    }

    /// Applies the header and body changes of one milter, in the order it sent them
    /// (libmilter's smfi_addheader / smfi_insheader / smfi_chgheader / smfi_replacebody).
    /// Envelope changes are the caller's. A header name that is not a valid field name
    /// refuses the whole set (`Err` with why), before anything is applied.
    pub fn apply(&mut self, modifications: &[Modification]) -> Result<(), String> {
        for m in modifications {
            let name = match m {
                Modification::AddHeader { name, .. }
                | Modification::InsertHeader { name, .. }
                | Modification::ChangeHeader { name, .. } => name,
                _ => continue,
            };
            // RFC 5322 2.2: printable US-ASCII except the colon.
            let ok = !name.is_empty()
                && name
                    .as_bytes()
                    .iter()
                    .all(|b| (33..=126).contains(b) && *b != b':');
            if !ok {
                return Err(format!(
                    "invalid header name \"{}\"",
                    name.to_string_lossy()
                ));
            }
        }
        for m in modifications {
            match m {
                Modification::AddHeader { name, value } => {
                    self.fields
                        .push(Field::written(&name.to_string_lossy(), value.as_bytes()));
                }
                Modification::InsertHeader { index, name, value } => {
                    // The index counts the fields the milter saw.
                    let at = self
                        .fields
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| !f.name.is_empty())
                        .nth(*index as usize)
                        .map_or(self.fields.len(), |(i, _)| i);
                    self.fields.insert(
                        at,
                        Field::written(&name.to_string_lossy(), value.as_bytes()),
                    );
                }
                Modification::ChangeHeader { index, name, value } => {
                    let name = name.to_string_lossy();
                    // The index counts the fields of that name, from 1 (0 is taken as 1, as
                    // libmilter's MTAs do).
                    let nth = (*index as usize).max(1);
                    let found = self
                        .fields
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.name.eq_ignore_ascii_case(&name))
                        .nth(nth - 1)
                        .map(|(i, _)| i);
                    match (found, value.is_empty()) {
                        (Some(i), true) => {
                            self.fields.remove(i);
                        }
                        (Some(i), false) => {
                            self.fields[i] = Field::written(&name, value.as_bytes());
                        }
                        // No such field: a change adds it, a deletion does nothing.
                        (None, false) => self.fields.push(Field::written(&name, value.as_bytes())),
                        (None, true) => continue,
                    }
                }
                Modification::ReplaceBody(body) => {
                    self.body = Body::Replaced(normalize_line_ends(body));
                }
                _ => continue,
            }
            self.changed = true;
        }
        Ok(())
    }

    /// The trace prefix and the body intake stores: unchanged as they came when no milter
    /// changed the headers or body; otherwise the whole new message as the body (with an
    /// empty prefix), in memory when the client's was, else in a new spool file from `spool`
    /// (blocking I/O: call it off the async threads).
    pub fn finish(
        self,
        spool: impl FnOnce() -> Result<SpoolFile, StoreError>,
    ) -> Result<(String, MessageBody), StoreError> {
        let separator = if self.separator.is_empty() {
            b"\r\n".to_vec()
        } else {
            self.separator
        };
        let changed = self.changed;
        let body = match self.body {
            Body::Memory { message, .. } if !changed => {
                return Ok((self.prefix, MessageBody::Memory(message)))
            }
            Body::Spooled { file, .. } if !changed => {
                return Ok((self.prefix, MessageBody::Spooled(file)))
            }
            body => body,
        };
        let mut head = Vec::new();
        for f in &self.fields {
            head.extend_from_slice(&f.raw);
            // The client's last field may lack its line end (a message without a body).
            if !f.raw.ends_with(b"\n") {
                head.extend_from_slice(b"\r\n");
            }
        }
        head.extend_from_slice(&separator);
        let io = |what: &str, e: std::io::Error| StoreError::from_io(what, &e);
        let body = match body {
            Body::Memory { message, start } => {
                head.extend_from_slice(&message[start..]);
                MessageBody::Memory(head)
            }
            Body::Replaced(new) if new.len() + head.len() < crate::connection::SPILL_THRESHOLD => {
                head.extend_from_slice(&new);
                MessageBody::Memory(head)
            }
            Body::Replaced(new) => {
                let mut out = spool()?;
                out.append(&head).map_err(|e| io("filtered message", e))?;
                out.append(&new).map_err(|e| io("filtered message", e))?;
                MessageBody::Spooled(out.finish().map_err(|e| io("filtered message", e))?)
            }
            Body::Spooled { file, start } => {
                let mut out = spool()?;
                out.append(&head).map_err(|e| io("filtered message", e))?;
                let mut f = file.open().map_err(|e| io("spooled message", e))?;
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| io("spooled message", e))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf).map_err(|e| io("spooled message", e))?;
                    if n == 0 {
                        break;
                    }
                    out.append(&buf[..n])
                        .map_err(|e| io("filtered message", e))?;
                }
                // The old file goes when `file` drops here.
                MessageBody::Spooled(out.finish().map_err(|e| io("filtered message", e))?)
            }
        };
        Ok((String::new(), body))
    }
}

/// The fields of a header section (each with its folded continuation lines).
fn split_fields(section: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < section.len() {
        let end = memchr::memchr(b'\n', &section[pos..]).map_or(section.len(), |n| pos + n + 1);
        // A line starting with white space continues the field before it.
        let next_continues = matches!(section.get(end), Some(b' ' | b'\t'));
        if !next_continues {
            fields.push(Field::parse(&section[start..end]));
            start = end;
        }
        pos = end;
    }
    fields
}

/// Bare LF and bare CR in a replacement body become CRLF: tern stores CRLF only (the
/// smuggling rules of the DATA decoder apply to what milters write too).
fn normalize_line_ends(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_milter::NulFree;

    fn nf(s: &str) -> NulFree {
        NulFree::new(s.as_bytes().to_vec()).unwrap()
    }

    fn draft(message: &str) -> Draft {
        Draft::new(
            "Received: from x\r\n\tby y; now\r\n".into(),
            MessageBody::Memory(message.as_bytes().to_vec()),
            1 << 20,
        )
        .unwrap()
    }

    fn finished(d: Draft) -> (String, String) {
        let (prefix, body) = d
            .finish(|| Err(StoreError::new("no spool in this test")))
            .unwrap();
        let MessageBody::Memory(b) = body else {
            panic!("in memory")
        };
        (prefix, String::from_utf8(b).unwrap())
    }

    const MSG: &str =
        "From: a@b.test\r\nSubject: hi\r\n there\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nbody\r\n";

    #[test]
    fn milters_see_every_field_in_order_with_lf_folds() {
        let d = draft(MSG);
        let h: Vec<(String, String)> = d
            .headers()
            .map(|(n, v)| (n.to_string(), String::from_utf8(v).unwrap()))
            .collect();
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Received", "From", "Subject", "X-Old", "X-Old"]);
        assert_eq!(h[0].1, "from x\n\tby y; now");
        assert_eq!(h[2].1, "hi\n there");
    }

    #[test]
    fn nothing_changed_keeps_prefix_and_bytes() {
        let (prefix, body) = finished(draft(MSG));
        assert!(prefix.starts_with("Received:"));
        assert_eq!(body, MSG);
    }

    #[test]
    fn header_changes_apply_in_order_and_keep_other_bytes() {
        let mut d = draft(MSG);
        d.apply(&[
            Modification::AddHeader {
                name: nf("X-Spam"),
                value: nf("yes"),
            },
            Modification::InsertHeader {
                index: 0,
                name: nf("DKIM-Signature"),
                value: nf("v=1; a=rsa-sha256;\n\tb=abc"),
            },
            Modification::ChangeHeader {
                index: 2,
                name: nf("x-old"),
                value: nf(""),
            },
            Modification::ChangeHeader {
                index: 1,
                name: nf("Subject"),
                value: nf("[SPAM] hi"),
            },
        ])
        .unwrap();
        let (prefix, body) = finished(d);
        assert_eq!(prefix, "");
        assert_eq!(
            body,
            "DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\nReceived: from x\r\n\tby y; now\r\n\
             From: a@b.test\r\nSubject: [SPAM] hi\r\nX-Old: 1\r\nX-Spam: yes\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn a_value_cannot_end_the_header_section_or_add_a_field() {
        let mut d = draft(MSG);
        d.apply(&[Modification::AddHeader {
            name: nf("X-Evil"),
            value: nf("a\r\n\r\nBcc: victim@x.test\nX: y"),
        }])
        .unwrap();
        let (_, body) = finished(d);
        assert!(
            body.contains("X-Evil: a\r\n\tBcc: victim@x.test\r\n\tX: y\r\n\r\nbody"),
            "{body}"
        );
        let mut d = draft(MSG);
        let bad = d.apply(&[
            Modification::AddHeader {
                name: nf("X-Ok"),
                value: nf("1"),
            },
            Modification::AddHeader {
                name: nf("Bad Name"),
                value: nf("1"),
            },
        ]);
        assert!(bad.is_err());
        let (_, body) = finished(d);
        assert_eq!(body, MSG, "nothing of a refused set applied");
    }

    #[test]
    fn a_replaced_body_gets_crlf_line_ends() {
        let mut d = draft(MSG);
        d.apply(&[Modification::ReplaceBody(b"one\ntwo\r\nthree\r".to_vec())])
            .unwrap();
        let (_, body) = finished(d);
        assert!(
            body.ends_with("\r\n\r\none\r\ntwo\r\nthree\r\n"),
            "{body:?}"
        );
    }

    #[tokio::test]
    async fn the_body_reads_from_after_the_empty_line() {
        let d = draft(MSG);
        let mut r = d.body().unwrap();
        let mut buf = [0u8; 3];
        let mut out = Vec::new();
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, b"body\r\n");
    }
}
