//! SMTP replies: a three-digit code, an optional enhanced status code (RFC 3463) and text lines;
//! formatting for the server and incremental parsing for the client.

use std::fmt;

/// RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `2.1.5` at the start of `text`; returns the code and the rest after one space.
    /// RFC 3463 2: class is 2, 4 or 5; subject and detail are 1-3 digits.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let candidate = &text[..end];
        let mut parts = candidate.split('.');
        let class: u8 = parse_digits(parts.next()?, 1)?.try_into().ok()?;
        let subject = parse_digits(parts.next()?, 3)?;
        let detail = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let rest = text.get(end + 1..).unwrap_or("");
        Some((EnhancedCode::new(class, subject, detail), rest))
    }
}

fn parse_digits(s: &str, max_len: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

/// How a reply code classifies the outcome (RFC 5321 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 2xx
    Positive,
    /// 3xx
    Intermediate,
    /// 4xx
    Transient,
    /// 5xx
    Permanent,
}

impl Reply {
    /// Builds a reply. Codes outside 200..=599 are a programming error on our side, so they
    /// are clamped to a generic local error instead of emitting an invalid line.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        let code = if (200..=599).contains(&code) {
            code
        } else {
            451
        };
        let text: String = text.into();
        let lines = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        Self {
            code,
            enhanced,
            lines,
        }
    }

    pub fn with_lines(code: u16, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Self {
        let mut reply = Self::new(code, enhanced, "");
        if !lines.is_empty() {
            reply.lines = lines;
        }
        reply
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// All text lines joined with a space: what a log line or error message quotes.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::Positive,
            3 => Severity::Intermediate,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::Positive
    }

    /// Appends the wire form (`250-first`, ..., `250 last`, each with CRLF) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(itoa3(self.code).as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            // Never let a text line break the framing: strip control characters.
            out.extend(line.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }
}

fn itoa3(code: u16) -> String {
    format!("{code:03}")
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Why a server's reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line is not valid SMTP: {0:?}")]
    Malformed(String),
    #[error("reply code {0} is outside 200-599")]
    BadCode(u16),
    #[error("reply line longer than {0} octets")]
    LineTooLong(usize),
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
    #[error("reply is longer than {0} bytes in all")]
    TooLong(usize),
    #[error("continuation line has code {got}, expected {expected}")]
    CodeMismatch { expected: u16, got: u16 },
}

/// Incremental reply parser for the client side: feed it bytes as they arrive, take replies out.
/// Memory stays bounded whatever a server sends (line length and line count limits).
#[derive(Debug)]
pub struct ReplyParser {
    buf: Vec<u8>,
    pending_code: Option<u16>,
    pending_lines: Vec<String>,
    /// Bytes of the lines in `pending_lines`.
    pending_bytes: usize,
    max_line: usize,
    max_lines: usize,
    max_total: usize,
}

/// A whole reply (all its lines) is at most this long: a hostile server's 256 lines of 4 KiB
/// must not cost a megabyte per reply, stored and logged.
pub const MAX_REPLY_TOTAL: usize = 64 * 1024;

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyParser {
    /// RFC 5321 4.5.3.1.5 caps a reply line at 512 octets; real servers exceed it a little,
    /// so we allow 4 KiB per line and 256 lines before calling the peer broken.
    pub fn new() -> Self {
        Self::with_limits(4096, 256)
    }

    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            buf: Vec::new(),
            pending_code: None,
            pending_lines: Vec::new(),
            pending_bytes: 0,
            max_line,
            max_lines,
            max_total: MAX_REPLY_TOTAL,
        }
    }

    /// Appends received bytes. Fails early if an unterminated line already exceeds the limit.
    pub fn push(&mut self, data: &[u8]) -> Result<(), ReplyError> {
        self.buf.extend_from_slice(data);
        if !self.buf.contains(&b'\n') && self.buf.len() > self.max_line {
            return Err(ReplyError::LineTooLong(self.max_line));
        }
        Ok(())
    }

    /// Bytes buffered but not yet consumed by a complete reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete reply if one is buffered.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                if self.buf.len() > self.max_line {
                    return Err(ReplyError::LineTooLong(self.max_line));
                }
                return Ok(None);
            };
            if nl > self.max_line {
                return Err(ReplyError::LineTooLong(self.max_line));
            }
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = trim_eol(&line);
            let text = String::from_utf8_lossy(line).into_owned();
            let (code, last, rest) = split_reply_line(&text)?;
            if let Some(expected) = self.pending_code {
                if expected != code {
                    return Err(ReplyError::CodeMismatch {
                        expected,
                        got: code,
                    });
                }
            }
            self.pending_code = Some(code);
            self.pending_bytes += rest.len();
            self.pending_lines.push(rest.to_string());
            if self.pending_lines.len() > self.max_lines {
                return Err(ReplyError::TooManyLines(self.max_lines));
            }
            if self.pending_bytes > self.max_total {
                return Err(ReplyError::TooLong(self.max_total));
            }
            if last {
                self.pending_code = None;
                self.pending_bytes = 0;
                let lines = std::mem::take(&mut self.pending_lines);
                return Ok(Some(finish_reply(code, lines)));
            }
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `250-text` / `250 text` / `250` into (code, is_last, text).
fn split_reply_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let bytes = line.as_bytes();
    if bytes.len() < 3 || !bytes[..3].iter().all(|b| b.is_ascii_digit()) {
        return Err(ReplyError::Malformed(truncate(line)));
    }
    let code: u16 = line[..3]
        .parse()
        .map_err(|_| ReplyError::Malformed(truncate(line)))?;
    if !(200..=599).contains(&code) {
        return Err(ReplyError::BadCode(code));
    }
    match bytes.get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::Malformed(truncate(line))),
    }
}

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

