//! The few facts about message bytes that several parts of tern need (RFC 5322): where the
//! header section ends, how many `Received:` fields it holds, and the date-time format for
//! `Date:` and trace fields. One copy, so the session, the relay, bounces and the client agree.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::Offset;

/// The header section of a message (RFC 5322 2.1): the lines before the first empty line.
///
/// Lines end in LF with an optional CR before it, so a CRLF message (what SMTP carries) and an
/// LF message (what a local program may hand over) split the same way. A message without an
/// empty line is all header; one that starts with an empty line has an empty header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSection<'a> {
    message: &'a [u8],
    /// End of the last header line, including its line ending.
    fields_end: usize,
    /// Start of the body: past the empty line, or `fields_end` when there is none.
    body_start: usize,
}

impl<'a> HeaderSection<'a> {
    /// Finds the header section of `message`.
    pub fn find(message: &'a [u8]) -> Self {
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &message[pos..]) {
            let line = &message[pos..pos + nl];
            if line.is_empty() || line == b"\r" {
                return Self {
                    message,
                    fields_end: pos,
                    body_start: pos + nl + 1,
                };
            }
            pos += nl + 1;
        }
        Self {
            message,
            fields_end: message.len(),
            body_start: message.len(),
        }
    }

    /// The header fields, each line with its line ending, without the empty line.
    pub fn fields(&self) -> &'a [u8] {
        &self.message[..self.fields_end]
    }

    /// Octets up to and including the empty line (the whole message when there is none, 0 when
    /// the message starts with the empty line): the offset where the body begins.
    pub fn end(&self) -> usize {
        self.body_start
    }

    /// The body: everything after the empty line (empty when there is none).
    pub fn body(&self) -> &'a [u8] {
        &self.message[self.body_start..]
    }

    /// The `Received:` fields among these header fields (see [`count_received`]).
    pub fn received_count(&self) -> usize {
        count_received(self.fields())
    }
}

/// What [`HeaderSection`] and [`count_received`] say about a message, worked out while the
/// message streams past, so that a body written to disk as it arrives never has to be held or
/// read back for the end-of-data checks. Feeding the message in any pieces gives exactly what
/// `HeaderSection::find(message)` gives for [`HeaderScanner::end`] and
/// [`HeaderSection::received_count`] (a property test holds the two together).
#[derive(Debug, Clone)]
pub struct HeaderScanner {
    /// Octets fed so far, while the header section lasts.
    pos: u64,
    /// Where the body starts, once the empty line was seen.
    end: Option<u64>,
    received: usize,
    line: LineState,
}

/// Where the scanner is within the current header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line.
    Start,
    /// The line so far is a single CR (it is the empty line if a LF follows).
    StartCr,
    /// Matching the field name against `Received`: this many letters matched.
    Name(u8),
    /// `Received` matched; white space may follow before the colon.
    NameDone,
    /// The rest of this line does not matter.
    Skip,
}

const RECEIVED: &[u8] = b"received";

impl Default for HeaderScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderScanner {
    pub fn new() -> Self {
        Self {
            pos: 0,
            end: None,
            received: 0,
            line: LineState::Start,
        }
    }

    /// The next piece of the message.
    pub fn feed(&mut self, input: &[u8]) {
        if self.end.is_some() {
            return;
        }
        for (i, &b) in input.iter().enumerate() {
            if b == b'\n' {
                if matches!(self.line, LineState::Start | LineState::StartCr) {
                    self.end = Some(self.pos + i as u64 + 1);
                    return;
                }
                self.line = LineState::Start;
                continue;
            }
            self.line = match self.line {
                LineState::Start if b == b'\r' => LineState::StartCr,
                // A continuation line (folded field) is never a field of its own.
                LineState::Start if b == b' ' || b == b'\t' => LineState::Skip,
                // A name that starts with a CR is never `Received`.
                LineState::StartCr => LineState::Skip,
                LineState::Start => Self::name(0, b),
                LineState::Name(n) => Self::name(n, b),
                // RFC 5322 4.5 (obsolete syntax): white space between the name and the colon.
                LineState::NameDone if b == b':' => {
                    self.received += 1;
                    LineState::Skip
                }
                LineState::NameDone if matches!(b, b' ' | b'\t' | b'\r' | 0x0c) => {
                    LineState::NameDone
                }
                LineState::NameDone | LineState::Skip => LineState::Skip,
            };
        }
        self.pos += input.len() as u64;
    }

