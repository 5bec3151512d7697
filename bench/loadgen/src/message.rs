//! Builds the test message: a few headers and a body of exactly N bytes, already dot-safe.

/// Body of `size` bytes in lines of at most 78 characters plus CRLF (RFC 5322 2.1.1), never starting
/// with `.` so no dot-stuffing is needed (RFC 5321 4.5.2), and always ending in CRLF so the
/// terminating `.` sits on its own line.
pub fn body(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 2);
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnop";
    while out.len() < size {
        let room = size - out.len();
        if room < 3 {
            // Only for bodies under 3 bytes: no room for text + CRLF; the CRLF is added below.
            out.extend(std::iter::repeat_n(b'x', room));
            break;
        }
        // Keep the last line at least 3 bytes long so the body ends exactly on `size` with a CRLF.
        let take = if room <= line.len() + 2 {
            room - 2
        } else if room - (line.len() + 2) < 3 {
            line.len() - 8
        } else {
            line.len()
        };
        out.extend_from_slice(&line[..take]);
        out.extend_from_slice(b"\r\n");
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Header block for message number `seq` (ends with the empty line that separates it from the body).
pub fn headers(from: &str, to: &str, seq: u64) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: tern benchmark {seq}\r\n\
         Message-ID: <{seq}.loadgen@client.test>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_requested_size_and_is_dot_safe() {
        for size in [
            0usize, 1, 2, 3, 4, 80, 81, 82, 83, 160, 161, 1024, 5120, 102_400,
        ] {
            let b = body(size);
            // Exact size, except tiny bodies that need a final CRLF.
            assert!(
                b.len() == size || (size < 3 && b.len() == size + 2),
                "size {size} -> {}",
                b.len()
            );
            assert!(b.ends_with(b"\r\n") || b.is_empty());
            for line in b.split(|&c| c == b'\n') {
                assert!(!line.starts_with(b"."), "line starts with a dot");
                assert!(line.len() <= 80, "line too long");
            }
            // Every LF is part of a CRLF.
            let lfs = b.iter().filter(|&&c| c == b'\n').count();
            let crlfs = b.windows(2).filter(|w| w == b"\r\n").count();
            assert_eq!(lfs, crlfs);
        }
    }

    #[test]
    fn headers_end_with_blank_line() {
        let h = headers("a@x.test", "b@y.test", 7);
        let s = String::from_utf8(h).unwrap();
        assert!(s.contains("To: <b@y.test>\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }
}
