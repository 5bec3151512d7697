//! Client behaviour against scripted servers: greeting, EHLO/HELO, pipelining groups,
//! per-recipient outcomes, TLS/AUTH policy, timeouts (paused clock) and garbage replies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_proto::sasl::Credentials;

use crate::envelope::Envelope;
use crate::error::{ClientError, Stage};
use crate::outcome::{Outcome, OutcomeClass};
use crate::scripted::{session, spawn, Step::*};
use crate::transcript::Direction;

const MSG: &[u8] = b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n";

fn env(rcpts: &[&str]) -> Envelope {
    Envelope::parse("from@a.test", rcpts.iter().copied()).unwrap()
}

fn creds() -> Credentials {
    Credentials {
        authzid: None,
        username: "user".into(),
        password: "s3cret".into(),
    }
}

#[tokio::test]
async fn pipelined_group_with_one_rejected_recipient() {
    // The server reads the whole group before replying: a lock-step client would deadlock here.
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send("250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"),
        Expect("MAIL FROM:<from@a.test> SIZE="),
        Expect("RCPT TO:<a@b.test>"),
        Expect("RCPT TO:<bad@b.test>"),
        Expect("RCPT TO:<c@b.test>"),
        Expect("DATA"),
        Send(
            "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n",
        ),
        Data,
        Send("250 2.0.0 queued as X1\r\n"),
        Expect("QUIT"),
        Send("221 bye\r\n"),
    ]);
    let mut s = session(io);
    let run = async {
        s.banner().await.unwrap();
        assert!(s.ehlo().await.unwrap().pipelining);
        let d = s
            .send_message(&env(&["a@b.test", "bad@b.test", "c@b.test"]), MSG)
            .await;
        s.quit().await.unwrap();
        d
    };
    let d = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("client did not pipeline");
    let rec = server.await.unwrap();
    assert_eq!(rec.messages, vec![MSG.to_vec()]);
    assert_eq!(
        rec.lines[1],
        format!("MAIL FROM:<from@a.test> SIZE={}", MSG.len())
    );
    let classes: Vec<_> = d
        .per_recipient
        .iter()
        .map(|(k, o)| (k.as_str(), o.class()))
        .collect();
    assert_eq!(
        classes,
        [
            ("a@b.test", OutcomeClass::Accepted),
            ("bad@b.test", OutcomeClass::Permanent),
            ("c@b.test", OutcomeClass::Accepted)
        ]
    );
    assert_eq!(
        d.per_recipient[1].1.reply().unwrap().to_string(),
        "550 5.1.1 no such user"
    );
    assert_eq!(d.data_reply.unwrap().text(), "queued as X1");
    assert_eq!(d.per_recipient[0].1.reply().unwrap().code(), 250);
}

