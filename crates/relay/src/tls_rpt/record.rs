//! The `_smtp._tls.<domain>` TXT record (RFC 8460 3): `v=TLSRPTv1; rua=mailto:...,https://...`.
//! No I/O.
//!
//! ```text
//! tlsrpt-record    = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//! field-delim      = *WSP ";" *WSP
//! tlsrpt-field     = tlsrpt-rua / tlsrpt-extension
//! tlsrpt-rua       = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//! tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
//! tlsrpt-ext-name  = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//! tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
//! ```

/// Where reports go: one `rua` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` with the address (percent-decoded).
    Mailto(String),
    /// An `https://` URL, as written.
    Https(String),
}

impl std::fmt::Display for Rua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rua::Mailto(a) => write!(f, "mailto:{a}"),
            Rua::Https(u) => f.write_str(u),
        }
    }
}

/// At most this many `rua` URIs of one record are used.
pub const MAX_RUA: usize = 8;

/// The TXT strings of `_smtp._tls.<domain>` (each record's strings joined): the report
/// destinations, or why there are none. RFC 8460 3: records not starting with `v=TLSRPTv1` are
/// ignored; not exactly one left means the domain does not do TLSRPT.
pub fn parse_records(records: &[Vec<u8>]) -> Result<Vec<Rua>, String> {
    let texts: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .filter(|t| is_tlsrpt(t))
        .collect();
    match texts.as_slice() {
        [] => Err("no v=TLSRPTv1 record".into()),
        [one] => parse_record(one),
        more => Err(format!(
            "{} v=TLSRPTv1 records (exactly one is needed)",
            more.len()
        )),
    }
}

fn is_tlsrpt(text: &str) -> bool {
    let t = text.trim_start_matches([' ', '\t']);
    match t.strip_prefix("v=TLSRPTv1") {
        Some(rest) => {
            rest.trim_start_matches([' ', '\t']).is_empty()
                || rest.trim_start_matches([' ', '\t']).starts_with(';')
        }
        None => false,
    }
}

/// One record's text: its usable `rua` URIs (mailto: and https:, at most [`MAX_RUA`]).
pub fn parse_record(text: &str) -> Result<Vec<Rua>, String> {
    let wsp: &[char] = &[' ', '\t'];
    let mut fields = text.split(';');
    let version = fields.next().unwrap_or("").trim_matches(wsp);
    if version != "v=TLSRPTv1" {
        return Err(format!("does not start with v=TLSRPTv1: {:?}", clip(text)));
    }
    let mut rua: Option<Vec<Rua>> = None;
    let mut count = 0;
    let fields: Vec<&str> = fields.collect();
    for (i, field) in fields.iter().enumerate() {
        let field = field.trim_matches(wsp);
        if field.is_empty() {
            // Only a trailing delimiter may leave an empty field.
            if i + 1 == fields.len() {
                continue;
            }
            return Err("an empty field (\";;\")".into());
        }
        count += 1;
        let Some((name, value)) = field.split_once('=') else {
            return Err(format!("field without \"=\": {:?}", clip(field)));
        };
        if name == "rua" {
            if rua.is_some() {
                return Err("more than one rua field".into());
            }
            rua = Some(parse_rua(value)?);
        } else if !ext_name_ok(name) || !ext_value_ok(value) {
            return Err(format!("invalid field {:?}", clip(field)));
        }
    }
    if count == 0 {
        return Err("no field after v=TLSRPTv1".into());
    }
    let Some(rua) = rua else {
        return Err("no rua field".into());
    };
    if rua.is_empty() {
        return Err("no mailto: or https: URI in rua".into());
    }
    Ok(rua)
}

