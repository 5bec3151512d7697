//! Removing Authentication-Results fields that claim to be ours. RFC 8601 5: a border MTA
//! "MUST remove" (or rename) any such field already present that carries its own authserv-id,
//! or a sender could forge our verdict. Fields of other authserv-ids stay (they are someone
//! else's claims, and ARC seals may cover them).

/// The header section `header` (without the empty line that ends it) with every
/// `Authentication-Results:` field whose authserv-id is `authserv_id` (case-insensitive,
/// trailing dot ignored) removed; every other byte is kept as it was.
pub fn strip_our_authentication_results(header: &[u8], authserv_id: &str) -> Vec<u8> {
    let ours = authserv_id.trim_end_matches('.');
    let mut out = Vec::with_capacity(header.len());
    for field in fields(header) {
        if !is_ours(field, ours) {
            out.extend_from_slice(field);
        }
    }
    out
}

/// Splits a header section into fields, each with its continuation lines (RFC 5322 2.2.3) and
/// line endings.
fn fields(header: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < header.len() {
        let end = header[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |i| pos + i + 1);
        let continues = matches!(header.get(end), Some(b' ' | b'\t'));
        if !continues {
            fields.push(&header[start..end]);
            start = end;
        }
        pos = end;
    }
    if start < header.len() {
        fields.push(&header[start..]);
    }
    fields
}

fn is_ours(field: &[u8], ours: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &field[..colon];
    if !name
        .trim_ascii()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return false;
    }
    authserv_id(&field[colon + 1..])
        .is_some_and(|id| id.trim_end_matches('.').eq_ignore_ascii_case(ours))
}

/// The authserv-id: the first token of the value after comments and folding whitespace
/// (RFC 8601 2.2: `authres-header-field = ... [CFWS] authserv-id [ CFWS authres-version ] ...`).
fn authserv_id(value: &[u8]) -> Option<String> {
    let mut depth = 0usize;
    let mut token = Vec::new();
    let mut escaped = false;
    for &b in value {
        if depth > 0 {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
            continue;
        }
        match b {
            b'(' if token.is_empty() => depth = 1,
            b' ' | b'\t' | b'\r' | b'\n' if token.is_empty() => {}
            b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' => break,
            _ => token.push(b),
        }
    }
    if token.is_empty() {
        return None;
    }
    String::from_utf8(token).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_fields_go() {
        let header = b"Received: from a\r\n by b\r\n\
Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=x@y\r\n\
authentication-results: (forged) MX.Example.Test. 1; dkim=pass\r\n\
Authentication-Results: other.test; dmarc=pass\r\n\
Authentication-Results: mx.example.test.evil; dmarc=pass\r\n\
Subject: hi\r\n";
        let out = strip_our_authentication_results(header, "mx.example.test");
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "Received: from a\r\n by b\r\n\
Authentication-Results: other.test; dmarc=pass\r\n\
Authentication-Results: mx.example.test.evil; dmarc=pass\r\n\
Subject: hi\r\n"
        );
    }

    #[test]
    fn nothing_changes_without_our_fields_and_odd_input_is_kept() {
        let header = b"Subject: x\r\nAuthentication-Results:\r\nno colon here\r\nX: y";
        assert_eq!(
            strip_our_authentication_results(header, "mx.test"),
            header.to_vec()
        );
    }
}