#[tokio::test]
async fn helo_fallback_and_lockstep() {
    let (io, server) = spawn(vec![
        Send("220 old.test\r\n"),
        Expect("EHLO"),
        Send("502 what?\r\n"),
        Expect("HELO client.test"),
        Send("250 old.test\r\n"),
        Expect("MAIL FROM:<from@a.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<a@b.test>"),
        Send("452 4.2.2 mailbox full\r\n"),
        Expect("RCPT TO:<c@b.test>"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Send("250 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    let caps = s.ehlo().await.unwrap();
    assert!(!caps.pipelining);
    assert!(!s.is_esmtp());
    let d = s.send_message(&env(&["a@b.test", "c@b.test"]), MSG).await;
    let rec = server.await.unwrap();
    // No ESMTP: the MAIL line carries no parameters.
    assert_eq!(rec.lines[2], "MAIL FROM:<from@a.test>");
    assert_eq!(d.per_recipient[0].1.class(), OutcomeClass::Temporary);
    assert!(d.per_recipient[1].1.is_accepted());
    assert_eq!(d.worst(), OutcomeClass::Temporary);
}

/// Fuzz finding (client_reply): a DATA answered with 250 instead of 354 counted every recipient
/// as delivered although no byte of the message was sent. Now it is a temporary failure, and
/// the session resets instead of sending the body.
#[tokio::test]
async fn data_answered_250_is_no_delivery() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250 mx\r\n"),
        Expect("MAIL"),
        Send("250 ok\r\n"),
        Expect("RCPT"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("250 2.0.0 sure\r\n"),
        Expect("RSET"),
        Send("250 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    let rec = server.await.unwrap();
    assert_eq!(d.per_recipient[0].1.class(), OutcomeClass::Temporary);
    assert_eq!(d.per_recipient[0].1.reply().unwrap().code(), 250);
    assert!(d.data_reply.is_none());
    assert!(rec.messages.is_empty());
    assert!(s.is_usable());
}

#[tokio::test]
async fn mail_rejected_fails_every_recipient_and_resets() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250 PIPELINING\r\n"),
        Expect("MAIL"),
        Expect("RCPT"),
        Expect("RCPT"),
        Expect("DATA"),
        Send("550 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n"),
        Expect("RSET"),
        Send("250 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test", "c@b.test"]), MSG).await;
    server.await.unwrap();
    for (_, o) in &d.per_recipient {
        assert_eq!(o.class(), OutcomeClass::Permanent);
        assert_eq!(o.reply().unwrap().text(), "sender refused");
    }
    assert!(s.is_usable());
}

#[tokio::test]
async fn all_rcpts_rejected_but_data_accepted_sends_lone_dot() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250 PIPELINING\r\n"),
        Expect("MAIL"),
        Expect("RCPT"),
        Expect("DATA"),
        Send("250 ok\r\n550 no\r\n354 go anyway\r\n"),
        Data,
        Send("554 no valid recipients\r\n"),
        Expect("RSET"),
        Send("250 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    let rec = server.await.unwrap();
    assert_eq!(
        rec.messages,
        vec![Vec::<u8>::new()],
        "content must not be sent"
    );
    assert_eq!(d.worst(), OutcomeClass::Permanent);
    assert!(d.data_reply.is_none());
}

#[tokio::test]
async fn data_final_421_is_temporary_and_session_unusable() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250 mx\r\n"),
        Expect("MAIL"),
        Send("250 ok\r\n"),
        Expect("RCPT"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Send("421 4.3.0 shutting down\r\n"),
        Close,
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    server.await.unwrap();
    assert_eq!(d.worst(), OutcomeClass::Temporary);
    assert!(!s.is_usable());
    // A second message on a dead session fails temporarily without touching the stream.
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    assert!(matches!(
        &d.per_recipient[0].1,
        Outcome::TemporaryFailure(crate::Failure::Error(ClientError::Unusable))
    ));
}

#[tokio::test]
async fn two_messages_on_one_connection() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250 mx\r\n"),
        Expect("MAIL FROM:<from@a.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<a@b.test>"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Send("250 first\r\n"),
        Expect("MAIL FROM:<from@a.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<c@b.test>"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Send("250 second\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    assert!(s
        .send_message(&env(&["a@b.test"]), b"one\n")
        .await
        .all_accepted());
    let d = s.send_message(&env(&["c@b.test"]), b"two\n").await;
    assert_eq!(d.data_reply.unwrap().text(), "second");
    let rec = server.await.unwrap();
    assert_eq!(rec.messages, vec![b"one\r\n".to_vec(), b"two\r\n".to_vec()]);
}

#[tokio::test]
async fn size_limit_refused_before_mail() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250 SIZE 10\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    server.await.unwrap();
    assert!(matches!(
        &d.per_recipient[0].1,
        Outcome::PermanentFailure(crate::Failure::Error(ClientError::TooBig { limit: 10, .. }))
    ));
}

#[tokio::test]
async fn eight_bit_and_utf8_need_extensions() {
    let (io, _server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250 mx\r\n"),
        Hang,
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s
        .send_message(&env(&["a@b.test"]), "x\r\n\r\ncaf\u{e9}\r\n".as_bytes())
        .await;
    assert!(matches!(
        &d.per_recipient[0].1,
        Outcome::PermanentFailure(crate::Failure::Error(ClientError::Needs8BitMime))
    ));
    let d = s.send_message(&env(&["jörg@b.test"]), MSG).await;
    assert!(matches!(
        &d.per_recipient[0].1,
        Outcome::PermanentFailure(crate::Failure::Error(ClientError::NeedsSmtpUtf8))
    ));
}

#[tokio::test]
async fn eight_bit_declared_when_offered() {
    let (io, server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"),
        Expect("MAIL FROM:<from@a.test> BODY=8BITMIME SMTPUTF8"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<jörg@b.test>"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Send("250 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s
        .send_message(
            &env(&["jörg@b.test"]),
            "S: caf\u{e9}\r\n\r\nx\r\n".as_bytes(),
        )
        .await;
    assert!(d.all_accepted(), "{d:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn banner_554_quits() {
    let (io, server) = spawn(vec![
        Send("554 5.3.2 go away\r\n"),
        Expect("QUIT"),
        Send("221 bye\r\n"),
    ]);
    let mut s = session(io);
    let e = s.banner().await.unwrap_err();
    assert!(!e.is_temporary());
    assert_eq!(e.to_string(), "greeting rejected: 554 5.3.2 go away");
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn silent_server_times_out_in_each_phase() {
    let (io, _server) = spawn(vec![Hang]);
    let mut s = session(io);
    let e = s.banner().await.unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { stage: Stage::Banner, after } if after == Duration::from_secs(300))
    );
    assert!(e.is_temporary());

    let (io, _server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250 mx\r\n"),
        Expect("MAIL"),
        Send("250 ok\r\n"),
        Expect("RCPT"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Hang,
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let start = tokio::time::Instant::now();
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    assert!(matches!(
        &d.per_recipient[0].1,
        Outcome::TemporaryFailure(crate::Failure::Error(ClientError::Timeout {
            stage: Stage::DataEnd,
            ..
        }))
    ));
    // RFC 5321 4.5.3.2.6: ten minutes for the final reply.
    assert_eq!(start.elapsed().as_secs(), 600);
}

#[tokio::test]
async fn garbage_replies_are_temporary_protocol_errors() {
    for garbage in [
        "HTTP/1.1 400 Bad Request\r\n",
        "250-a\r\n251 b\r\n",
        "99 short\r\n",
    ] {
        let (io, _server) = spawn(vec![Send(garbage), Hang]);
        let mut s = session(io);
        let e = s.banner().await.unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Protocol {
                    stage: Stage::Banner,
                    ..
                }
            ),
            "{garbage}: {e}"
        );
        assert!(e.is_temporary());
        assert!(!s.is_usable());
    }
}

#[tokio::test]
async fn endless_reply_line_is_bounded() {
    let (io, mut server) = tokio::io::duplex(1 << 16);
    let feeder = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let junk = vec![b'2'; 8192];
        for _ in 0..1000 {
            if server.write_all(&junk).await.is_err() {
                return;
            }
        }
    });
    let mut s = session(io);
    let e = s.banner().await.unwrap_err();
    assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
    drop(s);
    feeder.await.unwrap();
}

#[tokio::test]
async fn connection_closed_mid_transaction() {
    let (io, _server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250 mx\r\n"),
        Expect("MAIL"),
        Close,
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test", "c@b.test"]), MSG).await;
    for (_, o) in &d.per_recipient {
        assert_eq!(o.class(), OutcomeClass::Temporary);
    }
}

#[tokio::test]
async fn auth_refused_over_plaintext() {
    let (io, _server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
        Hang,
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    assert!(matches!(
        s.auth(&creds()).await,
        Err(ClientError::PlaintextAuth)
    ));
}

#[tokio::test]
async fn auth_plain_and_login_are_redacted_in_transcript() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    for (mechs, script) in [
        (
            "PLAIN LOGIN",
            vec![
                Expect("AUTH PLAIN AHVzZXIAczNjcmV0"),
                Send("235 2.7.0 ok\r\n"),
            ],
        ),
        (
            "LOGIN",
            vec![
                Expect("AUTH LOGIN"),
                Send("334 VXNlcm5hbWU6\r\n"),
                Expect("dXNlcg=="),
                Send("334 UGFzc3dvcmQ6\r\n"),
                Expect("czNjcmV0"),
                Send("235 2.7.0 ok\r\n"),
            ],
        ),
    ] {
        let ehlo: &'static str =
            Box::leak(format!("250-mx\r\n250 AUTH {mechs}\r\n").into_boxed_str());
        let mut steps = vec![Send("220 mx\r\n"), Expect("EHLO"), Send(ehlo)];
        steps.extend(script);
        let (io, server) = spawn(steps);
        let mut s = session(io);
        s.opts.auth_channel = crate::session::AuthChannel::Any;
        let sink = log.clone();
        s.opts.transcript = Some(Arc::new(move |d: Direction, l: &str| {
            sink.lock().unwrap().push(format!("{d} {l}"));
        }));
        s.banner().await.unwrap();
        s.ehlo().await.unwrap();
        s.auth(&creds()).await.unwrap();
        server.await.unwrap();
    }
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("C: AUTH PLAIN <redacted>"), "{log}");
    assert!(log.contains("C: <redacted>"));
    assert!(log.contains("S: 235 2.7.0 ok"));
    for secret in ["s3cret", "czNjcmV0", "AHVzZXIAczNjcmV0", "dXNlcg=="] {
        assert!(!log.contains(secret), "transcript leaks {secret}: {log}");
    }
}

#[tokio::test]
async fn auth_failure_quotes_reply() {
    let (io, _server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250 AUTH PLAIN\r\n"),
        Expect("AUTH PLAIN"),
        Send("535 5.7.8 bad credentials\r\n"),
        Hang,
    ]);
    let mut s = session(io);
    s.opts.auth_channel = crate::session::AuthChannel::Any;
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let e = s.auth(&creds()).await.unwrap_err();
    assert_eq!(e.to_string(), "AUTH rejected: 535 5.7.8 bad credentials");
    assert!(!e.is_temporary());
}

#[tokio::test]
async fn starttls_refuses_injected_bytes() {
    let (io, _server) = spawn(vec![
        Send("220 mx\r\n"),
        Expect("EHLO"),
        Send("250-mx\r\n250 STARTTLS\r\n"),
        Expect("STARTTLS"),
        Send("220 go ahead\r\n250 injected\r\n"),
        Hang,
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let p = crate::tls::TlsParams::new(
        "mx.test",
        &crate::tls::CertCheck::WebPki {
            extra_roots: Vec::new(),
            unverified: crate::tls::Unverified::Fail,
        },
    )
    .unwrap();
    let e = s.starttls(&p).await.unwrap_err();
    assert!(matches!(e, ClientError::Tls(_)), "{e}");
}

#[test]
fn helo_address_literals() {
    use crate::session::{address_literal, HeloName};
    use std::net::{IpAddr, SocketAddr};
    // RFC 5321 4.1.3.
    assert_eq!(address_literal(IpAddr::from([192, 0, 2, 1])), "[192.0.2.1]");
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(address_literal(v6), "[IPv6:2001:db8::1]");
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    assert_eq!(address_literal(mapped), "[127.0.0.1]");
    let local: SocketAddr = "127.0.0.2:4000".parse().unwrap();
    assert_eq!(HeloName::LocalAddress.text(Some(local)), "[127.0.0.2]");
    assert_eq!(HeloName::LocalAddress.text(None), "[127.0.0.1]");
    assert_eq!(
        HeloName::from("mx.example.test").text(Some(local)),
        "mx.example.test"
    );
}

/// A session in LMTP mode (RFC 2033) over a scripted server.
fn lmtp_session(io: tokio::io::DuplexStream) -> crate::Session<tokio::io::DuplexStream> {
    let mut opts = crate::SessionOptions::new("client.test");
    opts.lmtp = true;
    crate::Session::new(io, opts)
}

#[tokio::test]
async fn lmtp_gives_each_accepted_recipient_its_own_reply_after_the_dot() {
    // RFC 2033 4.2: one reply per successful RCPT, in RCPT order; the recipient refused at
    // RCPT gets none. 250 / 452 / 550 map to delivered / deferred / failed.
    let (io, server) = spawn(vec![
        Send("220 lmtp.test LMTP ready\r\n"),
        Expect("LHLO client.test"),
        Send("250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"),
        Expect("MAIL FROM:<from@a.test>"),
        Expect("RCPT TO:<ok@b.test>"),
        Expect("RCPT TO:<unknown@b.test>"),
        Expect("RCPT TO:<full@b.test>"),
        Expect("RCPT TO:<gone@b.test>"),
        Expect("DATA"),
        Send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n"),
        Data,
        Send("250 2.0.0 <ok@b.test> saved\r\n452 4.2.2 <full@b.test> mailbox full\r\n550 5.2.1 <gone@b.test> disabled\r\n"),
        Expect("RSET"),
        Send("250 2.0.0 ok\r\n"),
        Expect("QUIT"),
        Send("221 bye\r\n"),
    ]);
    let mut s = lmtp_session(io);
    let run = async {
        s.banner().await.unwrap();
        assert!(s.ehlo().await.unwrap().pipelining);
        let d = s
            .send_message(
                &env(&["ok@b.test", "unknown@b.test", "full@b.test", "gone@b.test"]),
                MSG,
            )
            .await;
        // Every reply was read: the connection is in step and can carry the next message.
        assert!(s.is_usable());
        s.rset().await.unwrap();
        s.quit().await.unwrap();
        d
    };
    let d = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("LMTP transaction hung");
    let rec = server.await.unwrap();
    assert_eq!(rec.messages, vec![MSG.to_vec()]);
    let got: Vec<_> = d
        .per_recipient
        .iter()
        .map(|(k, o)| (k.as_str(), o.class(), o.reply().map(|r| r.code())))
        .collect();
    assert_eq!(
        got,
        [
            ("ok@b.test", OutcomeClass::Accepted, Some(250)),
            ("unknown@b.test", OutcomeClass::Permanent, Some(550)),
            ("full@b.test", OutcomeClass::Temporary, Some(452)),
            ("gone@b.test", OutcomeClass::Permanent, Some(550)),
        ]
    );
    assert!(matches!(
        &d.per_recipient[2].1,
        Outcome::TemporaryFailure(crate::Failure::Reply {
            stage: Stage::DataEnd,
            ..
        })
    ));
}

#[tokio::test]
async fn lmtp_lock_step_and_a_lost_connection_defers_the_unanswered() {
    // No PIPELINING: MAIL, RCPT, DATA one at a time. The server answers for the first
    // recipient and closes: the second has no answer and is deferred, never taken as done.
    let (io, server) = spawn(vec![
        Send("220 lmtp.test\r\n"),
        Expect("LHLO client.test"),
        Send("250 lmtp.test\r\n"),
        Expect("MAIL FROM:<from@a.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<a@b.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<c@b.test>"),
        Send("250 ok\r\n"),
        Expect("DATA"),
        Send("354 go\r\n"),
        Data,
        Send("250 2.0.0 <a@b.test> saved\r\n"),
        Close,
    ]);
    let mut s = lmtp_session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test", "c@b.test"]), MSG).await;
    server.await.unwrap();
    let classes: Vec<_> = d.per_recipient.iter().map(|(_, o)| o.class()).collect();
    assert_eq!(classes, [OutcomeClass::Accepted, OutcomeClass::Temporary]);
    assert!(!s.is_usable());
}

#[tokio::test]
async fn lmtp_has_no_helo_fallback() {
    // RFC 2033 4.1: LHLO is the only greeting command; a refusal ends the session.
    let (io, server) = spawn(vec![
        Send("220 lmtp.test\r\n"),
        Expect("LHLO client.test"),
        Send("500 5.5.1 unknown command\r\n"),
        Close,
    ]);
    let mut s = lmtp_session(io);
    s.banner().await.unwrap();
    match s.ehlo().await {
        Err(ClientError::Rejected {
            stage: Stage::Ehlo,
            reply,
        }) => assert_eq!(reply.code(), 500),
        other => panic!("expected the LHLO refusal, got {other:?}"),
    }
    let rec = server.await.unwrap();
    assert_eq!(rec.lines, ["LHLO client.test"]);
}

// ------------------------------------------------------------- CHUNKING / BDAT (RFC 3030)

/// A transcript hook collecting `C: ...` / `S: ...` lines.
fn transcript(s: &mut crate::Session<tokio::io::DuplexStream>) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    s.opts.transcript = Some(Arc::new(move |d: Direction, l: &str| {
        sink.lock().unwrap().push(format!("{d} {l}"));
    }));
    log
}

/// The chunk lines a message of `len` octets is sent in (1 MiB chunks, then LAST).
fn bdat_lines(len: usize) -> Vec<String> {
    let mb = crate::transaction::BDAT_CHUNK;
    let mut lines = vec![format!("BDAT {mb}"); len / mb];
    lines.push(format!("BDAT {} LAST", len % mb));
    lines
}

/// A message of lines that all start with a dot (a lone dot among them), `lines` of them.
fn dotted_message(lines: usize) -> Vec<u8> {
    let mut m = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..lines {
        if i % 997 == 0 {
            m.extend_from_slice(b".\r\n");
        } else {
            m.extend_from_slice(format!(".{i:08} {}\r\n", "x".repeat(88)).as_bytes());
        }
    }
    m
}

const CHUNKING_EHLO: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 100000000\r\n250 CHUNKING\r\n";

#[tokio::test]
async fn chunking_small_message_is_one_bdat_last_pipelined() {
    // One write for MAIL, RCPT and the chunk: the server reads all before replying.
    let msg = "Subject: caf\u{e9}\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n".as_bytes();
    let last: &'static str = Box::leak(format!("BDAT {} LAST", msg.len()).into_boxed_str());
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send(CHUNKING_EHLO),
        Expect("MAIL FROM:<from@a.test> SIZE="),
        Expect("RCPT TO:<a@b.test>"),
        Chunk,
        Send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued as C1\r\n"),
        Expect("QUIT"),
        Send("221 bye\r\n"),
    ]);
    let mut s = session(io);
    let log = transcript(&mut s);
    let run = async {
        s.banner().await.unwrap();
        assert!(s.ehlo().await.unwrap().chunking);
        let d = s.send_message(&env(&["a@b.test"]), msg).await;
        assert!(s.is_usable());
        s.quit().await.unwrap();
        d
    };
    let d = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("client did not pipeline the BDAT");
    let rec = server.await.unwrap();
    assert_eq!(
        rec.messages,
        vec![msg.to_vec()],
        "no dot-stuffing, no final dot"
    );
    assert!(rec.lines[1].contains(" BODY=8BITMIME"), "{:?}", rec.lines);
    assert_eq!(rec.lines[3], last);
    assert!(d.all_accepted(), "{d:?}");
    assert_eq!(d.data_reply.unwrap().text(), "queued as C1");
    let log = log.lock().unwrap();
    assert!(log.contains(&format!("C: {last}")), "{log:?}");
    assert!(
        !log.iter().any(|l| l == "C: DATA" || l == "C: ."),
        "{log:?}"
    );
}

#[tokio::test]
async fn chunking_3mib_message_in_1mib_chunks_byte_exact() {
    // Lock-step (no PIPELINING): MAIL, RCPT, then each chunk after the previous reply.
    let msg = dotted_message(32_000);
    assert!(msg.len() > 3 << 20 && msg.len() < 4 << 20);
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send("250-mx.test\r\n250 CHUNKING\r\n"),
        Expect("MAIL FROM:<from@a.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<a@b.test>"),
        Send("250 ok\r\n"),
        Expect("RCPT TO:<c@b.test>"),
        Send("250 ok\r\n"),
        Chunk,
        Send("250 2.0.0 1048576 octets\r\n"),
        Chunk,
        Send("250 2.0.0 1048576 octets\r\n"),
        Chunk,
        Send("250 2.0.0 1048576 octets\r\n"),
        Chunk,
        Send("250 2.0.0 queued as BIG\r\n"),
    ]);
    let mut s = session(io);
    let log = transcript(&mut s);
    let progress = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let p = progress.clone();
    s.set_progress(Some(Box::new(move |a, b| p.lock().unwrap().push((a, b)))));
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test", "c@b.test"]), &msg).await;
    let rec = server.await.unwrap();
    assert!(d.all_accepted(), "{d:?}");
    assert_eq!(rec.messages.len(), 1);
    assert!(
        rec.messages[0] == msg,
        "reassembled chunks differ from the message"
    );
    assert_eq!(rec.lines[4..], bdat_lines(msg.len())[..]);
    // With BDAT every accepted recipient gets the LAST reply.
    for (_, o) in &d.per_recipient {
        assert_eq!(o.reply().unwrap().text(), "queued as BIG");
    }
    let log = log.lock().unwrap();
    let sent: Vec<_> = log.iter().filter(|l| l.starts_with("C: BDAT")).collect();
    assert_eq!(sent.len(), 4, "{log:?}");
    let progress = progress.lock().unwrap();
    // One report per 64 KiB write, as with DATA, rising to the total.
    assert!(
        progress.len() >= msg.len() / crate::CHUNK,
        "{}",
        progress.len()
    );
    assert!(progress.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(progress.last(), Some(&(msg.len() as u64, msg.len() as u64)));
}

