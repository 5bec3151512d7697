//! Command-line framing for the server: splits the input stream into lines with a hard length
//! cap, so a client sending a 1 MB "line" costs at most `max_len` bytes of memory
//! (RFC 5321 4.5.3.1.4: 512 octets including CRLF).

use crate::data::{DataDecoder, DataProgress};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A command line without its CRLF (a bare LF terminator is tolerated on command lines).
    Line(Vec<u8>),
    /// A line exceeded the limit; its bytes were dropped up to and including its LF.
    TooLong,
}

#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max_len: usize,
    /// Dropping the rest of an over-long line until its LF.
    discarding: bool,
    /// An over-long line was finished and must still be reported.
    report_too_long: bool,
}

impl LineReader {
    /// `max_len` counts the CRLF, like the RFC limit.
    pub fn new(max_len: usize) -> Self {
        Self {
            // Allocated on first use: an idle connection should cost as little as possible.
            buf: Vec::new(),
            max_len,
            discarding: false,
            report_too_long: false,
        }
    }

    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.discarding {
            match memchr::memchr(b'\n', data) {
                Some(nl) => {
                    self.discarding = false;
                    self.report_too_long = true;
                    self.buf.extend_from_slice(&data[nl + 1..]);
                }
                None => return,
            }
        } else {
            self.buf.extend_from_slice(data);
        }
        self.enforce_cap();
    }

    fn enforce_cap(&mut self) {
        if !self.discarding && !self.report_too_long && self.buf.len() > self.max_len {
            let has_short_line =
                memchr::memchr(b'\n', &self.buf).is_some_and(|nl| nl < self.max_len);
            if !has_short_line && memchr::memchr(b'\n', &self.buf[..self.max_len]).is_none() {
                // The first line is already too long: keep only what follows its LF, if any.
                match memchr::memchr(b'\n', &self.buf) {
                    Some(nl) => {
                        self.buf.drain(..=nl);
                        self.report_too_long = true;
                    }
                    None => {
                        self.buf.clear();
                        self.discarding = true;
                    }
                }
            }
        }
    }

    /// The next complete line, if any.
    pub fn next_line(&mut self) -> Option<LineEvent> {
        if self.report_too_long {
            self.report_too_long = false;
            self.enforce_cap();
            return Some(LineEvent::TooLong);
        }
        let nl = memchr::memchr(b'\n', &self.buf)?;
        if nl + 1 > self.max_len {
            self.buf.drain(..=nl);
            self.enforce_cap();
            return Some(LineEvent::TooLong);
        }
        let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.enforce_cap();
        Some(LineEvent::Line(line))
    }

    /// True if bytes are waiting (e.g. pipelined after STARTTLS, which must be discarded).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty() || self.discarding || self.report_too_long
    }

    /// Drops everything buffered (RFC 3207 5 / CVE-2011-0411: nothing sent before the TLS
    /// handshake may be executed after it).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
        self.report_too_long = false;
    }

    /// Feeds buffered bytes to a DATA decoder; keeps whatever follows the end marker.
    pub fn drain_into(&mut self, decoder: &mut DataDecoder, out: &mut Vec<u8>) -> DataProgress {
        let progress = decoder.feed(&self.buf, out);
        match progress {
            DataProgress::Done { consumed } => {
                self.buf.drain(..consumed);
            }
            DataProgress::NeedMore => self.buf.clear(),
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReader) -> Vec<LineEvent> {
        std::iter::from_fn(|| r.next_line()).collect()
    }

    #[test]
    fn splits_pipelined_lines() {
        let mut r = LineReader::new(512);
        r.push(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\nDA");
        assert_eq!(
            lines(&mut r),
            vec![
                LineEvent::Line(b"MAIL FROM:<a@b>".to_vec()),
                LineEvent::Line(b"RCPT TO:<c@d>".to_vec())
            ]
        );
        r.push(b"TA\r\n");
        assert_eq!(lines(&mut r), vec![LineEvent::Line(b"DATA".to_vec())]);
    }

    #[test]
    fn exact_limit() {
        let mut r = LineReader::new(10);
        r.push(b"12345678\r\n123456789\r\nok\r\n");
        assert_eq!(
            lines(&mut r),
            vec![
                LineEvent::Line(b"12345678".to_vec()),
                LineEvent::TooLong,
                LineEvent::Line(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn huge_line_is_bounded_and_session_continues() {
        let mut r = LineReader::new(512);
        for _ in 0..1000 {
            r.push(&[b'A'; 1024]);
            assert!(r.buf.len() <= 1024 + 512);
        }
        assert_eq!(lines(&mut r), vec![]);
        r.push(b"AAAA\r\nNOOP\r\n");
        assert_eq!(
            lines(&mut r),
            vec![LineEvent::TooLong, LineEvent::Line(b"NOOP".to_vec())]
        );
    }

    #[test]
    fn clear_drops_pipelined_bytes() {
        let mut r = LineReader::new(512);
        r.push(b"STARTTLS\r\nRSET\r\n");
        assert_eq!(r.next_line(), Some(LineEvent::Line(b"STARTTLS".to_vec())));
        assert!(r.has_buffered());
        r.clear();
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn data_handoff_keeps_following_commands() {
        let mut r = LineReader::new(512);
        r.push(b"DATA\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(r.next_line(), Some(LineEvent::Line(b"DATA".to_vec())));
        let mut d = DataDecoder::new(100, crate::BareLineEndings::Reject);
        let mut out = Vec::new();
        assert!(matches!(
            r.drain_into(&mut d, &mut out),
            DataProgress::Done { .. }
        ));
        assert_eq!(out, b"hello\r\n");
        assert_eq!(r.next_line(), Some(LineEvent::Line(b"QUIT".to_vec())));
    }
}
