use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::negotiate::{Actions, ProtocolFlags};
use crate::packet::Packet;

/// The milter's end of an in-memory connection, answering with the packets a test scripts.
struct Peer {
    io: DuplexStream,
    reader: PacketReader,
}

impl Peer {
    async fn next(&mut self) -> Command {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(p) = self.reader.next_packet() {
                return Command::decode(&p).expect("tern sends valid commands");
            }
            let n = self.io.read(&mut buf).await.expect("read");
            assert!(n > 0, "tern closed");
            self.reader.push(&buf[..n]).expect("framing");
        }
    }
    async fn send(&mut self, r: Response) {
        self.io.write_all(&r.to_bytes()).await.expect("write");
    }
    async fn raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }
}

fn answer(actions: Actions, protocol: ProtocolFlags) -> Response {
    Response::OptNeg(OptNeg {
        version: 6,
        actions,
        protocol,
    })
}

/// A negotiated connection with the milter answering `actions` / `protocol`.
async fn pair(actions: Actions, protocol: ProtocolFlags) -> (MilterConn, Peer) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut peer = Peer {
        io: theirs,
        reader: PacketReader::new(),
    };
    let conn = MilterConn::negotiate(Box::new(ours), Duration::from_secs(5));
    let script = async {
        assert!(matches!(peer.next().await, Command::OptNeg(_)));
        peer.send(answer(actions, protocol)).await;
        peer
    };
    let (conn, peer) = tokio::join!(conn, script);
    (conn.expect("negotiated"), peer)
}

fn nf(s: &str) -> NulFree {
    NulFree::new(s.as_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_step_gets_its_verdict_and_macros_go_first() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let macros = vec![MacroDef {
        name: nf("{rcpt_addr}"),
        value: nf("a@b.test"),
    }];
    let step = conn.step(
        Step::Rcpt,
        Some((MacroStage::Rcpt, macros)),
        Command::Rcpt {
            recipient: nf("<a@b.test>"),
            args: vec![],
        },
        None,
    );
    let script = async {
        assert!(matches!(
            peer.next().await,
            Command::Macro {
                stage: MacroStage::Rcpt,
                ..
            }
        ));
        assert!(matches!(peer.next().await, Command::Rcpt { .. }));
        peer.send(Response::Reject).await;
    };
    let (verdict, ()) = tokio::join!(step, script);
    assert_eq!(verdict.unwrap(), Verdict::Reject);
}

#[tokio::test]
async fn steps_the_milter_skips_or_does_not_answer_do_not_wait() {
    let flags = ProtocolFlags::NO_HELO.union(ProtocolFlags::NR_MAIL);
    let (mut conn, mut peer) = pair(Actions::ALL, flags).await;
    // Not sent at all, not answered: both return at once with nobody answering.
    let helo = conn
        .step(Step::Helo, None, Command::Helo(nf("x")), None)
        .await;
    assert_eq!(helo.unwrap(), Verdict::Continue);
    let mail = conn
        .step(
            Step::Mail,
            None,
            Command::Mail {
                sender: nf("<>"),
                args: vec![],
            },
            None,
        )
        .await;
    assert_eq!(mail.unwrap(), Verdict::Continue);
    // Only MAIL went out.
    assert!(matches!(peer.next().await, Command::Mail { .. }));
}

#[tokio::test(start_paused = true)]
async fn progress_restarts_the_timeout_but_silence_ends_it() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let step = conn.step(Step::Data, None, Command::Data, None);
    let script = async {
        peer.next().await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            peer.send(Response::Progress).await;
        }
        peer.send(Response::Continue).await;
        peer
    };
    let (verdict, mut peer) = tokio::join!(step, script);
    assert_eq!(
        verdict.unwrap(),
        Verdict::Continue,
        "12 s of progress within 5 s timeouts"
    );
    let step = conn.step(Step::Data, None, Command::Data, None);
    let script = async { peer.next().await };
    let (verdict, _) = tokio::join!(step, script);
    assert!(
        matches!(verdict, Err(MilterError::Timeout("data"))),
        "{verdict:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn progress_never_passes_the_whole_message_deadline() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let deadline = Instant::now() + Duration::from_secs(7);
    let eom = conn.end_of_message(None, deadline, 1000);
    let script = async {
        peer.next().await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            peer.send(Response::Progress).await;
        }
    };
    let (r, ()) = tokio::join!(eom, script);
    assert!(matches!(r, Err(MilterError::Timeout(_))), "{r:?}");
}