fn parse_rua(value: &str) -> Result<Vec<Rua>, String> {
    let mut out = Vec::new();
    for uri in value.split(',') {
        let uri = uri.trim_matches([' ', '\t']);
        if uri.is_empty() || uri.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(format!("invalid rua URI {:?}", clip(uri)));
        }
        let lower = uri.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("mailto:").map(|_| &uri[7..]) {
            // No headers or extra recipients (`?subject=...`) are honoured.
            let addr = percent_decode(rest.split('?').next().unwrap_or(""))?;
            match addr.rsplit_once('@') {
                Some((l, d))
                    if !l.is_empty() && !d.is_empty() && !addr.contains([' ', ',', '<', '>']) =>
                {
                    out.push(Rua::Mailto(addr.clone()))
                }
                _ => return Err(format!("invalid mailto: address {:?}", clip(uri))),
            }
        } else if lower.starts_with("https://") {
            if uri.len() <= 8 {
                return Err(format!("invalid https: URI {:?}", clip(uri)));
            }
            out.push(Rua::Https(uri.to_string()));
        }
        // Other schemes: not something tern can send to; skipped.
        if out.len() >= MAX_RUA {
            break;
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad percent-encoding")?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding")?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8".into())
}

fn ext_name_ok(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 32
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn ext_value_ok(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|c| matches!(c, 0x21..=0x3a | 0x3c | 0x3e..=0x7e))
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn one_or_several_rua() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:tlsrpt@reports.test").unwrap(),
            [Rua::Mailto("tlsrpt@reports.test".into())]
        );
        assert_eq!(
            parse_record(
                "v=TLSRPTv1;rua=mailto:a@x.test , https://r.test/tls?x=1 ,mailto:b%21c@y.test;"
            )
            .unwrap(),
            [
                Rua::Mailto("a@x.test".into()),
                Rua::Https("https://r.test/tls?x=1".into()),
                Rua::Mailto("b!c@y.test".into()),
            ]
        );
        // Extensions are allowed, unknown schemes skipped.
        assert_eq!(
            parse_record("v=TLSRPTv1 ; ext_1=abc ; rua=ftp://x.test,mailto:a@x.test ;").unwrap(),
            [Rua::Mailto("a@x.test".into())]
        );
    }

    #[test]
    fn bad_records_are_refused() {
        for (text, why) in [
            ("v=TLSRPTv2; rua=mailto:a@x.test", "v=TLSRPTv1"),
            ("rua=mailto:a@x.test; v=TLSRPTv1", "v=TLSRPTv1"),
            ("v=TLSRPTv1", "no field"),
            ("v=TLSRPTv1;", "no field"),
            ("v=TLSRPTv1; ext=1", "no rua"),
            ("v=TLSRPTv1; rua=", "invalid rua"),
            (
                "v=TLSRPTv1; rua=mailto:a@x.test; rua=mailto:b@x.test",
                "more than one",
            ),
            ("v=TLSRPTv1; rua=mailto:nobody", "invalid mailto"),
            ("v=TLSRPTv1; rua=ftp://x.test", "no mailto: or https:"),
            ("v=TLSRPTv1; rua=mailto:a@x.test;; ext=1", "empty field"),
            ("v=TLSRPTv1; rua mailto:a@x.test", "without \"=\""),
            ("v=TLSRPTv1; rua=mailto:a@x.test; -bad=1", "invalid field"),
            ("v=TLSRPTv1; rua=mailto:a@x.test; ext=a=b", "invalid field"),
            ("v=TLSRPTv1; rua=mailto:a%2@x.test", "percent"),
        ] {
            let e = parse_record(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn exactly_one_tlsrpt_record() {
        assert!(
            parse_records(&[rec("v=spf1 -all"), rec("v=TLSRPTv1; rua=mailto:a@x.test")]).is_ok()
        );
        assert!(parse_records(&[]).unwrap_err().contains("no v=TLSRPTv1"));
        assert!(parse_records(&[rec("v=TLSRPTv10; rua=mailto:a@x.test")]).is_err());
        let two = parse_records(&[
            rec("v=TLSRPTv1; rua=mailto:a@x.test"),
            rec("v=TLSRPTv1; rua=mailto:b@x.test"),
        ]);
        assert!(two.unwrap_err().contains("2 v=TLSRPTv1"));
    }
}
