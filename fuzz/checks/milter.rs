//! Invariant checks for the `milter_response` fuzz target, shared by
//! `fuzz/fuzz_targets/milter_response.rs` and the corpus replay in
//! `crates/milter/tests/fuzz_corpus.rs`: the function panics on a violation.
//!
//! Invariants (docs/fuzzing.md, "Targets and invariants"): the
//! `PacketReader` never panics and never buffers more than `LEN_BYTES + MAX_PACKET_LEN`; the
//! packets and errors are the same however the bytes arrive; `Response::decode` never panics;
//! a decoded response re-encodes to a packet with the same command that decodes equal; a reply
//! code is 400-599 with a matching enhanced class and gives exactly one SMTP reply line; header
//! names are printable ASCII without ':'; replacement body chunks are at most 65535 octets; an
//! OPTNEG answer never negotiates more than tern offers, and what it drops is reported.
#![allow(dead_code)]

use tern_milter::packet::LEN_BYTES;
use tern_milter::{
    negotiate, OptNeg, Packet, PacketReader, Response, ResponseError, MAX_PACKET_LEN,
    MILTER_CHUNK_SIZE,
};

/// One outcome of reading the stream: a decoded response or a decode error per packet, then
/// the framing error if the stream broke.
pub type Outcome = (
    Vec<Result<Response, ResponseError>>,
    Option<tern_milter::PacketError>,
);

/// Input: one chunking byte (seeds a xorshift deciding how the bytes arrive, 1 octet up to
/// 4 KiB at a time), then everything a milter says.
pub fn milter_response(data: &[u8]) {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let chunked = read(wire, seed);
    // The framing does not depend on how the bytes arrive.
    let whole = read(wire, 0);
    assert_eq!(chunked, whole, "chunking changed the packets");
}

pub fn read(wire: &[u8], seed: u8) -> Outcome {
    let mut reader = PacketReader::new();
    let mut state = u32::from(seed) | 0x100;
    let mut rest = wire;
    let mut out = Vec::new();
    let mut failed = None;
    while !rest.is_empty() {
        let n = if seed == 0 {
            rest.len()
        } else {
            // xorshift32: chunk sizes 1..=4096, small ones more often.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let limit = [7usize, 64, 4096][(state % 3) as usize];
            1 + (state as usize >> 2) % limit
        }
        .min(rest.len());
        let pushed = reader.push(&rest[..n]);
        rest = &rest[n..];
        assert!(
            reader.buffered() <= LEN_BYTES + MAX_PACKET_LEN,
            "buffered {} octets",
            reader.buffered()
        );
        while let Some(p) = reader.next_packet() {
            out.push(check_packet(&p));
        }
        if let Err(e) = pushed {
            failed = Some(e);
            break;
        }
    }
    (out, failed)
}

/// Decodes one packet and checks what a decoded response promises the driver.
fn check_packet(p: &Packet) -> Result<Response, ResponseError> {
    assert!(p.payload.len() < MAX_PACKET_LEN, "packet over the maximum");
    let decoded = Response::decode(p);
    let Ok(r) = &decoded else {
        return decoded;
    };
    // Re-encoding gives a packet that decodes to the same response.
    assert_eq!(
        Response::decode(&r.to_packet()).as_ref(),
        Ok(r),
        "re-encoded response differs"
    );
    assert_eq!(r.to_packet().command, p.command);
    match r {
        Response::ReplyCode(rc) => {
            assert!((400..=599).contains(&rc.code()), "code {}", rc.code());
            if let Some(e) = rc.enhanced() {
                assert_eq!(u16::from(e.class), rc.code() / 100, "class mismatch");
            }
            assert!(!rc.text().contains(['\r', '\n']), "line break in text");
            // The SMTP reply built from it is exactly one line.
            let bytes = rc.to_reply().to_bytes();
            assert!(bytes.ends_with(b"\r\n"));
            let body = &bytes[..bytes.len() - 2];
            assert!(
                !body.contains(&b'\r') && !body.contains(&b'\n'),
                "multi-line reply"
            );
            assert!(bytes.starts_with(rc.code().to_string().as_bytes()));
        }
        Response::AddHeader { name, .. }
        | Response::InsertHeader { name, .. }
        | Response::ChangeHeader { name, .. } => {
            assert!(!name.is_empty());
            assert!(name
                .as_bytes()
                .iter()
                .all(|&b| (33..=126).contains(&b) && b != b':'));
        }
        Response::ReplaceBody(b) => assert!(b.len() <= MILTER_CHUNK_SIZE),
        Response::OptNeg(o) => {
            // Negotiation never grants more than tern offers.
            let offer = OptNeg::tern();
            if let Ok(n) = negotiate(&offer, o) {
                assert!(offer.actions.contains(n.actions));
                assert!(offer.protocol.contains(n.protocol));
                assert_eq!(n.actions.union(n.refused_actions), o.actions);
                assert_eq!(n.protocol.union(n.refused_protocol), o.protocol);
                assert!((2..=6).contains(&n.version));
            }
        }
        _ => {}
    }
    decoded
}
