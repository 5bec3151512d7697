//! Invariant checks for the `milter_draft` fuzz target, shared by
//! `fuzz/fuzz_targets/milter_draft.rs` and the corpus replay in
//! `crates/server/tests/fuzz_filter.rs`: the function panics on a violation.
//!
//! The input is a client's message (untrusted) and what a milter sends at the end of it
//! (a peer tern does not control). Invariants: reading the header section and applying any
//! set of changes never panics; the values a milter is shown hold no NUL; a draft nothing
//! changed gives back the prefix and the message byte for byte; a rewritten message's header
//! section parses back into exactly the fields the draft held (no value ends the section early
//! or smuggles a field in), and a header section without bare CR or LF has none after the
//! changes.
#![allow(dead_code)]

use tern_milter::{Modification, PacketReader, Response};
use tern_queue::{MessageBody, StoreError};
use tern_server::filter::Draft;

pub const PREFIX: &str =
    "Received: from client.test ([192.0.2.1])\r\n\tby mx.tern.test (tern); now\r\n";

/// Input: two octets (big-endian) giving the length of the message, the message, then the
/// milter's packets.
pub fn milter_draft(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (message, wire) = rest.split_at(n);
    let mut reader = PacketReader::new();
    let _ = reader.push(wire);
    let mut changes = Vec::new();
    while let Some(p) = reader.next_packet() {
        if let Some(m) = Response::decode(&p)
            .ok()
            .and_then(Modification::from_response)
        {
            changes.push(m);
        }
    }
    let body = MessageBody::Memory(message.to_vec());
    let mut draft = Draft::new(PREFIX.into(), body, 1 << 20).expect("a message in memory");
    for (name, value) in draft.headers() {
        assert!(
            !name.is_empty() && !value.contains(&0),
            "shown {name:?}: {value:?}"
        );
    }
    let applied = draft.apply(&changes);
    let fields = draft.field_count();
    let (prefix, body) = draft
        .finish(|| Err(StoreError::new("no spool here")))
        .expect("a message in memory stays in memory");
    let MessageBody::Memory(out) = body else {
        panic!("a message in memory was spooled");
    };
    if !prefix.is_empty() {
        // Nothing changed (or the changes were refused): the message as it came.
        assert_eq!(prefix, PREFIX);
        assert_eq!(out, message, "an unchanged message was rewritten");
        return;
    }
    assert!(applied.is_ok(), "a refused set of changes was applied");
    let again = Draft::new(String::new(), MessageBody::Memory(out.clone()), 1 << 20)
        .expect("a message in memory");
    assert_eq!(
        again.field_count(),
        fields,
        "the rewritten header section does not parse back into its fields: {:?}",
        String::from_utf8_lossy(&out)
    );
    // Written fields end their lines in CRLF: a header section that had no bare CR or LF
    // has none after the changes.
    let header_of = |m: &[u8]| m[..tern_proto::HeaderSection::find(m).end()].to_vec();
    if !has_bare_line_end(&header_of(message)) {
        assert!(
            !has_bare_line_end(&header_of(&out)),
            "a bare CR or LF in the rewritten header section: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

fn has_bare_line_end(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}
