//! Qualifying addresses without a domain, as sendmail, Postfix (`myorigin`) and Exim
//! (`qualify_domain`) do for local submissions: cron writes `To: root` and calls
//! `sendmail -i root`, and RFC 5321 4.1.2 has no unqualified mailboxes on the wire. Only
//! addresses that lack a domain change; display names, comments and quoting stay as written.

/// The header fields whose addresses are qualified (RFC 5322 3.6.2, 3.6.3, 3.6.6).
pub const ADDRESS_FIELDS: [&str; 11] = [
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-bcc",
];

/// `addr@domain` for an `addr` without an `@` outside quotes; anything else unchanged
/// (including the empty null path and addresses that are invalid for other reasons, which the
/// caller's parser then reports).
pub fn address(addr: &str, domain: &str) -> String {
    if addr.is_empty() || has_domain(addr) {
        addr.to_string()
    } else {
        format!("{addr}@{domain}")
    }
}

/// True if `addr` holds an `@` outside a quoted string (`"a@b"` alone is a local part).
fn has_domain(addr: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in addr.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '@' if !quoted => return true,
            _ => {}
        }
    }
    false
}

/// A whole header field `Name: value` (folded lines allowed): the value's addresses are
/// qualified when `Name` is one of [`ADDRESS_FIELDS`]; other fields come back unchanged.
pub fn field(field: &str, domain: &str) -> String {
    let Some((name, value)) = field.split_once(':') else {
        return field.to_string();
    };
    let lower = name.trim().to_ascii_lowercase();
    if !ADDRESS_FIELDS.contains(&lower.as_str()) {
        return field.to_string();
    }
    format!("{name}:{}", address_list(value, domain))
}

/// An RFC 5322 3.4 address list with every unqualified mailbox given `@domain`: inside `<...>`
/// when there are angle brackets, else right after the address (before a trailing comment).
/// Groups (`name: a, b;`) keep their display name.
pub fn address_list(value: &str, domain: &str) -> String {
    let mut inserts: Vec<usize> = Vec::new();
    let mut entry = Entry::default();
    let (mut quoted, mut escaped, mut depth) = (false, false, 0u32);
    let mut angle: Option<Entry> = None;
    for (i, c) in value.char_indices() {
        let end = i + c.len_utf8();
        if escaped {
            escaped = false;
            if depth == 0 {
                entry.atom(end, angle.as_mut());
            }
            continue;
        }
        if quoted {
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            entry.atom(end, angle.as_mut());
            continue;
        }
        if depth > 0 {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '\\' => escaped = true,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                entry.atom(end, angle.as_mut());
            }
            '(' => depth = 1,
            '<' if angle.is_none() => {
                angle = Some(Entry::default());
                entry.angled = true;
            }
            '>' if angle.is_some() => {
                if let Some(inner) = angle.take() {
                    if inner.end.is_some() && !inner.at {
                        inserts.push(i);
                    }
                }
            }
            '@' => {
                if let Some(a) = angle.as_mut() {
                    a.at = true;
                } else {
                    entry.at = true;
                }
            }
            // Route syntax `<@a,@b:x@y>` keeps its commas and colon inside the brackets.
            ',' | ':' | ';' if angle.is_some() => {}
            ',' | ';' => {
                inserts.extend(entry.insert_at());
                entry = Entry::default();
            }
            // A group's display name: its words are no address.
            ':' => entry = Entry::default(),
            c if c.is_whitespace() => {}
            _ => entry.atom(end, angle.as_mut()),
        }
    }
    inserts.extend(entry.insert_at());
    let mut out = String::with_capacity(value.len() + inserts.len() * (domain.len() + 1));
    let mut copied = 0;
    for at in inserts {
        out.push_str(&value[copied..at]);
        out.push('@');
        out.push_str(domain);
        copied = at;
    }
    out.push_str(&value[copied..]);
    out
}

/// What the scan knows about one list entry (or the inside of its angle brackets).
#[derive(Debug, Default)]
struct Entry {
    /// Byte offset just after the last address character seen (outside comments).
    end: Option<usize>,
    at: bool,
    angled: bool,
}

impl Entry {
    fn atom(&mut self, end: usize, angle: Option<&mut Entry>) {
        match angle {
            Some(a) => a.end = Some(end),
            None => self.end = Some(end),
        }
    }

