//! The line ending of Maildir files. SMTP carries lines ending in CRLF (RFC 5321 2.3.8); every
//! Maildir reader (Dovecot, mutt, s-nail, Courier) and writer (Postfix, Exim, OpenSMTPD) uses
//! the Unix convention, LF, so that is what the files hold. Dovecot also wants the size with
//! CRLF (its "virtual size", the `,W=` field of the file name) to answer IMAP without reading.

/// Appends `input` to `out` with every CRLF written as LF (a CR elsewhere is kept), and returns
/// how many octets longer the result would be with CRLF line ends: one per LF that does not
/// follow a CR in `out`, as Dovecot counts. Works line by line with memchr, not per byte.
pub(crate) fn crlf_to_lf(input: &[u8], out: &mut Vec<u8>) -> usize {
    crlf_to_lf_after(input, false, out)
}

/// [`crlf_to_lf`] for input that continues a stream whose last output octet was a CR
/// (`after_cr`): a CRLF right at the start then follows that CR in the file.
fn crlf_to_lf_after(input: &[u8], after_cr: bool, out: &mut Vec<u8>) -> usize {
    out.reserve(input.len());
    let mut copied = 0;
    let mut extra = 0;
    for lf in memchr::memchr_iter(b'\n', input) {
        if lf > 0 && input[lf - 1] == b'\r' {
            out.extend_from_slice(&input[copied..lf - 1]);
            // The LF goes out with the next run. It now follows input[lf - 2]: a CR there (a
            // bare CR before the CRLF) makes the file hold a CRLF that needs nothing added.
            copied = lf;
            let cr_before = if lf >= 2 {
                input[lf - 2] == b'\r'
            } else {
                after_cr
            };
            if !cr_before {
                extra += 1;
            }
        } else {
            extra += 1;
        }
    }
    out.extend_from_slice(&input[copied..]);
    extra
}

/// [`crlf_to_lf`] over a message that arrives in pieces (read from a spool file): the output
/// and the count are exactly those of converting the whole at once. A CR at the end of a piece
/// is held back until the next piece says whether a LF follows it.
#[derive(Debug, Default)]
pub(crate) struct CrlfToLf {
    /// The last input octet was a CR, not yet written.
    held_cr: bool,
    /// The last octet written was a CR.
    out_cr: bool,
    extra: usize,
}

impl CrlfToLf {
    /// Converts the next piece, appending to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        if std::mem::take(&mut self.held_cr) {
            if input[0] == b'\n' {
                // A CRLF split across pieces.
                if !self.out_cr {
                    self.extra += 1;
                }
                out.push(b'\n');
                self.out_cr = false;
                input = &input[1..];
            } else {
                out.push(b'\r');
                self.out_cr = true;
            }
        }
        if let Some((&b'\r', rest)) = input.split_last() {
            self.held_cr = true;
            input = rest;
        }
        if input.is_empty() {
            return;
        }
        let start = out.len();
        self.extra += crlf_to_lf_after(input, self.out_cr, out);
        if out.len() > start {
            self.out_cr = out.last() == Some(&b'\r');
        }
    }

    /// The end of the message: writes a held CR, and returns the CRLF extra of the whole.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> usize {
        if std::mem::take(&mut self.held_cr) {
            out.push(b'\r');
        }
        self.extra
    }
}

/// The reverse, for code that reads a Maildir file back to send it or show it over SMTP/IMAP:
/// every LF not already preceded by CR becomes CRLF. Files written before tern stored LF hold
/// CRLF already and come back unchanged.
pub fn lf_to_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32 + 2);
    let mut copied = 0;
    for lf in memchr::memchr_iter(b'\n', input) {
        if lf == 0 || input[lf - 1] != b'\r' {
            out.extend_from_slice(&input[copied..lf]);
            out.extend_from_slice(b"\r");
            copied = lf;
        }
    }
    out.extend_from_slice(&input[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lf(input: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let extra = crlf_to_lf(input, &mut out);
        (out, extra)
    }

    #[test]
    fn crlf_becomes_lf_and_the_crlf_size_is_kept() {
        assert_eq!(lf(b"a\r\nb\r\n\r\nc"), (b"a\nb\n\nc".to_vec(), 3));
        assert_eq!(lf(b""), (Vec::new(), 0));
        assert_eq!(lf(b"\r\n"), (b"\n".to_vec(), 1));
        // A CR that is not part of a CRLF stays; Dovecot counts a CRLF in the file as is.
        assert_eq!(lf(b"x\ry\r\r\n"), (b"x\ry\r\n".to_vec(), 0));
        // A bare LF (never stored by the server, but possible from other writers) counts once.
        assert_eq!(lf(b"a\nb"), (b"a\nb".to_vec(), 1));
    }

    #[test]
    fn old_crlf_files_read_back_unchanged() {
        let crlf = b"Subject: x\r\n\r\nbody\r\n";
        assert_eq!(lf_to_crlf(crlf), crlf);
        assert_eq!(lf_to_crlf(b"Subject: x\n\nbody\n"), crlf);
    }

    proptest! {
        /// Converting in pieces of any sizes gives what converting the whole gives.
        #[test]
        fn pieces_convert_like_the_whole(msg in proptest::collection::vec(prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b'a')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..8)) {
            let (whole, whole_extra) = lf(&msg);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(msg.len())).collect();
            cuts.sort_unstable();
            let mut conv = CrlfToLf::default();
            let mut out = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([msg.len()]) {
                conv.feed(&msg[at..c], &mut out);
                at = c;
            }
            let extra = conv.finish(&mut out);
            prop_assert_eq!(out, whole);
            prop_assert_eq!(extra, whole_extra);
        }

        /// Whatever the input, the virtual size is what the file would be with each of its line
        /// ends as CRLF, and for CRLF-only messages (what the server stores) reading back gives
        /// the original bytes.
        #[test]
        fn sizes_and_round_trip(msg in proptest::collection::vec(prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..300)) {
            let (file, extra) = lf(&msg);
            prop_assert!(!file.windows(2).any(|w| w == b"\r\n") || msg.windows(3).any(|w| w == b"\r\r\n"));
            prop_assert_eq!(file.len() + extra, lf_to_crlf(&file).len());
            let crlf_only = lf_to_crlf(&msg.iter().copied().filter(|&b| b != b'\r').collect::<Vec<_>>());
            let (file, _) = lf(&crlf_only);
            prop_assert_eq!(lf_to_crlf(&file), crlf_only);
        }
    }
}
