//! DATA transparency (RFC 5321 4.5.2): the receiving decoder and the sending encoder.
//!
//! The decoder is the SMTP-smuggling defence (CVE-2023-51764 and its family): the data ends
//! only at `<CRLF>.<CRLF>`, never at `<LF>.<LF>`, `<CR>.<CR>` or any mix, so a message can never
//! be split into two, whatever the next hop considers a line ending. A bare LF or bare CR
//! (RFC 5321 2.3.8 forbids both) is either stored as CRLF ([`BareLineEndings::Normalize`], what
//! Postfix 3.9 does by default) or marks the whole message for rejection
//! ([`BareLineEndings::Reject`]).

/// What happened to a chunk of input fed to the [`DataDecoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    /// Every byte was consumed; the end of data was not seen yet.
    NeedMore,
    /// The end-of-data marker ended at `consumed`; bytes after it belong to the next command.
    Done { consumed: usize },
}

/// Why a complete message must be refused (decided once the end marker has been read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRejection {
    BareLineEnding,
    TooLarge,
}

/// What the decoder does with a CR or LF that is not part of a CRLF pair. The end of the data
/// is the same in both modes: the first `<CRLF>.<CRLF>` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Each bare CR and bare LF becomes a CRLF line ending in the output; the line after it is
    /// unstuffed like any other, but a lone `.` there is content, never the end.
    Normalize,
    /// The message is refused with [`DataRejection::BareLineEnding`].
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line after a real CRLF (or at the start of the data).
    LineStart,
    /// At the start of a line after a bare CR or LF: a leading dot is unstuffed, but a lone dot
    /// does not end the data (`<LF>.<CRLF>` is a smuggling marker, not the end).
    SoftLineStart,
    InLine,
    /// Saw CR; a LF must follow.
    Cr,
    /// Saw '.' at the start of a line.
    Dot {
        soft: bool,
    },
    /// Saw ".\r" at the start of a line.
    DotCr {
        soft: bool,
    },
}

/// Decodes dot-stuffed message data into the message bytes (CRLF kept as is).
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    mode: BareLineEndings,
    max_size: usize,
    size: usize,
    bare_line_ending: bool,
    too_large: bool,
}

impl DataDecoder {
    /// `max_size` bounds what is appended to the output; the rest is counted and dropped so that
    /// memory stays bounded and the message can still be refused once its end is found.
    pub fn new(max_size: usize, mode: BareLineEndings) -> Self {
        Self {
            state: State::LineStart,
            mode,
            max_size,
            size: 0,
            bare_line_ending: false,
            too_large: false,
        }
    }

    /// Octets of decoded message seen so far (including any over the limit).
    pub fn size(&self) -> usize {
        self.size
    }

    /// After `Done`: `Ok(())` if the message in the output is complete and acceptable.
    pub fn verdict(&self) -> Result<(), DataRejection> {
        if self.bare_line_ending {
            Err(DataRejection::BareLineEnding)
        } else if self.too_large {
            Err(DataRejection::TooLarge)
        } else {
            Ok(())
        }
    }

    /// True once the message is sure to be rejected (a bare CR or LF in reject mode, or too
    /// large), so callers may stop storing it (but must keep feeding until the end marker).
    pub fn is_doomed(&self) -> bool {
        self.bare_line_ending || self.too_large
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.size > self.max_size {
            self.too_large = true;
        }
        if !self.is_doomed() {
            out.extend_from_slice(bytes);
        }
    }

    /// A bare CR or LF ended a line, after `pending` (a lone dot that turned out to be content).
    /// The next line starts soft.
    fn bare(&mut self, out: &mut Vec<u8>, pending: &[u8]) {
        self.emit(out, pending);
        match self.mode {
            BareLineEndings::Normalize => self.emit(out, b"\r\n"),
            // The output no longer matters: the message will be refused.
            BareLineEndings::Reject => self.bare_line_ending = true,
        }
        self.state = State::SoftLineStart;
    }

