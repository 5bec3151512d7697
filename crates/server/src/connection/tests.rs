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

/// BDAT: a large chunk streams to the spool file in pieces (never whole in memory), and the
/// stored body is every chunk's octets in order, byte for byte.
#[test]
fn a_large_bdat_message_is_spooled_in_pieces_and_stored_whole() {
    let mut c = smtp();
    c.set_spill_threshold(1000);
    let (mut file, mut spooled) = (Vec::new(), false);
    c.feed(b"EHLO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\n");
    let (out, _) = drive(&mut c, &mut file, &mut spooled);
    assert!(out.contains("250-CHUNKING\r\n"), "{out}");
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..3000u32 {
        message.extend_from_slice(format!("{i:08} \u{e9} line\r\n").as_bytes());
    }
    let (first, rest) = message.split_at(20_000);
    c.feed(format!("BDAT {}\r\n", first.len()).as_bytes());
    for piece in first.chunks(700) {
        c.feed(piece);
        drive(&mut c, &mut file, &mut spooled);
        assert!(c.bdat.as_ref().unwrap().sink.body.len() < 1000 + 700);
    }
    assert!(spooled, "a large chunk goes to the spool file");
    c.feed(format!("BDAT {} LAST\r\n", rest.len()).as_bytes());
    for piece in rest.chunks(4096) {
        c.feed(piece);
        let (out, stored) = drive(&mut c, &mut file, &mut spooled);
        if let Some(stored) = stored {
            assert_eq!(stored, message);
            assert!(out.ends_with(" octets received\r\n") || out.contains("queued as"));
        }
    }
    assert_eq!(c.accepted(), 1);
}

/// RSET between chunks drops the message and its spool file; the next message starts a new
/// file.
#[test]
fn rset_between_bdat_chunks_discards_the_spool_file() {
    let mut c = smtp();
    c.set_spill_threshold(100);
    let (mut file, mut spooled) = (Vec::new(), false);
    c.feed(b"EHLO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nBDAT 5000\r\n");
    c.feed(&b"a".repeat(5000));
    let (out, _) = drive(&mut c, &mut file, &mut spooled);
    assert!(out.ends_with("250 2.0.0 5000 octets received\r\n"), "{out}");
    assert!(spooled);
    c.feed(b"RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nBDAT 4 LAST\r\nabcd");
    let (out, stored) = drive(&mut c, &mut file, &mut spooled);
    assert_eq!(stored.unwrap(), b"abcd");
    assert!(out.contains("queued as"), "{out}");
}

/// Bare CR and LF in BDAT data are stored as CRLF (the default "normalize"), also when a CRLF
/// is split between two chunks; with "reject" the message is refused at LAST.
#[test]
fn bdat_line_endings_follow_the_data_policy() {
    let mut c = smtp();
    let (mut file, mut spooled) = (Vec::new(), false);
    c.feed(b"EHLO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\n");
    c.feed(b"BDAT 9\r\na\nb\rc\r\nd\rBDAT 7 LAST\r\n\ne\r\r\nf\r");
    let (_, stored) = drive(&mut c, &mut file, &mut spooled);
    assert_eq!(stored.unwrap(), b"a\r\nb\r\nc\r\nd\r\ne\r\n\r\nf\r\n");

    let mut c = connection(
        "[smtp]\nbare_line_endings = \"reject\"\n",
        ListenerKind::Smtp,
        false,
    );
    c.feed(b"EHLO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\n");
    c.feed(b"BDAT 4 LAST\r\na\nb\r");
    let (out, stored) = drive(&mut c, &mut file, &mut spooled);
    assert!(stored.is_none());
    assert!(out.ends_with("554 5.6.0 Message rejected: bare <LF> or <CR> in message data (see SMTP smuggling)\r\n"), "{out}");
    c.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nBDAT 4 LAST\r\nab\r\n");
    let (_, stored) = drive(&mut c, &mut file, &mut spooled);
    assert_eq!(stored.unwrap(), b"ab\r\n");
}