    /// Where `@domain` goes for an entry without angle brackets, if it needs one.
    fn insert_at(&self) -> Option<usize> {
        match self.end {
            Some(end) if !self.angled && !self.at => Some(end),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "host.example";

    #[test]
    fn bare_addresses() {
        assert_eq!(address("root", D), "root@host.example");
        assert_eq!(address("root@x.test", D), "root@x.test");
        assert_eq!(address("", D), "");
        assert_eq!(address("\"a@b\"", D), "\"a@b\"@host.example");
        assert_eq!(address("\"a@b\"@x.test", D), "\"a@b\"@x.test");
    }

    #[test]
    fn header_lists_keep_names_and_comments() {
        for (value, want) in [
            (" root", " root@host.example"),
            (" root (Cron Daemon)", " root@host.example (Cron Daemon)"),
            (" Cron Daemon <root>", " Cron Daemon <root@host.example>"),
            (
                " \"Doe, Jo\" <jo>, b@x.test",
                " \"Doe, Jo\" <jo@host.example>, b@x.test",
            ),
            (
                " a, b@x.test,\r\n c",
                " a@host.example, b@x.test,\r\n c@host.example",
            ),
            (" team: a, b@x.test;", " team: a@host.example, b@x.test;"),
            (" undisclosed-recipients:;", " undisclosed-recipients:;"),
            (" <@relay.test:jo@x.test>", " <@relay.test:jo@x.test>"),
            (" (only a comment)", " (only a comment)"),
            (
                " root@x.test (a (nested) comment)",
                " root@x.test (a (nested) comment)",
            ),
            (" \"quoted local\"", " \"quoted local\"@host.example"),
            (" <>", " <>"),
            (" root (a \\) b)", " root@host.example (a \\) b)"),
        ] {
            assert_eq!(address_list(value, D), want, "{value:?}");
        }
    }

    #[test]
    fn only_address_fields_change() {
        assert_eq!(field("To: root", D), "To: root@host.example");
        assert_eq!(
            field("From: root (Cron Daemon)", D),
            "From: root@host.example (Cron Daemon)"
        );
        assert_eq!(field("Subject: root", D), "Subject: root");
        assert_eq!(
            field("X-Cron-Env: <SHELL=/bin/sh>", D),
            "X-Cron-Env: <SHELL=/bin/sh>"
        );
    }

    mod props {
        use super::super::*;
        use crate::cmd::sendmail::split_addresses;
        use proptest::prelude::*;

        /// One list entry: an address with or without a domain, maybe in angle brackets after a
        /// (quoted) display name, maybe followed by a comment (without `<>`: the oracle,
        /// sendmail's `split_addresses`, takes angle brackets in a comment for the address).
        fn entry() -> impl Strategy<Value = String> {
            let local = "[a-z][a-z0-9.+-]{0,6}";
            let addr = (local, proptest::option::of("[a-z]{1,5}\\.test"))
                .prop_map(|(l, d)| d.map_or(l.clone(), |d| format!("{l}@{d}")));
            let name = prop_oneof![
                Just(String::new()),
                "[A-Z][a-z]{0,5}( [A-Z][a-z]{0,5})?",
                "\"[A-Za-z ,@]{1,8}\"".prop_map(String::from)
            ];
            let comment = prop_oneof![
                Just(String::new()),
                " \\([A-Za-z @,]{0,8}\\)".prop_map(String::from)
            ];
            (addr, name, comment, any::<bool>()).prop_map(|(a, n, c, angle)| {
                if angle || !n.is_empty() {
                    format!("{n} <{a}>{c}")
                } else {
                    format!("{a}{c}")
                }
            })
        }

        proptest! {
            /// Every address of the result has a domain; only `@<domain>` was inserted, nowhere
            /// else (removing the marker domain gives the input back).
            #[test]
            fn every_address_gets_a_domain_and_nothing_else_changes(
                entries in proptest::collection::vec(entry(), 1..5)
            ) {
                let value = format!(" {}", entries.join(", "));
                let out = address_list(&value, "q.invalid");
                prop_assert_eq!(out.replace("@q.invalid", ""), value.clone());
                let addrs = split_addresses(&out);
                prop_assert_eq!(addrs.len(), entries.len(), "{}", out);
                for a in addrs {
                    prop_assert!(has_domain(&a), "{} in {}", a, out);
                }
            }
        }
    }
}