    /// Feeds received bytes, appending decoded message bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataProgress {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::InLine => {
                    // Fast path: copy up to the next CR or LF in one go.
                    let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        self.emit(out, &input[i..i + run]);
                        i += run;
                        continue;
                    }
                    i += 1;
                    if b == b'\r' {
                        self.state = State::Cr;
                    } else {
                        // RFC 5321 2.3.8: a bare LF is not a line ending on the wire.
                        self.bare(out, b"");
                    }
                }
                State::LineStart | State::SoftLineStart => {
                    let soft = self.state == State::SoftLineStart;
                    i += 1;
                    match b {
                        b'.' => self.state = State::Dot { soft },
                        b'\r' => self.state = State::Cr,
                        b'\n' => self.bare(out, b""),
                        _ => {
                            self.emit(out, &[b]);
                            self.state = State::InLine;
                        }
                    }
                }
                State::Cr => match b {
                    b'\n' => {
                        i += 1;
                        self.emit(out, b"\r\n");
                        self.state = State::LineStart;
                    }
                    // A bare CR; `b` is looked at again at the start of the next line.
                    _ => self.bare(out, b""),
                },
                State::Dot { soft } => match b {
                    b'\r' => {
                        i += 1;
                        self.state = State::DotCr { soft };
                    }
                    // A lone dot ended by a bare LF: content, kept as is.
                    b'\n' => {
                        i += 1;
                        self.bare(out, b".");
                    }
                    // RFC 5321 4.5.2: the leading dot of a stuffed line is removed.
                    _ => {
                        i += 1;
                        self.emit(out, &[b]);
                        self.state = State::InLine;
                    }
                },
                State::DotCr { soft } => match b {
                    b'\n' if !soft => {
                        self.state = State::LineStart;
                        return DataProgress::Done { consumed: i + 1 };
                    }
                    // `<LF>.<CRLF>`: a lone dot after a bare line ending is content.
                    b'\n' => {
                        i += 1;
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart;
                    }
                    // ".\r" then anything else: a lone dot ended by a bare CR; `b` is looked at
                    // again at the start of the next line.
                    _ => self.bare(out, b"."),
                },
            }
        }
        DataProgress::NeedMore
    }
}