#[tokio::test]
async fn chunking_size_multiple_of_chunk_and_empty_end_with_bdat_0_last() {
    // Exactly 2 MiB: two full chunks, then `BDAT 0 LAST`; an empty message is `BDAT 0 LAST`.
    let mut msg = Vec::new();
    while msg.len() < 2 << 20 {
        msg.extend_from_slice(format!(".{:061}\r\n", msg.len()).as_bytes());
    }
    assert_eq!(msg.len(), 2 << 20);
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send(CHUNKING_EHLO),
        Expect("MAIL"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n250 ok\r\n250 2.0.0 first\r\n"),
        Chunk,
        Send("250 2.0.0 second\r\n"),
        Chunk,
        Send("250 2.0.0 queued as M2\r\n"),
        Expect("MAIL"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n250 ok\r\n250 2.0.0 queued as E0\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test"]), &msg).await;
    assert!(d.all_accepted(), "{d:?}");
    let d = s.send_message(&env(&["a@b.test"]), b"").await;
    assert!(d.all_accepted(), "{d:?}");
    assert_eq!(d.data_reply.unwrap().text(), "queued as E0");
    let rec = server.await.unwrap();
    let chunks: Vec<_> = rec.lines.iter().filter(|l| l.starts_with("BDAT")).collect();
    assert_eq!(
        chunks,
        ["BDAT 1048576", "BDAT 1048576", "BDAT 0 LAST", "BDAT 0 LAST"]
    );
    assert!(rec.messages[0] == msg);
    assert!(rec.messages[1].is_empty());
}

#[tokio::test]
async fn chunking_5xx_to_a_middle_chunk_ends_the_transaction() {
    let msg = dotted_message(32_000);
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send(CHUNKING_EHLO),
        Expect("MAIL"),
        Expect("RCPT"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 1048576 octets\r\n"),
        Chunk,
        Send("552 5.3.4 message too big for policy\r\n"),
        // No further chunk: RSET comes next.
        Expect("RSET"),
        Send("250 2.0.0 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s
        .send_message(&env(&["a@b.test", "bad@b.test"]), &msg)
        .await;
    let rec = server.await.unwrap();
    assert!(s.is_usable());
    assert!(d.data_reply.is_none());
    assert!(rec.messages.is_empty());
    let got: Vec<_> = d
        .per_recipient
        .iter()
        .map(|(_, o)| (o.class(), o.reply().map(|r| r.code())))
        .collect();
    assert_eq!(
        got,
        [
            (OutcomeClass::Permanent, Some(552)),
            (OutcomeClass::Permanent, Some(550))
        ]
    );
    assert!(matches!(
        &d.per_recipient[0].1,
        Outcome::PermanentFailure(crate::Failure::Reply {
            stage: Stage::DataBody,
            ..
        })
    ));
}

#[tokio::test]
async fn chunking_4xx_to_last_defers_every_accepted_recipient() {
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send(CHUNKING_EHLO),
        Expect("MAIL"),
        Expect("RCPT"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n250 ok\r\n250 ok\r\n452 4.3.1 insufficient storage\r\n"),
        Expect("RSET"),
        Send("250 2.0.0 ok\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test", "c@b.test"]), MSG).await;
    let rec = server.await.unwrap();
    assert_eq!(rec.messages, vec![MSG.to_vec()]);
    assert_eq!(d.data_reply.as_ref().map(|r| r.code()), Some(452));
    for (_, o) in &d.per_recipient {
        assert!(matches!(
            o,
            Outcome::TemporaryFailure(crate::Failure::Reply {
                stage: Stage::DataEnd,
                ..
            })
        ));
        assert_eq!(o.reply().unwrap().text(), "insufficient storage");
    }
    assert!(s.is_usable());
}

#[tokio::test]
async fn chunking_every_rcpt_rejected_and_bare_lf_made_crlf() {
    // Pipelined: the first chunk went with the RCPTs; no recipient, so the server's 554 to
    // BDAT is no outcome of its own, and RSET cleans up. Then a message with bare LFs and no
    // final line end goes as CRLF text, exactly as DATA would send it (without the stuffing).
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send(CHUNKING_EHLO),
        Expect("MAIL"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"),
        Expect("RSET"),
        Send("250 ok\r\n"),
        Expect("MAIL"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n250 ok\r\n250 2.0.0 queued\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    assert_eq!(d.worst(), OutcomeClass::Permanent);
    assert_eq!(d.per_recipient[0].1.reply().unwrap().code(), 550);
    assert!(d.data_reply.is_none());
    assert!(s.is_usable());
    let d = s
        .send_message(&env(&["a@b.test"]), b"Subject: x\n\n.a\nb\rc")
        .await;
    assert!(d.all_accepted(), "{d:?}");
    let rec = server.await.unwrap();
    assert_eq!(rec.lines.last().unwrap(), "BDAT 24 LAST");
    assert_eq!(rec.messages[1], b"Subject: x\r\n\r\n.a\r\nb\r\nc\r\n");
}

#[tokio::test]
async fn no_chunking_still_gets_data() {
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send("250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        Expect("MAIL"),
        Expect("RCPT"),
        Expect("DATA"),
        Send("250 ok\r\n250 ok\r\n354 go\r\n"),
        Data,
        Send("250 2.0.0 queued\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    assert!(!s.ehlo().await.unwrap().chunking);
    let d = s.send_message(&env(&["a@b.test"]), MSG).await;
    assert!(d.all_accepted());
    let rec = server.await.unwrap();
    assert_eq!(rec.messages, vec![MSG.to_vec()]);
    assert!(!rec.lines.iter().any(|l| l.starts_with("BDAT")));
}

/// A [`crate::BodySource`] handing out pieces of `size` octets (not dividing 1 MiB).
struct Pieces {
    data: Vec<u8>,
    at: usize,
    size: usize,
}

impl crate::BodySource for Pieces {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.at >= self.data.len() {
            return Ok(None);
        }
        let end = (self.at + self.size).min(self.data.len());
        let piece = self.data[self.at..end].to_vec();
        self.at = end;
        Ok(Some(piece))
    }
}

#[tokio::test]
async fn chunking_pieces_not_aligned_with_chunks_reassemble_exactly() {
    let msg = dotted_message(12_000);
    let (io, server) = spawn(vec![
        Send("220 mx.test ESMTP\r\n"),
        Expect("EHLO client.test"),
        Send(CHUNKING_EHLO),
        Expect("MAIL"),
        Expect("RCPT"),
        Chunk,
        Send("250 ok\r\n250 ok\r\n250 2.0.0 1048576 octets\r\n"),
        Chunk,
        Send("250 2.0.0 queued\r\n"),
    ]);
    let mut s = session(io);
    s.banner().await.unwrap();
    s.ehlo().await.unwrap();
    let traits = crate::MessageTraits::scan(&msg);
    let mut body = Pieces {
        data: msg.clone(),
        at: 0,
        size: 65_521,
    };
    let d = s
        .send_message_from(&env(&["a@b.test"]), traits, &mut body)
        .await;
    assert!(d.all_accepted(), "{d:?}");
    let rec = server.await.unwrap();
    assert_eq!(rec.lines[3..], bdat_lines(msg.len())[..]);
    assert!(rec.messages[0] == msg);
}
