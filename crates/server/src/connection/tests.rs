//! Connection tests: bytes in, effects out, without sockets. The protocol's replies are covered
//! by the transcripts (testdata/transcripts); these check the batching and the effects.

use std::sync::Arc;

use tern_config::Config;

use super::*;
use crate::session::{ConnInfo, ListenerKind};

const USERS: &str = "[[users]]\nname = \"alice@tern.test\"\n\
    password = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"\n";

fn connection(toml: &str, kind: ListenerKind, tls_available: bool) -> Connection {
    let text = format!("hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n{toml}");
    let cfg = Arc::new(Config::from_toml_str(&text, std::path::Path::new("t.toml")).unwrap());
    Connection::new(Session::new(
        cfg,
        ConnInfo {
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            kind,
            tls: None,
            tls_available,
        },
    ))
}

fn smtp() -> Connection {
    connection("", ListenerKind::Smtp, false)
}

fn write(effect: Option<Effect>) -> String {
    match effect {
        Some(Effect::Write(bytes)) => String::from_utf8(bytes).unwrap(),
        other => panic!("expected a write, got {other:?}"),
    }
}

fn replies(s: &str) -> Vec<&str> {
    s.split_terminator("\r\n").collect()
}

#[test]
fn pipelined_replies_go_out_in_one_write() {
    let mut c = smtp();
    assert_eq!(c.greeting(), b"220 mx.tern.test ESMTP tern\r\n");
    c.feed(b"HELO a\r\nNOOP\r\nRSET\r\nNO");
    assert_eq!(
        replies(&write(c.poll())),
        ["250 mx.tern.test", "250 2.0.0 OK", "250 2.0.0 OK"]
    );
    assert!(c.poll().is_none());
    assert_eq!(c.wants().map(|w| w.deadline()), Some(Deadline::Command));
    c.feed(b"OP\r\n");
    assert_eq!(write(c.poll()), "250 2.0.0 OK\r\n");
}

#[test]
fn a_partial_line_keeps_its_deadline_a_new_line_gets_a_new_one() {
    let mut c = smtp();
    assert!(c.poll().is_none());
    let first = c.wants();
    c.feed(b"NO");
    assert!(c.poll().is_none());
    assert_eq!(c.wants(), first, "the same line is still being waited for");
    c.feed(b"OP\r\n");
    write(c.poll());
    assert!(c.poll().is_none());
    assert_ne!(c.wants(), first);
}

