//! Property tests: whatever bytes and reply shapes, the client's framing round-trips through the
//! server side's decoder (tern-proto `DataDecoder`) and its reply parser.

use proptest::prelude::*;
use tern_proto::{BareLineEndings, DataDecoder, DataProgress, DotStuffer, Reply, ReplyParser};

use crate::envelope::Envelope;
use crate::scripted::{session, spawn, Step::*};

/// What the message becomes on the wire and back: every line ending is CRLF, a final line
/// break is added if missing (RFC 5321 4.1.1.4: the data ends with CRLF . CRLF).
fn normalized(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < msg.len() {
        match msg[i] {
            b'\r' if msg.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn message_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Biased toward the bytes that matter for transparency.
    let byte = prop_oneof![
        Just(b'.'),
        Just(b'\r'),
        Just(b'\n'),
        any::<u8>(),
        Just(b'a')
    ];
    prop::collection::vec(byte, 0..2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn stuffer_round_trips_through_server_decoder(msg in message_bytes(), split in 1usize..97) {
        let wire = DotStuffer::encode(&msg);
        let mut dec = DataDecoder::new(1 << 20, BareLineEndings::Reject);
        let mut out = Vec::new();
        let mut done = None;
        let mut offset = 0;
        for chunk in wire.chunks(split) {
            if let DataProgress::Done { consumed } = dec.feed(chunk, &mut out) {
                done = Some(offset + consumed);
                break;
            }
            offset += chunk.len();
        }
        prop_assert_eq!(done, Some(wire.len()), "end marker must be the last bytes, never earlier");
        prop_assert_eq!(dec.verdict(), Ok(()));
        prop_assert_eq!(out, normalized(&msg));
    }

    #[test]
    fn replies_parse_back_at_any_split(
        code in 200u16..600,
        lines in prop::collection::vec("[ -~]{0,40}", 1..6),
        split in 1usize..30,
    ) {
        let reply = Reply::with_lines(code, None, lines.clone());
        let bytes = reply.to_bytes();
        let mut p = ReplyParser::new();
        let mut got = None;
        for chunk in bytes.chunks(split) {
            p.push(chunk).unwrap();
            if let Some(r) = p.next_reply().unwrap() {
                got = Some(r);
            }
        }
        let got = got.expect("complete reply");
        prop_assert_eq!(got.code(), code);
        // An enhanced code at the start of the text may be lifted out; the text survives.
        prop_assert_eq!(got.lines().len(), lines.len());
    }

    #[test]
    fn session_delivers_any_message_byte_exact(msg in message_bytes()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let received = rt.block_on(async {
            let (io, server) = spawn(vec![
                Send("220 mx\r\n"), Expect("EHLO"), Send("250-mx\r\n250-8BITMIME\r\n250 PIPELINING\r\n"),
                Expect("MAIL"), Expect("RCPT"), Expect("DATA"),
                Send("250 ok\r\n250 ok\r\n354 go\r\n"), Data, Send("250 ok\r\n"),
            ]);
            let mut s = session(io);
            s.banner().await.unwrap();
            s.ehlo().await.unwrap();
            let env = Envelope::parse("a@b.test", ["c@d.test"]).unwrap();
            let d = s.send_message(&env, &msg).await;
            assert!(d.all_accepted(), "{d:?}");
            server.await.unwrap().messages.remove(0)
        });
        prop_assert_eq!(received, normalized(&msg));
    }
}