/// Lifts a shared enhanced code out of the lines when every line carries the same one
/// whose class matches the reply code (RFC 2034 3).
fn finish_reply(code: u16, lines: Vec<String>) -> Reply {
    let mut enhanced = None;
    let mut stripped = Vec::with_capacity(lines.len());
    for line in &lines {
        match EnhancedCode::parse_prefix(line) {
            Some((e, rest))
                if u16::from(e.class) == code / 100 && enhanced.is_none_or(|p| p == e) =>
            {
                enhanced = Some(e);
                stripped.push(rest.to_string());
            }
            _ => {
                return Reply::with_lines(code, None, lines);
            }
        }
    }
    Reply::with_lines(code, enhanced, stripped)
}

/// Shorthand used by the server's reply table.
pub const fn ec(class: u8, subject: u16, detail: u16) -> Option<EnhancedCode> {
    Some(EnhancedCode::new(class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_single_and_multi_line() {
        let r = Reply::new(250, ec(2, 1, 0), "Sender OK");
        assert_eq!(r.to_bytes(), b"250 2.1.0 Sender OK\r\n");
        let r = Reply::with_lines(
            250,
            None,
            vec!["mx".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(r.to_bytes(), b"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        let r = Reply::with_lines(214, ec(2, 0, 0), vec!["a".into(), "b".into()]);
        assert_eq!(r.to_bytes(), b"214-2.0.0 a\r\n214 2.0.0 b\r\n");
    }

    #[test]
    fn text_cannot_inject_lines() {
        let r = Reply::new(250, None, "a\r\n250 fake");
        // The newline splits into two lines of one reply, never a second reply.
        assert_eq!(r.to_bytes(), b"250-a\r\n250 250 fake\r\n");
    }

    #[test]
    fn parses_multiline_with_enhanced() {
        let mut p = ReplyParser::new();
        p.push(b"250-2.0.0 first\r\n250 2.0.0 second\r\n220 x\r\n")
            .unwrap();
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code(), 250);
        assert_eq!(r.enhanced(), ec(2, 0, 0));
        assert_eq!(r.lines(), &["first".to_string(), "second".to_string()]);
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code(), 220);
        assert_eq!(r.enhanced(), None);
        assert!(p.next_reply().unwrap().is_none());
    }

    #[test]
    fn partial_input_waits() {
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n250 b").unwrap();
        assert!(p.next_reply().unwrap().is_none());
        p.push(b"\r\n").unwrap();
        assert_eq!(p.next_reply().unwrap().unwrap().lines().len(), 2);
    }

    #[test]
    fn rejects_garbage_and_bad_codes() {
        let mut p = ReplyParser::new();
        p.push(b"hello\r\n").unwrap();
        assert!(matches!(p.next_reply(), Err(ReplyError::Malformed(_))));
        let mut p = ReplyParser::new();
        p.push(b"600 nope\r\n").unwrap();
        assert_eq!(p.next_reply(), Err(ReplyError::BadCode(600)));
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n251 b\r\n").unwrap();
        assert!(matches!(
            p.next_reply(),
            Err(ReplyError::CodeMismatch { .. })
        ));
    }

    #[test]
    fn bounded_line_length() {
        let mut p = ReplyParser::with_limits(100, 10);
        assert_eq!(p.push(&[b'2'; 200]), Err(ReplyError::LineTooLong(100)));
        let mut p = ReplyParser::with_limits(100, 3);
        p.push(b"250-a\r\n250-a\r\n250-a\r\n250-a\r\n").unwrap();
        assert_eq!(p.next_reply(), Err(ReplyError::TooManyLines(3)));
    }

    #[test]
    fn bounded_total_length() {
        // 20 lines of 4,000 bytes: each line and the line count are within the limits, the
        // whole reply (80 KB) is not.
        let mut p = ReplyParser::new();
        let line = format!("250-{}\r\n", "x".repeat(4000));
        for _ in 0..20 {
            p.push(line.as_bytes()).unwrap();
        }
        p.push(b"250 end\r\n").unwrap();
        assert_eq!(p.next_reply(), Err(ReplyError::TooLong(MAX_REPLY_TOTAL)));
        // A long but reasonable reply still parses, and the count starts over for the next.
        let mut p = ReplyParser::new();
        for _ in 0..10 {
            p.push(line.as_bytes()).unwrap();
        }
        p.push(b"250 end\r\n250 next\r\n").unwrap();
        assert!(p.next_reply().unwrap().is_some());
        assert_eq!(p.next_reply().unwrap().map(|r| r.code()), Some(250));
    }

    #[test]
    fn enhanced_prefix_parsing() {
        assert_eq!(
            EnhancedCode::parse_prefix("5.7.1 Relay denied"),
            Some((EnhancedCode::new(5, 7, 1), "Relay denied"))
        );
        assert_eq!(EnhancedCode::parse_prefix("2.0 x"), None);
        assert_eq!(EnhancedCode::parse_prefix("3.0.0 x"), None);
        assert_eq!(EnhancedCode::parse_prefix("Hello"), None);
    }

    #[test]
    fn round_trip() {
        for r in [
            Reply::new(552, ec(5, 3, 4), "too big"),
            Reply::with_lines(250, None, vec!["mx.test".into(), "SIZE 1".into()]),
            Reply::new(221, ec(2, 0, 0), "Bye"),
        ] {
            let mut p = ReplyParser::new();
            p.push(&r.to_bytes()).unwrap();
            assert_eq!(p.next_reply().unwrap().unwrap(), r);
        }
    }
}