    /// The next state after `n` letters of `Received` matched and `b` arrived.
    fn name(n: u8, b: u8) -> LineState {
        let n = usize::from(n);
        if n < RECEIVED.len() && b.eq_ignore_ascii_case(&RECEIVED[n]) {
            if n + 1 == RECEIVED.len() {
                LineState::NameDone
            } else {
                LineState::Name(n as u8 + 1)
            }
        } else {
            LineState::Skip
        }
    }

    /// [`HeaderSection::end`] of the whole message, given its total length (the message is
    /// all header when no empty line was seen).
    pub fn end(&self, total: u64) -> u64 {
        self.end.unwrap_or(total)
    }

    /// Octets of header seen so far (a lower bound on [`HeaderScanner::end`] while the empty
    /// line has not arrived): lets a caller refuse an endless header early.
    pub fn header_len(&self) -> u64 {
        self.end.unwrap_or(self.pos)
    }

    /// [`HeaderSection::received_count`].
    pub fn received_count(&self) -> usize {
        self.received
    }
}

/// `Received:` fields in a header section, matched by field name in any case (RFC 5322 1.2.2),
/// also with white space before the colon (RFC 5322 4.5 obsolete syntax). Continuation lines of
/// folded fields start with white space and are never counted. RFC 5321 6.3 counts these to
/// detect a mail loop.
pub fn count_received(fields: &[u8]) -> usize {
    fields
        .split(|&b| b == b'\n')
        .filter(|line| {
            let Some(colon) = memchr::memchr(b':', line) else {
                return false;
            };
            let name = &line[..colon];
            !name.starts_with(b" ")
                && !name.starts_with(b"\t")
                && name.trim_ascii_end().eq_ignore_ascii_case(b"Received")
        })
        .count()
}

/// RFC 5322 3.3 date-time in UTC (`Thu, 01 Jan 1970 00:00:00 +0000`), for the `Received:` trace
/// field (RFC 5321 4.4) and DSN dates (RFC 3464 2.1.5).
pub fn rfc5322_date(t: SystemTime) -> String {
    rfc5322_date_at(t, 0)
}