#[tokio::test]
async fn end_of_message_collects_modifications_in_order() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let eom = conn.end_of_message(None, Instant::now() + Duration::from_secs(5), 100);
    let script = async {
        assert!(matches!(peer.next().await, Command::EndOfMessage));
        peer.send(Response::AddHeader {
            name: nf("X-Spam"),
            value: nf("yes"),
        })
        .await;
        peer.send(Response::ReplaceBody(b"new ".to_vec())).await;
        peer.send(Response::DeleteRcpt(nf("<a@b.test>"))).await;
        peer.send(Response::ReplaceBody(b"body\r\n".to_vec())).await;
        peer.send(Response::Quarantine(nf("suspicious"))).await;
        peer.send(Response::Continue).await;
    };
    let (r, ()) = tokio::join!(eom, script);
    let r = r.unwrap();
    assert_eq!(r.verdict, Verdict::Accept);
    assert_eq!(r.quarantine.as_deref(), Some("suspicious"));
    assert_eq!(
        r.modifications,
        vec![
            Modification::AddHeader {
                name: nf("X-Spam"),
                value: nf("yes")
            },
            Modification::DeleteRcpt(nf("<a@b.test>")),
            Modification::ReplaceBody(b"new body\r\n".to_vec()),
        ]
    );
}

#[tokio::test]
async fn a_modification_not_negotiated_or_too_big_is_an_error() {
    let (mut conn, mut peer) = pair(Actions::ADD_HEADERS, ProtocolFlags::from_bits(0)).await;
    let eom = conn.end_of_message(None, Instant::now() + Duration::from_secs(5), 100);
    let script = async {
        peer.next().await;
        peer.send(Response::AddHeader {
            name: nf("X-Ok"),
            value: nf("1"),
        })
        .await;
        peer.send(Response::DeleteRcpt(nf("<a@b.test>"))).await;
    };
    let (r, ()) = tokio::join!(eom, script);
    assert!(matches!(r, Err(MilterError::Protocol(_))), "{r:?}");

    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let eom = conn.end_of_message(None, Instant::now() + Duration::from_secs(5), 10);
    let script = async {
        peer.next().await;
        peer.send(Response::ReplaceBody(vec![b'x'; 11])).await;
    };
    let (r, ()) = tokio::join!(eom, script);
    assert!(matches!(r, Err(MilterError::Protocol(_))), "{r:?}");
}

#[tokio::test]
async fn a_flood_of_changes_is_cut_off_at_the_bound() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let eom = conn.end_of_message(None, Instant::now() + Duration::from_secs(30), 0);
    let script = async {
        peer.next().await;
        // 1 MiB of changes is the allowance over a message limit of 0; each add is ~1 KiB.
        for _ in 0..2000 {
            let value = nf(&"v".repeat(1000));
            let r = Response::AddHeader {
                name: nf("X-Flood"),
                value,
            };
            if peer.io.write_all(&r.to_bytes()).await.is_err() {
                break;
            }
        }
    };
    let (r, ()) = tokio::join!(eom, script);
    assert!(
        matches!(&r, Err(MilterError::Protocol(m)) if m.contains("larger")),
        "{r:?}"
    );
}

#[tokio::test]
async fn garbage_and_a_close_are_errors() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let step = conn.step(Step::Data, None, Command::Data, None);
    let script = async {
        peer.next().await;
        // An unknown response octet.
        let mut bytes = Vec::new();
        Packet::new(b'Z', vec![]).write_to(&mut bytes).unwrap();
        peer.raw(&bytes).await;
        peer
    };
    let (r, mut peer) = tokio::join!(step, script);
    assert!(matches!(r, Err(MilterError::Protocol(_))), "{r:?}");

    // A length beyond any packet tern accepts.
    let step = conn.step(Step::Data, None, Command::Data, None);
    let script = async {
        peer.next().await;
        peer.raw(&[0xff, 0xff, 0xff, 0xff, b'c']).await;
        peer
    };
    let (r, peer) = tokio::join!(step, script);
    assert!(matches!(r, Err(MilterError::Protocol(_))), "{r:?}");
    drop(peer);

    let (mut conn, peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    drop(peer);
    let r = conn.step(Step::Data, None, Command::Data, None).await;
    assert!(
        matches!(r, Err(MilterError::Closed(_) | MilterError::Io(_))),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_step_answer_that_belongs_elsewhere_is_an_error() {
    let (mut conn, mut peer) = pair(Actions::ALL, ProtocolFlags::from_bits(0)).await;
    let step = conn.step(Step::Rcpt, None, Command::Data, None);
    let script = async {
        peer.next().await;
        peer.send(Response::AddHeader {
            name: nf("X"),
            value: nf("y"),
        })
        .await;
    };
    let (r, ()) = tokio::join!(step, script);
    assert!(matches!(r, Err(MilterError::Protocol(_))), "{r:?}");
}