#[test]
fn data_354_alone_then_store_then_the_sessions_reply() {
    let mut c = smtp();
    c.feed(b"HELO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\nSubject: s\r\n");
    // The 354 goes out with the replies before it, and before any data is read.
    let first = write(c.poll());
    assert_eq!(replies(&first).len(), 4);
    assert!(first.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
    assert!(c.poll().is_none());
    assert_eq!(c.wants().map(|w| w.deadline()), Some(Deadline::Data));
    c.feed(b"\r\nbody\r\n.\r\nNOOP\r\n");
    let Some(Effect::Store(acc, body, ticket)) = c.poll() else {
        panic!("no store")
    };
    let DataBody::Memory(body) = body else {
        panic!("a small message is kept in memory")
    };
    assert_eq!(body, b"Subject: s\r\n\r\nbody\r\n");
    assert!(
        c.poll().is_none(),
        "nothing happens until the store answered"
    );
    assert!(c.wants().is_none());
    c.stored(ticket, Ok(()));
    assert_eq!(
        replies(&write(c.poll())),
        [
            format!("250 2.0.0 OK: queued as {}", acc.id).as_str(),
            "250 2.0.0 OK"
        ]
    );
    assert_eq!((c.accepted(), c.rejected()), (1, 0));
}

#[test]
fn store_errors_choose_the_reply() {
    for (err, want) in [
        (
            StoreError::StorageFull("ENOSPC".into()),
            "452 4.3.1 Insufficient system storage, try again later\r\n",
        ),
        (
            StoreError::Temporary("EIO".into()),
            "451 4.3.0 Local error in processing, try again later\r\n",
        ),
        (
            StoreError::Permanent("never".into()),
            "554 5.3.0 Message cannot be stored, do not retry\r\n",
        ),
    ] {
        let mut c = smtp();
        c.feed(b"HELO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\n.\r\n");
        write(c.poll());
        let Some(Effect::Store(_, _, ticket)) = c.poll() else {
            panic!("no store")
        };
        c.stored(ticket, Err(err.into()));
        assert_eq!(write(c.poll()), want);
        assert_eq!((c.accepted(), c.rejected()), (0, 1));
        // The transaction is over either way.
        c.feed(b"RCPT TO:<x@tern.test>\r\n");
        assert!(write(c.poll()).starts_with("503 "));
    }
}

#[test]
fn a_refused_message_needs_no_store() {
    let mut c = connection(
        "[smtp]\nbare_line_endings = \"reject\"\n",
        ListenerKind::Smtp,
        false,
    );
    c.feed(b"HELO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\nbare\nlf\r\n.\r\n");
    assert!(write(c.poll()).ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
    assert!(write(c.poll()).starts_with("554 5.6.0 "));
    assert_eq!((c.accepted(), c.rejected()), (0, 1));
}

#[test]
fn starttls_discards_what_was_pipelined_behind_it() {
    let mut c = connection("", ListenerKind::Smtp, true);
    c.feed(b"EHLO a\r\nSTARTTLS\r\nMAIL FROM:<evil@b.test>\r\n");
    let first = write(c.poll());
    assert!(
        first.ends_with("220 2.0.0 Ready to start TLS\r\n"),
        "{first}"
    );
    let Some(Effect::StartTls(ticket)) = c.poll() else {
        panic!("no STARTTLS")
    };
    // Plaintext arriving during the handshake is never executed either (CVE-2011-0411).
    c.feed(b"RCPT TO:<x@tern.test>\r\n");
    c.tls_established(ticket, "TLSv1.3 TLS13_AES_128_GCM_SHA256".into());
    assert!(c.poll().is_none(), "pipelined plaintext was executed");
    c.feed(b"MAIL FROM:<a@b.test>\r\n");
    // The session started over: HELO/EHLO is needed again (RFC 3207 4.2).
    assert_eq!(write(c.poll()), "503 5.5.1 Send HELO/EHLO first\r\n");
}

#[test]
fn replies_before_a_password_check_go_out_first() {
    let mut c = connection(
        &format!("[submission]\nrequire_tls_for_auth = false\n{USERS}"),
        ListenerKind::Submission,
        false,
    );
    c.feed(b"EHLO a\r\nAUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==\r\nNOOP\r\n");
    assert!(write(c.poll()).contains("AUTH PLAIN LOGIN"));
    let Some(Effect::Verify(creds, ticket)) = c.poll() else {
        panic!("no verify")
    };
    assert_eq!(creds.password, "pw");
    assert!(c.poll().is_none());
    c.auth_verified(ticket, Some("alice@tern.test".into()));
    assert_eq!(
        replies(&write(c.poll())),
        ["235 2.7.0 Authentication successful", "250 2.0.0 OK"]
    );
}

#[test]
fn shutdown_abandons_an_outstanding_check() {
    let mut c = connection(
        &format!("[submission]\nrequire_tls_for_auth = false\n{USERS}"),
        ListenerKind::Submission,
        false,
    );
    c.feed(b"EHLO a\r\nAUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==\r\n");
    write(c.poll());
    let Some(Effect::Verify(_, ticket)) = c.poll() else {
        panic!("no verify")
    };
    c.shutdown();
    let Some(Effect::Close(bytes, CloseReason::Shutdown)) = c.poll() else {
        panic!("no close")
    };
    assert_eq!(bytes, b"421 4.3.2 mx.tern.test Service shutting down\r\n");
    // A late answer changes nothing.
    c.auth_verified(ticket, Some("alice@tern.test".into()));
    assert!(c.poll().is_none() && c.wants().is_none());
}

#[test]
fn quit_and_timeout_close_with_their_reply() {
    let mut c = smtp();
    c.feed(b"NOOP\r\nQUIT\r\nNOOP\r\n");
    let Some(Effect::Close(bytes, CloseReason::Quit)) = c.poll() else {
        panic!("no close")
    };
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "250 2.0.0 OK\r\n221 2.0.0 mx.tern.test closing connection\r\n"
    );
    assert!(c.poll().is_none());

    let mut c = smtp();
    c.feed(b"MAIL");
    assert!(c.poll().is_none());
    c.timeout();
    let Some(Effect::Close(bytes, CloseReason::Timeout)) = c.poll() else {
        panic!("no close")
    };
    assert!(bytes.starts_with(b"421 4.4.2 "), "{bytes:?}");
}

#[test]
fn a_busy_check_is_answered_454_and_the_session_goes_on() {
    let mut c = connection(
        &format!("[submission]\nrequire_tls_for_auth = false\n{USERS}"),
        ListenerKind::Submission,
        false,
    );
    c.feed(b"EHLO a\r\nAUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==\r\nNOOP\r\n");
    write(c.poll());
    let Some(Effect::Verify(_, ticket)) = c.poll() else {
        panic!("no verify")
    };
    c.auth_busy(ticket);
    assert_eq!(
        replies(&write(c.poll())),
        [
            "454 4.7.0 Too many authentications in progress, try again later",
            "250 2.0.0 OK"
        ]
    );
}

#[test]
fn the_session_time_limit_closes_with_421() {
    let mut c = smtp();
    c.feed(b"MAIL");
    assert!(c.poll().is_none());
    c.session_expired();
    let Some(Effect::Close(bytes, CloseReason::Timeout)) = c.poll() else {
        panic!("no close")
    };
    assert_eq!(
        bytes,
        b"421 4.4.2 mx.tern.test Session time limit exceeded, closing connection\r\n"
    );
}

/// Runs the effects until the connection waits, keeping what a driver would put in the spool
/// file; returns the writes and, if a store came, the stored body.
fn drive(c: &mut Connection, file: &mut Vec<u8>, spooled: &mut bool) -> (String, Option<Vec<u8>>) {
    let mut out = String::new();
    let mut stored = None;
    while let Some(effect) = c.poll() {
        match effect {
            Effect::Write(b) => out.push_str(&String::from_utf8(b).unwrap()),
            Effect::Spool(SpoolOp::Append(b)) => {
                *spooled = true;
                file.extend_from_slice(&b);
            }
            Effect::Spool(SpoolOp::Discard) => {
                assert!(*spooled);
                *spooled = false;
                file.clear();
            }
            Effect::Store(_, body, ticket) => {
                stored = Some(match body {
                    DataBody::Memory(m) => m,
                    DataBody::Spooled { tail } => [std::mem::take(file), tail].concat(),
                });
                *spooled = false;
                c.stored(ticket, Ok(()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (out, stored)
}

#[test]
fn a_large_message_goes_to_the_spool_in_pieces_and_is_stored_whole() {
    let mut c = smtp();
    c.set_spill_threshold(1000);
    let (mut file, mut spooled) = (Vec::new(), false);
    c.feed(b"HELO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\n");
    drive(&mut c, &mut file, &mut spooled);
    let line = b"0123456789012345678901234567890123456789\r\n";
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    c.feed(&message);
    for _ in 0..200 {
        c.feed(line);
        message.extend_from_slice(line);
        drive(&mut c, &mut file, &mut spooled);
        // Memory stays bounded by the threshold (plus one piece).
        assert!(
            file.len() + 1000 + 64 >= message.len(),
            "{} {}",
            file.len(),
            message.len()
        );
    }
    assert!(spooled && file.len() > 5000);
    c.feed(b".\r\n");
    let (out, stored) = drive(&mut c, &mut file, &mut spooled);
    assert_eq!(stored.unwrap(), message);
    assert!(out.starts_with("250 2.0.0 OK: queued as "), "{out}");
}

#[test]
fn a_spooled_message_that_turns_too_large_discards_its_file() {
    let mut c = connection(
        "[limits]\nmax_message_size = 3000\n",
        ListenerKind::Smtp,
        false,
    );
    c.set_spill_threshold(500);
    let (mut file, mut spooled) = (Vec::new(), false);
    c.feed(b"HELO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\n");
    drive(&mut c, &mut file, &mut spooled);
    c.feed(&b"x".repeat(1000));
    drive(&mut c, &mut file, &mut spooled);
    assert!(spooled);
    c.feed(&b"y".repeat(5000));
    drive(&mut c, &mut file, &mut spooled);
    assert!(
        !spooled && file.is_empty(),
        "discarded as soon as it is too large"
    );
    c.feed(b"\r\n.\r\n");
    let (out, stored) = drive(&mut c, &mut file, &mut spooled);
    assert!(stored.is_none());
    assert!(out.starts_with("552 5.3.4 "), "{out}");
}

#[test]
fn a_failed_spool_write_answers_452_at_the_end_and_the_session_goes_on() {
    let mut c = smtp();
    c.set_spill_threshold(10);
    c.feed(b"HELO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nDATA\r\n");
    write(c.poll());
    c.feed(b"Subject: s\r\n\r\nsome body text\r\n");
    let Some(Effect::Spool(SpoolOp::Append(_))) = c.poll() else {
        panic!("no spool write")
    };
    c.spool_failed(StoreError::StorageFull("No space left on device".into()));
    assert!(c.poll().is_none());
    c.feed(b"more text that is dropped\r\n.\r\nNOOP\r\n");
    assert_eq!(
        write(c.poll()),
        "452 4.3.1 Insufficient system storage, try again later\r\n250 2.0.0 OK\r\n"
    );
    assert_eq!((c.accepted(), c.rejected()), (0, 1));
}

/// With `checks.spf_fail_reject`, MAIL on port 25 from an untrusted client waits for the SPF
/// check: what was pipelined after it is processed only once the result is in.
#[test]
fn pipelined_commands_wait_for_the_spf_check_of_mail() {
    let mut c = connection(
        "[relay]\ntrusted_networks = []\n[checks]\nspf_fail_reject = true\n",
        ListenerKind::Smtp,
        false,
    );
    c.feed(b"EHLO a\r\nMAIL FROM:<x@sender.test>\r\nRCPT TO:<bob@tern.test>\r\nNOOP\r\n");
    assert!(write(c.poll()).contains("PIPELINING"));
    let Some(Effect::CheckSpf(query, ticket)) = c.poll() else {
        panic!("no SPF check")
    };
    assert_eq!(
        (query.mail_from.as_str(), query.helo.as_str()),
        ("x@sender.test", "a")
    );
    assert!(
        c.poll().is_none(),
        "nothing more until the check is answered"
    );
    assert_eq!(c.wants(), None);
    c.spf_checked(ticket, None);
    assert_eq!(
        replies(&write(c.poll())),
        [
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.0.0 OK"
        ]
    );
}