/// RFC 5322 3.3 date-time in the zone `utc_offset_secs` east of UTC (`tern sendmail` writes a
/// missing `Date:` in local time, as 3.3 suggests). A time before 1970 or beyond what the
/// calendar arithmetic holds becomes the epoch, and an offset of a day or more becomes UTC,
/// rather than a panic.
pub fn rfc5322_date_at(t: SystemTime, utc_offset_secs: i32) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let utc = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or_default();
    let zone = chrono::FixedOffset::east_opt(utc_offset_secs).unwrap_or(chrono::Utc.fix());
    utc.with_timezone(&zone)
        .format("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn split(m: &[u8]) -> (&[u8], usize, &[u8]) {
        let h = HeaderSection::find(m);
        (h.fields(), h.end(), h.body())
    }

    #[test]
    fn crlf_message() {
        let m = b"A: b\r\n\r\nbody\r\n\r\nmore";
        assert_eq!(split(m), (&b"A: b\r\n"[..], 8, &b"body\r\n\r\nmore"[..]));
    }

    #[test]
    fn lf_and_mixed_line_endings() {
        assert_eq!(
            split(b"A: 1\nB: 2\n\nbody\n"),
            (&b"A: 1\nB: 2\n"[..], 11, &b"body\n"[..])
        );
        // An LF line after a CRLF line, and a CRLF empty line after LF lines.
        assert_eq!(split(b"A: 1\r\n\nx"), (&b"A: 1\r\n"[..], 7, &b"x"[..]));
        assert_eq!(split(b"A: 1\n\r\nx"), (&b"A: 1\n"[..], 7, &b"x"[..]));
    }

    #[test]
    fn no_empty_line_is_all_header() {
        assert_eq!(
            split(b"A: b\r\nC: d\r\n"),
            (&b"A: b\r\nC: d\r\n"[..], 12, &b""[..])
        );
        assert_eq!(split(b"A: 1\r\nB: 2"), (&b"A: 1\r\nB: 2"[..], 10, &b""[..]));
        assert_eq!(split(b""), (&b""[..], 0, &b""[..]));
    }

    #[test]
    fn leading_empty_line_is_an_empty_header() {
        assert_eq!(
            split(b"\r\nbody\r\n\r\nmore"),
            (&b""[..], 2, &b"body\r\n\r\nmore"[..])
        );
        assert_eq!(split(b"\nbody"), (&b""[..], 1, &b"body"[..]));
    }

    #[test]
    fn a_cr_inside_a_line_does_not_end_the_header() {
        assert_eq!(
            split(b"A: \r\r\nB: c\r\n\r\n"),
            (&b"A: \r\r\nB: c\r\n"[..], 14, &b""[..])
        );
    }

    #[test]
    fn received_fields_counted_by_name() {
        let h = b"Received: a\r\n\tby b\r\nreceived : c\r\nRECEIVED:d\r\n Received: folded\r\nX-Received: no\r\nSubject: Received: no\r\n";
        assert_eq!(count_received(h), 3);
        let m = b"Received: a\r\nSubject: x\r\n\r\nReceived: in the body\r\n";
        assert_eq!(HeaderSection::find(m).received_count(), 1);
        assert_eq!(count_received(b""), 0);
    }

    fn scan(m: &[u8], cuts: &[usize]) -> (u64, usize) {
        let mut sc = HeaderScanner::new();
        let mut at = 0;
        for &c in cuts.iter().chain([m.len()].iter()) {
            let c = c.clamp(at, m.len());
            sc.feed(&m[at..c]);
            at = c;
        }
        (sc.end(m.len() as u64), sc.received_count())
    }

    #[test]
    fn the_scanner_agrees_on_the_examples() {
        for m in [
            &b"A: b\r\n\r\nbody\r\n\r\nmore"[..],
            b"A: 1\nB: 2\n\nbody\n",
            b"A: 1\r\n\nx",
            b"A: 1\n\r\nx",
            b"A: b\r\nC: d\r\n",
            b"",
            b"\r\nbody",
            b"A: \r\r\nB: c\r\n\r\n",
            b"Received: a\r\n\tby b\r\nreceived : c\r\nRECEIVED:d\r\n Received: folded\r\nX-Received: no\r\nSubject: Received: no\r\n",
            b"Received: a\r\nSubject: x\r\n\r\nReceived: in the body\r\n",
            b"\rReceived: x\r\n",
            b"Received\x0c\r :x\n",
        ] {
            let h = HeaderSection::find(m);
            let want = (h.end() as u64, h.received_count());
            assert_eq!(scan(m, &[]), want, "{:?}", String::from_utf8_lossy(m));
            for cut in 0..m.len() {
                assert_eq!(scan(m, &[cut]), want, "{:?} cut {cut}", String::from_utf8_lossy(m));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_scanner_agrees_with_header_section(
            m in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b'\r'), proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b' '), proptest::strategy::Just(b':'),
                proptest::strategy::Just(b'R'), proptest::strategy::Just(b'e'),
                proptest::strategy::Just(b'c'), proptest::strategy::Just(b'i'),
                proptest::strategy::Just(b'v'), proptest::strategy::Just(b'd'),
                proptest::prelude::any::<u8>()], 0..120),
            prefix_received in proptest::prelude::any::<bool>(),
            cuts in proptest::collection::vec(0usize..130, 0..6),
        ) {
            let m = if prefix_received { [b"Received: x\r\n".as_slice(), &m].concat() } else { m };
            let mut cuts = cuts;
            cuts.sort_unstable();
            let h = HeaderSection::find(&m);
            proptest::prop_assert_eq!(scan(&m, &cuts), (h.end() as u64, h.received_count()));
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            "Fri, 15 Jan 2027 08:00:00 +0000"
        );
        // Single-digit days keep two digits (RFC 5322 3.3 allows both; one form everywhere).
        assert_eq!(
            rfc5322_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 13 * 86_400)),
            "Wed, 01 Nov 2023 22:13:20 +0000"
        );
    }

    #[test]
    fn dates_in_a_zone() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(rfc5322_date_at(t, 3600), "Fri, 15 Jan 2027 09:00:00 +0100");
        assert_eq!(
            rfc5322_date_at(t, -(9 * 3600 + 30 * 60)),
            "Thu, 14 Jan 2027 22:30:00 -0930"
        );
        assert_eq!(rfc5322_date_at(t, 86_400), rfc5322_date(t));
    }

    #[test]
    fn dates_out_of_range_do_not_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        assert_eq!(rfc5322_date(far), "Thu, 01 Jan 1970 00:00:00 +0000");
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc5322_date(before), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