/// Encodes a message for the wire: lines end in CRLF (bare LF and bare CR are converted, as
/// sendmail does for local submissions), leading dots are doubled, and the `.` terminator is
/// appended by [`DotStuffer::finish`]. Streaming: feed chunks of any size.
/// [`DotStuffer::line_endings_only`] does the CRLF part alone, for BDAT (RFC 3030: chunks are
/// counted, not dot-stuffed), so a server stores the same octets whichever way they came.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
    stuff_dots: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            pending_cr: false,
            stuff_dots: true,
        }
    }

    /// Line endings made CRLF, dots left alone (for BDAT chunks).
    pub fn line_endings_only() -> Self {
        Self {
            stuff_dots: false,
            ..Self::new()
        }
    }

    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 8);
        let mut rest = input;
        while let Some(&b) = rest.first() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if b == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    rest = &rest[1..];
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    rest = &rest[1..];
                }
                _ => {
                    if self.stuff_dots && self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    // The run up to the next CR or LF in one copy.
                    let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    out.extend_from_slice(&rest[..run]);
                    self.at_line_start = false;
                    rest = &rest[run..];
                }
            }
        }
    }

    /// Ends the lines: a CRLF if the message did not end with one.
    pub fn finish_lines(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
    }

    /// Ends the data: [`DotStuffer::finish_lines`], then `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.finish_lines(out);
        out.extend_from_slice(b".\r\n");
    }

    /// Convenience: the whole wire form of a message.
    pub fn encode(message: &[u8]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::with_capacity(message.len() + 16);
        s.feed(message, &mut out);
        s.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in(
        mode: BareLineEndings,
        input: &[u8],
    ) -> (DataProgress, Vec<u8>, Result<(), DataRejection>) {
        let mut d = DataDecoder::new(1 << 20, mode);
        let mut out = Vec::new();
        let p = d.feed(input, &mut out);
        (p, out, d.verdict())
    }

    fn decode_all(input: &[u8]) -> (DataProgress, Vec<u8>, Result<(), DataRejection>) {
        decode_in(BareLineEndings::Reject, input)
    }

    fn normalized(input: &[u8]) -> (DataProgress, Vec<u8>, Result<(), DataRejection>) {
        decode_in(BareLineEndings::Normalize, input)
    }

    #[test]
    fn plain_message() {
        let (p, out, v) = decode_all(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(p, DataProgress::Done { consumed: 24 });
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(v, Ok(()));
    }

    #[test]
    fn empty_message() {
        let (p, out, v) = decode_all(b".\r\n");
        assert_eq!(p, DataProgress::Done { consumed: 3 });
        assert!(out.is_empty());
        assert_eq!(v, Ok(()));
    }

    #[test]
    fn unstuffing() {
        let (_, out, _) = decode_all(b"..hidden\r\n...two\r\n.x\r\n.\r\n");
        assert_eq!(out, b".hidden\r\n..two\r\nx\r\n");
    }

    #[test]
    fn byte_by_byte_equals_bulk() {
        let input = b"a\r\n..b\r\nc\r\n.\r\nNEXT";
        let mut d = DataDecoder::new(100, BareLineEndings::Reject);
        let mut out = Vec::new();
        let mut done_at = None;
        for (i, b) in input.iter().enumerate() {
            if let DataProgress::Done { consumed } = d.feed(std::slice::from_ref(b), &mut out) {
                assert_eq!(consumed, 1);
                done_at = Some(i + 1);
                break;
            }
        }
        assert_eq!(done_at, Some(input.len() - 4));
        assert_eq!(out, b"a\r\n.b\r\nc\r\n");
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        // None of these contain <CRLF>.<CRLF>: the data must not end, and must be doomed.
        for input in [
            &b"a\n.\nMAIL FROM:<x@y>\n"[..],
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
        ] {
            let (p, _, v) = decode_all(input);
            assert_eq!(p, DataProgress::NeedMore, "{input:?} ended the data");
            assert_eq!(
                v,
                Err(DataRejection::BareLineEnding),
                "{input:?} not flagged"
            );
            // Normalizing never ends the data there either: the dot line is content.
            let (p, out, v) = normalized(input);
            assert_eq!(p, DataProgress::NeedMore, "{input:?} ended normalized data");
            assert_eq!(v, Ok(()));
            assert!(out.starts_with(b"a\r\n.\r\nMAIL FROM:<x@y>"), "{out:?}");
        }
    }

    #[test]
    fn normalize_turns_bare_cr_and_lf_into_crlf() {
        // OpenSMTPD passes a bare CR inside a line through unchanged.
        let (p, out, v) = normalized(b"line1\rstill line1\r\nx\ny\r\r\n.\r\n");
        assert!(matches!(p, DataProgress::Done { .. }));
        assert_eq!(v, Ok(()));
        assert_eq!(out, b"line1\r\nstill line1\r\nx\r\ny\r\n\r\n");
        // The line after a bare ending is unstuffed like any other; a lone dot there is content.
        let (_, out, _) = normalized(b"a\n..b\n.\n.\r\n.\r\n");
        assert_eq!(out, b"a\r\n.b\r\n.\r\n.\r\n");
        // Bare LF at the very start, and LF-only data that never sends <CRLF>.<CRLF>.
        let (p, out, _) = normalized(b"\nSubject: x\n\nbody\n.\n");
        assert_eq!(p, DataProgress::NeedMore);
        assert_eq!(out, b"\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
    }

    #[test]
    fn normalized_data_stuffed_again_cannot_end_early() {
        // A smuggling attempt, normalized, then relayed: the next hop sees one message.
        let (_, out, _) = normalized(b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n");
        let wire = DotStuffer::encode(&out);
        assert_eq!(wire, b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n");
        let (p, again, v) = decode_all(&wire);
        assert_eq!(
            p,
            DataProgress::Done {
                consumed: wire.len()
            }
        );
        assert_eq!((again, v), (out, Ok(())));
    }

    #[test]
    fn bare_lf_rejects_at_real_end() {
        let (p, _, v) = decode_all(b"a\nb\r\n.\r\n");
        assert!(matches!(p, DataProgress::Done { .. }));
        assert_eq!(v, Err(DataRejection::BareLineEnding));
        let (_, _, v) = decode_all(b"a\rb\r\n.\r\n");
        assert_eq!(v, Err(DataRejection::BareLineEnding));
    }

    #[test]
    fn size_limit_bounds_memory() {
        let mut d = DataDecoder::new(10, BareLineEndings::Normalize);
        let mut out = Vec::new();
        assert_eq!(d.feed(&[b'x'; 1000], &mut out), DataProgress::NeedMore);
        assert!(out.len() <= 10);
        assert!(matches!(
            d.feed(b"\r\n.\r\n", &mut out),
            DataProgress::Done { .. }
        ));
        assert_eq!(d.verdict(), Err(DataRejection::TooLarge));
        assert_eq!(d.size(), 1002);
    }

    #[test]
    fn stuffer_round_trip() {
        let msg = b"From: a\r\n\r\n.leading\r\n..two\r\n.\r\nend";
        let wire = DotStuffer::encode(msg);
        assert_eq!(
            wire,
            b"From: a\r\n\r\n..leading\r\n...two\r\n..\r\nend\r\n.\r\n"
        );
        let (p, out, v) = decode_all(&wire);
        assert_eq!(
            p,
            DataProgress::Done {
                consumed: wire.len()
            }
        );
        assert_eq!(out, b"From: a\r\n\r\n.leading\r\n..two\r\n.\r\nend\r\n");
        assert_eq!(v, Ok(()));
    }

    #[test]
    fn stuffer_normalizes_line_endings() {
        assert_eq!(
            DotStuffer::encode(b"a\nb\rc\r\n.d\n"),
            b"a\r\nb\r\nc\r\n..d\r\n.\r\n"
        );
        assert_eq!(DotStuffer::encode(b""), b".\r\n");
        // Chunk boundaries inside CRLF don't change anything.
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.feed(b"a\r", &mut out);
        s.feed(b"\n.b\r", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a user's message holds, encode-then-decode gives it back with CRLF line
        /// endings, the decoder stops exactly at the end of the encoded stream, and never early.
        #[test]
        fn encode_decode_round_trip(msg in proptest::collection::vec(prop_oneof![
            Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..400), split in 0usize..500) {
            let wire = DotStuffer::encode(&msg);
            let mut d = DataDecoder::new(1 << 20, BareLineEndings::Reject);
            let mut out = Vec::new();
            let split = split.min(wire.len());
            let first = d.feed(&wire[..split], &mut out);
            let total = match first {
                DataProgress::Done { consumed } => consumed,
                DataProgress::NeedMore => match d.feed(&wire[split..], &mut out) {
                    DataProgress::Done { consumed } => split + consumed,
                    DataProgress::NeedMore => panic!("no end found"),
                },
            };
            prop_assert_eq!(total, wire.len());
            prop_assert_eq!(d.verdict(), Ok(()));
            // Expected: the message with every line ending normalised to CRLF, plus a final CRLF.
            let mut expected = Vec::new();
            let mut s = DotStuffer::new();
            s.feed(&msg, &mut Vec::new());
            let mut i = 0;
            while i < msg.len() {
                match msg[i] {
                    b'\r' if msg.get(i + 1) == Some(&b'\n') => { expected.extend_from_slice(b"\r\n"); i += 2; continue; }
                    b'\r' | b'\n' => expected.extend_from_slice(b"\r\n"),
                    b => expected.push(b),
                }
                i += 1;
            }
            if !expected.is_empty() && !expected.ends_with(b"\r\n") { expected.extend_from_slice(b"\r\n"); }
            prop_assert_eq!(out, expected);
        }

        /// Arbitrary input never panics, and if it ends the data, the end marker is really there.
        #[test]
        fn decoder_total(input in proptest::collection::vec(any::<u8>(), 0..600), reject: bool) {
            let mode = if reject { BareLineEndings::Reject } else { BareLineEndings::Normalize };
            let mut d = DataDecoder::new(100, mode);
            let mut out = Vec::new();
            if let DataProgress::Done { consumed } = d.feed(&input, &mut out) {
                prop_assert!(input[..consumed].ends_with(b"\r\n.\r\n") || consumed == 3 && input.starts_with(b".\r\n"));
            }
            prop_assert!(out.len() <= 100);
        }

        /// Both modes end the data at the same place, the first `<CRLF>.<CRLF>`, whatever the
        /// chunking; normalize gives a reference model's output: every CRLF, bare CR and bare LF
        /// ends a line, written CRLF; a leading dot is removed from a line with more on it; a
        /// lone dot that is not the end is kept.
        #[test]
        fn normalize_matches_reference(input in proptest::collection::vec(prop_oneof![
            Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..300), split in 0usize..300) {
            let end = (0..input.len())
                .find(|&i| input[i..].starts_with(b".\r\n") && (i == 0 || input[..i].ends_with(b"\r\n")))
                .map(|i| i + 3);
            let mut outs = Vec::new();
            for mode in [BareLineEndings::Normalize, BareLineEndings::Reject] {
                let mut d = DataDecoder::new(1 << 20, mode);
                let mut out = Vec::new();
                let split = split.min(input.len());
                let done = match d.feed(&input[..split], &mut out) {
                    DataProgress::Done { consumed } => Some(consumed),
                    DataProgress::NeedMore => match d.feed(&input[split..], &mut out) {
                        DataProgress::Done { consumed } => Some(split + consumed),
                        DataProgress::NeedMore => None,
                    },
                };
                prop_assert_eq!(done, end);
                outs.push((out, d.verdict()));
            }
            // Without an end marker the last line is unfinished (a CR may still get its LF).
            let Some(end) = end else { return Ok(()) };
            let msg = &input[..end - 3];
            let mut expected = Vec::new();
            let mut line = Vec::new();
            let mut i = 0;
            while i < msg.len() {
                let ending = match msg[i] {
                    b'\r' if msg.get(i + 1) == Some(&b'\n') => { i += 1; true }
                    b'\r' | b'\n' => true,
                    b => { line.push(b); false }
                };
                i += 1;
                if ending {
                    let content = if line.len() > 1 && line[0] == b'.' { &line[1..] } else { &line[..] };
                    expected.extend_from_slice(content);
                    expected.extend_from_slice(b"\r\n");
                    line.clear();
                }
            }
            prop_assert!(line.is_empty(), "the end marker follows a CRLF");
            prop_assert_eq!(&outs[0].0, &expected);
            prop_assert_eq!(outs[0].1, Ok(()));
            let bare = msg.iter().enumerate().any(|(i, &b)| match b {
                b'\r' => msg.get(i + 1) != Some(&b'\n'),
                b'\n' => i == 0 || msg[i - 1] != b'\r',
                _ => false,
            });
            prop_assert_eq!(outs[1].1.is_err(), bare);
        }
    }
}