/// STARTTLS-style resets aside, nothing pipelined after a refused BDAT's octets is lost, and a
/// byte-at-a-time client gets the same replies.
#[test]
fn bdat_fed_byte_by_byte() {
    let input = b"EHLO a\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@tern.test>\r\nBDAT 3\r\nab\nBDAT 2 LAST\r\n\r\nNOOP\r\n";
    let (mut file, mut spooled) = (Vec::new(), false);
    let mut c = smtp();
    let mut out = String::new();
    let mut stored = None;
    for b in input.chunks(1) {
        c.feed(b);
        let (o, s) = drive(&mut c, &mut file, &mut spooled);
        out.push_str(&o);
        stored = stored.or(s);
    }
    assert_eq!(stored.unwrap(), b"ab\r\n\r\n");
    let r = replies(&out);
    assert_eq!(r[r.len() - 3], "250 2.0.0 3 octets received");
    assert!(r[r.len() - 2].starts_with("250 2.0.0 OK: queued as "));
    assert_eq!(r[r.len() - 1], "250 2.0.0 OK");
}

/// With content filters, the first BDAT is shown to them as DATA; the chunk waits for the
/// verdict (its octets stay buffered, never read as commands). A refusal is the chunk's reply
/// once its octets are read, and ends the transaction: the BDATs behind it get 503.
#[test]
fn bdat_waits_for_the_filters_and_a_refusal_ends_the_transaction() {
    let milter = "[[milters]]\nname = \"f\"\naddress = \"inet:127.0.0.1:9\"\n\
                  apply_to = [\"smtp\"]\n";
    for reject in [false, true] {
        let mut c = connection(milter, ListenerKind::Smtp, false);
        c.feed(b"EHLO a\r\n");
        let Some(Effect::Filter(_, t)) = c.poll() else {
            panic!("no HELO step")
        };
        c.filtered(t, FilterVerdict::Continue);
        c.feed(b"MAIL FROM:<a@b.test>\r\n");
        write(c.poll());
        let Some(Effect::Filter(_, t)) = c.poll() else {
            panic!("no MAIL step")
        };
        c.filtered(t, FilterVerdict::Continue);
        c.feed(b"RCPT TO:<x@tern.test>\r\n");
        write(c.poll());
        let Some(Effect::Filter(_, t)) = c.poll() else {
            panic!("no RCPT step")
        };
        c.filtered(t, FilterVerdict::Continue);
        c.feed(b"BDAT 6\r\nNOOP\r\nBDAT 3 LAST\r\nx\r\nNOOP\r\n");
        write(c.poll());
        let Some(Effect::Filter(FilterStep::Data, t)) = c.poll() else {
            panic!("no DATA step for the first BDAT")
        };
        if reject {
            c.filtered(t, FilterVerdict::Reject(replies::filter_command_rejected()));
            assert_eq!(
                replies(&write(c.poll())),
                [
                    "550 5.7.1 Command rejected",
                    "503 5.5.1 Transaction abandoned after a failed BDAT, send RSET or MAIL",
                    "250 2.0.0 OK"
                ]
            );
        } else {
            c.filtered(t, FilterVerdict::Continue);
            // The replies so far go out before the store.
            let mut out = write(c.poll());
            let Some(Effect::Store(_, DataBody::Memory(body), ticket)) = c.poll() else {
                panic!("no store")
            };
            assert_eq!(body, b"NOOP\r\nx\r\n");
            c.stored(ticket, Ok(()));
            out.push_str(&write(c.poll()));
            let r = replies(&out);
            assert_eq!(r[0], "250 2.0.0 6 octets received");
            assert!(r[1].starts_with("250 2.0.0 OK: queued as "), "{out}");
            assert_eq!(r[2], "250 2.0.0 OK");
        }
    }
}
