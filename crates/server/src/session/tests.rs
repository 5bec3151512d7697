//! Session tests without sockets: what a reply cannot show (the accepted envelope, targets,
//! trace header, the AUTH sequencing). The replies themselves are checked by the transcripts in
//! testdata/transcripts (crates/server/tests/transcripts.rs).

use std::sync::Arc;

use tern_config::Config;

use super::*;
use crate::policy::Target;

fn config(toml: &str) -> Arc<Config> {
    let base = "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n";
    let text = if toml.contains("[local]") {
        format!("hostname = \"mx.tern.test\"\n{toml}")
    } else {
        format!("{base}{toml}")
    };
    Arc::new(Config::from_toml_str(&text, std::path::Path::new("test.toml")).unwrap())
}

fn session_with(cfg: Arc<Config>, peer: &str) -> Session {
    Session::new(
        cfg,
        ConnInfo {
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            kind: ListenerKind::Smtp,
            tls: None,
            tls_available: false,
        },
    )
}

fn session() -> Session {
    session_with(config(""), "127.0.0.1:40000")
}

/// Sends a line and returns the reply's first line as it goes on the wire (without CRLF).
fn say(s: &mut Session, line: &str) -> String {
    let reply = match s.handle_line(line.as_bytes()) {
        Action::Reply(r) | Action::StartData(r) | Action::StartTls(r) | Action::Close(r) => r,
        Action::Verify(_) => panic!("unexpected credential check"),
        Action::CheckSpf(_) => panic!("unexpected SPF check"),
        Action::Filter(_) => panic!("unexpected content filter step"),
    };
    let wire = String::from_utf8(reply.to_bytes()).unwrap();
    wire.lines().last().unwrap().to_string()
}

fn code(s: &mut Session, line: &str) -> u16 {
    say(s, line)[..3].parse().unwrap()
}

#[test]
fn the_seed_transaction() {
    let mut s = session();
    assert_eq!(s.greeting().to_bytes(), b"220 mx.tern.test ESMTP tern\r\n");
    assert_eq!(say(&mut s, "HELO walton.net"), "250 mx.tern.test");
    assert_eq!(
        say(&mut s, "MAIL FROM:<johnboy@walton.net>"),
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        say(&mut s, "RCPT TO:<riker@tern.test>"),
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(say(&mut s, "DATA"), "354 End data with <CR><LF>.<CR><LF>");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!()
    };
    assert_eq!(acc.sender.as_deref(), Some("johnboy@walton.net"));
    assert_eq!(
        acc.recipients[0].targets,
        vec![Target::Local("riker@tern.test".into())]
    );
    assert!(acc.received.starts_with(
        "Received: from walton.net ([127.0.0.1])\r\n\tby mx.tern.test (tern) with SMTP"
    ));
    assert!(acc.received.contains("for <riker@tern.test>"));
    assert_eq!(
        say(&mut s, "QUIT"),
        "221 2.0.0 mx.tern.test closing connection"
    );
}

#[test]
fn local_users_aliases_and_postmaster() {
    let cfg = config(
        "[local]\ndomains = [\"tern.test\"]\n[[users]]\nname = \"alice@tern.test\"\n[aliases]\n\"team@tern.test\" = [\"alice@tern.test\", \"bob@remote.test\"]\n",
    );
    let mut s = session_with(cfg, "192.0.2.9:5");
    say(&mut s, "EHLO x");
    say(&mut s, "MAIL FROM:<a@b.test>");
    assert_eq!(code(&mut s, "RCPT TO:<Alice@TERN.test.>"), 250);
    assert_eq!(
        say(&mut s, "RCPT TO:<nobody@tern.test>"),
        "550 5.1.1 <nobody@tern.test>: Recipient address rejected: no such user"
    );
    assert_eq!(code(&mut s, "RCPT TO:<team@tern.test>"), 250);
    assert_eq!(code(&mut s, "RCPT TO:<postmaster>"), 250);
    assert_eq!(code(&mut s, "RCPT TO:<postmaster@tern.test>"), 250);
    say(&mut s, "DATA");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!()
    };
    assert_eq!(acc.recipients.len(), 4);
    assert_eq!(
        acc.recipients[1].targets,
        vec![
            Target::Local("alice@tern.test".into()),
            Target::Remote("bob@remote.test".into())
        ]
    );
    assert!(
        !acc.received.contains(" for <"),
        "several recipients: no for clause"
    );
}

#[test]
fn relay_policy() {
    // Trusted (loopback by default) may relay.
    let mut s = session();
    say(&mut s, "EHLO x");
    say(&mut s, "MAIL FROM:<a@tern.test>");
    assert_eq!(code(&mut s, "RCPT TO:<x@elsewhere.test>"), 250);
    // Untrusted may not, whatever the decoration.
    let mut s = session_with(config(""), "192.0.2.1:1");
    say(&mut s, "EHLO x");
    say(&mut s, "MAIL FROM:<a@b.test>");
    assert!(say(&mut s, "RCPT TO:<x@elsewhere.test>").starts_with("550 5.7.1"));
    assert!(say(&mut s, "RCPT TO:<@tern.test:x@elsewhere.test>").starts_with("550 5.7.1"));
    assert!(say(&mut s, "RCPT TO:<x@elsewhere.test@tern.test>").starts_with("501"));
    // Decorated local parts stay local (delivered to a local mailbox or refused, never relayed).
    for local in [
        "<x%elsewhere.test@tern.test>",
        "<\"x@elsewhere.test\"@tern.test>",
        "<elsewhere.test!x@tern.test>",
        "<x@TERN.TEST.>",
    ] {
        assert_eq!(code(&mut s, &format!("RCPT TO:{local}")), 250, "{local}");
    }
    say(&mut s, "DATA");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!()
    };
    assert!(acc
        .recipients
        .iter()
        .flat_map(|r| &r.targets)
        .all(|t| matches!(t, Target::Local(_))));
}

#[test]
fn recipient_limit_keeps_the_first() {
    let mut s = session_with(config("[limits]\nmax_recipients = 2\n"), "127.0.0.1:1");
    say(&mut s, "EHLO x");
    say(&mut s, "MAIL FROM:<a@b.test>");
    assert_eq!(code(&mut s, "RCPT TO:<a@tern.test>"), 250);
    assert_eq!(code(&mut s, "RCPT TO:<b@tern.test>"), 250);
    assert_eq!(
        say(&mut s, "RCPT TO:<c@tern.test>"),
        "452 4.5.3 Too many recipients"
    );
    say(&mut s, "DATA");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!()
    };
    assert_eq!(acc.recipients.len(), 2);
}

/// A session in DATA with one accepted recipient, under `toml` limits.
fn in_data(toml: &str) -> Session {
    let mut s = session_with(config(toml), "127.0.0.1:1");
    say(&mut s, "EHLO x");
    say(&mut s, "MAIL FROM:<a@b.test>");
    say(&mut s, "RCPT TO:<a@tern.test>");
    assert_eq!(code(&mut s, "DATA"), 354);
    s
}

fn hops(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Received: from h{i}.test by h{}.test; Sat, 28 Nov 2026 10:00:00 +0000\r\n",
                i + 1
            )
        })
        .collect()
}

#[test]
fn mail_loop_is_refused_at_the_end_of_data() {
    // RFC 5321 6.3: a copy that would carry more Received headers than the limit once tern
    // adds its own is a loop, refused with 554 5.4.6: here 5 arrive, the queue would hold 6.
    let mut s = in_data("[queue]\nmax_received_headers = 5\n");
    let msg = format!("{}Subject: loop\r\n\r\nround\r\n", hops(5));
    let DataEnd::Reject(r) = s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())) else {
        panic!("a looping message was accepted")
    };
    assert_eq!(
        r.to_bytes(),
        b"554 5.4.6 Too many Received headers: mail loop detected\r\n"
    );
    // The transaction is over; the session goes on.
    assert_eq!(code(&mut s, "RCPT TO:<a@tern.test>"), 503);
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.test>"), 250);

    // One below the limit is fine: with tern's own the stored copy has exactly the limit.
    let mut s = in_data("[queue]\nmax_received_headers = 5\n");
    let msg = format!("{}Subject: ok\r\n\r\nhi\r\n", hops(4));
    let DataEnd::Store(accepted) = s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())) else {
        panic!("a message one hop below the limit was refused")
    };
    // The copy the queue holds is what the relay counts (crates/relay round.rs refuses more
    // than the limit): tern's Received on top brings it to exactly the limit, never above.
    let queued = format!("{}{msg}", accepted.received);
    assert_eq!(
        tern_proto::HeaderSection::find(queued.as_bytes()).received_count(),
        5
    );
}

#[test]
fn mail_loop_counts_header_fields_only() {
    // Two fields arrive, tern adds the third: exactly the limit.
    let cfg = "[queue]\nmax_received_headers = 3\n";
    // Received lines in the body, folded continuations that mention Received:, and other fields
    // whose names merely contain the word do not count.
    let msg = format!(
        "{}X-Received: x\r\nSubject: hi\r\n Received: folded\r\n\tReceived: folded\r\n\r\n{}",
        hops(2),
        hops(10)
    );
    let mut s = in_data(cfg);
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())),
        DataEnd::Store(_)
    ));
    // Any case, and the obsolete white space before the colon, do count.
    let msg = "received: a\r\nRECEIVED : b\r\nReceived\t: c\r\n\r\nbody\r\n";
    let mut s = in_data(cfg);
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())),
        DataEnd::Reject(r) if r.code() == 554
    ));
    // A message that starts with the blank line has no header section at all.
    let msg = format!("\r\n{}", hops(10));
    let mut s = in_data(cfg);
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())),
        DataEnd::Store(_)
    ));
}

#[test]
fn header_section_size_limit() {
    let mut s = in_data("[limits]\nmax_header_size = 100\n");
    let msg = format!("Subject: {}\r\n\r\nbody\r\n", "x".repeat(100));
    let DataEnd::Reject(r) = s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())) else {
        panic!()
    };
    assert_eq!(
        r.to_bytes(),
        b"552 5.3.4 Header section exceeds the size limit\r\n"
    );
    // A big body under a small header section is fine.
    let mut s = in_data("[limits]\nmax_header_size = 100\n");
    let msg = format!("Subject: x\r\n\r\n{}\r\n", "x".repeat(1000));
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(msg.as_bytes())),
        DataEnd::Store(_)
    ));
}

#[test]
fn the_reply_after_storage_names_the_stored_message() {
    let mut s = in_data("");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"Subject: s\r\n\r\n"))
    else {
        panic!()
    };
    assert_eq!(
        s.stored(Ok(())).to_bytes(),
        format!("250 2.0.0 OK: queued as {}\r\n", acc.id).into_bytes()
    );
    // Nothing handed out, nothing stored: never a 250.
    assert_eq!(s.stored(Ok(())).code(), 451);
    let mut s = in_data("");
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(b"")),
        DataEnd::Store(_)
    ));
    let full = crate::store::StoreError::StorageFull("ENOSPC".into());
    assert_eq!(
        s.stored(Err(full.into())).to_bytes(),
        b"452 4.3.1 Insufficient system storage, try again later\r\n"
    );
}

#[test]
fn eight_bit_is_seen_in_the_message() {
    let mut s = in_data("");
    let DataEnd::Store(acc) =
        s.finish_data(Ok(()), &MessageFacts::of("Subject: é\r\n\r\n".as_bytes()))
    else {
        panic!()
    };
    assert!(acc.eight_bit);
    let mut s = in_data("");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"Subject: e\r\n\r\n"))
    else {
        panic!()
    };
    assert!(!acc.eight_bit);
}

#[test]
fn vrfy_and_expn_when_enabled() {
    let cfg = config(
        "[local]\ndomains = [\"tern.test\"]\nvrfy = true\nexpn = true\n[[users]]\nname = \"alice@tern.test\"\n[aliases]\n\"team@tern.test\" = [\"alice@tern.test\"]\n",
    );
    let mut s = session_with(cfg, "127.0.0.1:1");
    assert_eq!(
        say(&mut s, "VRFY alice@tern.test"),
        "250 2.1.5 <alice@tern.test>"
    );
    assert_eq!(code(&mut s, "VRFY nobody@tern.test"), 550);
    assert_eq!(
        say(&mut s, "EXPN team@tern.test"),
        "250 2.1.5 <alice@tern.test>"
    );
    assert_eq!(code(&mut s, "EXPN alice@tern.test"), 550);
}

fn submission_session(tls: bool) -> Session {
    // The hash is never checked here: the driver verifies credentials, the session only
    // sequences the exchange.
    let cfg = config(
        "[local]\ndomains = [\"tern.test\"]\n[[users]]\nname = \"alice@tern.test\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"\n",
    );
    Session::new(
        cfg,
        ConnInfo {
            peer: "192.0.2.50:1".parse().unwrap(),
            local: "127.0.0.1:587".parse().unwrap(),
            kind: ListenerKind::Submission,
            tls: tls.then(|| "TLSv1.3 TLS13_AES_128_GCM_SHA256".to_string()),
            tls_available: true,
        },
    )
}

#[test]
fn auth_needs_tls_and_is_advertised_only_there() {
    let mut s = submission_session(false);
    let Action::Reply(r) = s.handle_line(b"EHLO x") else {
        panic!()
    };
    let wire = String::from_utf8(r.to_bytes()).unwrap();
    assert!(wire.contains("STARTTLS") && !wire.contains("AUTH"));
    assert!(say(&mut s, "AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==").starts_with("538 5.7.11"));
    assert_eq!(
        say(&mut s, "MAIL FROM:<alice@tern.test>"),
        "530 5.7.0 Authentication required"
    );

    let mut s = submission_session(true);
    let Action::Reply(r) = s.handle_line(b"EHLO x") else {
        panic!()
    };
    let wire = String::from_utf8(r.to_bytes()).unwrap();
    assert!(wire.contains("AUTH PLAIN LOGIN") && !wire.contains("STARTTLS"));
}

#[test]
fn auth_plain_and_sender_ownership() {
    let mut s = submission_session(true);
    say(&mut s, "EHLO x");
    let Action::Verify(creds) = s.handle_line(b"AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==") else {
        panic!()
    };
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("alice@tern.test", "pw")
    );
    let Action::Reply(r) = s.auth_verified(Some("alice@tern.test".into())) else {
        panic!()
    };
    assert_eq!(r.to_bytes(), b"235 2.7.0 Authentication successful\r\n");
    assert!(say(&mut s, "MAIL FROM:<bob@tern.test>").starts_with("553 5.7.1"));
    assert_eq!(code(&mut s, "MAIL FROM:<Alice@TERN.test>"), 250);
    // An authenticated user may relay anywhere.
    assert_eq!(code(&mut s, "RCPT TO:<x@elsewhere.test>"), 250);
    say(&mut s, "DATA");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!()
    };
    assert!(acc.received.contains("with ESMTPSA"));
    assert!(acc
        .received
        .contains("(using TLSv1.3 TLS13_AES_128_GCM_SHA256)"));
}

#[test]
fn auth_login_exchange_cancel_and_garbage() {
    let mut s = submission_session(true);
    say(&mut s, "EHLO x");
    assert_eq!(say(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(say(&mut s, "YWxpY2VAdGVybi50ZXN0"), "334 UGFzc3dvcmQ6");
    let Action::Verify(creds) = s.handle_line(b"cHc=") else {
        panic!()
    };
    assert_eq!(creds.username, "alice@tern.test");
    let Action::Reply(r) = s.auth_verified(None) else {
        panic!()
    };
    assert_eq!(r.code(), 535);
    assert_eq!(say(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(say(&mut s, "*"), "501 5.7.0 Authentication cancelled");
    assert!(say(&mut s, "AUTH PLAIN !!!notbase64").starts_with("501 5.5.2"));
    assert!(say(&mut s, "AUTH CRAM-MD5").starts_with("504 5.5.4"));
}

#[test]
fn overlong_line_ends_the_auth_exchange() {
    for mech in ["AUTH LOGIN", "AUTH PLAIN"] {
        let mut s = submission_session(true);
        say(&mut s, "EHLO x");
        assert_eq!(code(&mut s, mech), 334);
        let Action::Reply(r) = s.line_too_long() else {
            panic!()
        };
        assert_eq!(r.to_bytes(), b"500 5.5.2 Line too long\r\n");
        // A command again, not the next SASL response.
        assert_eq!(say(&mut s, "NOOP"), "250 2.0.0 OK", "{mech}");
        assert_eq!(code(&mut s, mech), 334, "{mech}");
    }
}

#[test]
fn auth_failures_close_after_the_limit() {
    let mut s = submission_session(true);
    say(&mut s, "EHLO x");
    for _ in 0..4 {
        assert!(matches!(
            s.handle_line(b"AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw=="),
            Action::Verify(_)
        ));
        assert!(matches!(s.auth_verified(None), Action::Reply(_)));
    }
    assert!(matches!(
        s.handle_line(b"AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw=="),
        Action::Verify(_)
    ));
    let Action::Close(r) = s.auth_verified(None) else {
        panic!("5th failure must close")
    };
    assert_eq!(r.code(), 421);
}

#[test]
fn auth_lockout_holds_on_a_new_connection() {
    let cfg = config(
        "[local]\ndomains = [\"tern.test\"]\n[limits]\nmax_auth_failures = 2\n[[users]]\nname = \"alice@tern.test\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"\n",
    );
    let tracker = Arc::new(ClientTracker::new());
    let open = |peer: &str| {
        Session::sharing(
            cfg.clone(),
            ConnInfo {
                peer: peer.parse().unwrap(),
                local: "127.0.0.1:465".parse().unwrap(),
                kind: ListenerKind::Submissions,
                tls: Some("TLSv1.3 TLS13_AES_128_GCM_SHA256".to_string()),
                tls_available: true,
            },
            tracker.clone(),
        )
    };
    const PLAIN: &[u8] = b"AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==";

    // A second connection opens an exchange before the first one reaches the limit.
    let mut late = open("192.0.2.7:2");
    say(&mut late, "EHLO x");
    assert_eq!(say(&mut late, "AUTH LOGIN"), "334 VXNlcm5hbWU6");
    say(&mut late, "YWxpY2VAdGVybi50ZXN0");

    let mut s = open("192.0.2.7:1");
    say(&mut s, "EHLO x");
    assert!(matches!(s.handle_line(PLAIN), Action::Verify(_)));
    assert!(matches!(s.auth_verified(None), Action::Reply(_)));
    assert!(matches!(s.handle_line(PLAIN), Action::Verify(_)));
    assert!(matches!(s.auth_verified(None), Action::Close(_)));

    // Reconnecting gives no fresh guesses: 421 before any password is checked.
    let mut again = open("192.0.2.7:3");
    say(&mut again, "EHLO x");
    for line in [
        "AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw==",
        "AUTH LOGIN",
        "AUTH PLAIN",
    ] {
        let Action::Close(r) = again.handle_line(line.as_bytes()) else {
            panic!("{line} from a locked-out IP")
        };
        assert_eq!(r.code(), 421);
        assert!(r.to_string().contains("4.7.0"), "{r}");
    }
    // The exchange opened before the lockout does not get its password checked either.
    let Action::Close(r) = late.handle_line(b"cHc=") else {
        panic!("password from a locked-out IP went to verification")
    };
    assert_eq!(r.code(), 421);

    // Another address is not affected.
    let mut other = open("192.0.2.8:1");
    say(&mut other, "EHLO x");
    assert!(matches!(other.handle_line(PLAIN), Action::Verify(_)));
}

#[test]
fn junk_commands_beyond_the_limit_are_errors() {
    let mut s = session_with(
        config("[limits]\nmax_junk_commands = 2\nmax_errors = 2\n"),
        "192.0.2.1:1",
    );
    assert_eq!(code(&mut s, "EHLO x"), 250);
    assert_eq!(code(&mut s, "NOOP"), 250);
    // The third is answered as usual but counts; the second error closes.
    assert_eq!(code(&mut s, "RSET"), 250);
    assert!(matches!(s.handle_line(b"HELP"), Action::Close(r) if r.code() == 421));
}

#[test]
fn rejected_recipients_are_errors() {
    let mut s = session_with(config("[limits]\nmax_errors = 2\n"), "192.0.2.1:1");
    say(&mut s, "EHLO x");
    say(&mut s, "MAIL FROM:<a@b.test>");
    assert_eq!(code(&mut s, "RCPT TO:<x@elsewhere.test>"), 550);
    assert!(matches!(
        s.handle_line(b"RCPT TO:<y@elsewhere.test>"),
        Action::Close(r) if r.code() == 421
    ));
}

#[test]
fn a_busy_check_is_454_and_costs_no_failure() {
    let mut s = submission_session(true);
    say(&mut s, "EHLO x");
    assert!(matches!(
        s.handle_line(b"AUTH PLAIN AGFsaWNlQHRlcm4udGVzdABwdw=="),
        Action::Verify(_)
    ));
    let Action::Reply(r) = s.auth_busy() else {
        panic!()
    };
    assert_eq!(
        r.to_string(),
        "454 4.7.0 Too many authentications in progress, try again later"
    );
    let ip = ClientKey::new("192.0.2.50".parse().unwrap(), 64);
    assert_eq!(s.tracker.auth_failures(ip), 0);
    assert_eq!(s.tracker.user_failures("alice@tern.test"), 0);
}

#[test]
fn low_disk_space_refuses_new_mail_and_lets_an_open_transaction_finish() {
    let low = crate::disk::LowSpace::default();
    let mut s = session().with_low_space(low.clone());
    say(&mut s, "EHLO client.test");
    assert_eq!(code(&mut s, "MAIL FROM:<a@example.test>"), 250);
    low.set(true);
    // Accepted before the disk filled: it goes on (its write still gets 452 on ENOSPC).
    assert_eq!(code(&mut s, "RCPT TO:<b@tern.test>"), 250);
    assert_eq!(code(&mut s, "DATA"), 354);
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(b"x\r\n")),
        DataEnd::Store(_)
    ));
    assert_eq!(s.stored(Ok(())).code(), 250);
    assert_eq!(
        say(&mut s, "MAIL FROM:<a@example.test>"),
        "452 4.3.1 Insufficient system storage, try again later"
    );
    // Not the client's fault: many refusals do not close the session.
    for _ in 0..30 {
        assert_eq!(code(&mut s, "MAIL FROM:<a@example.test>"), 452);
    }
    low.set(false);
    assert_eq!(code(&mut s, "MAIL FROM:<a@example.test>"), 250);
}

#[test]
fn catch_all_recipients_beyond_the_new_mailbox_cap_get_450() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "data_dir = {:?}\n[local]\ndomains = [\"tern.test\"]\n\
         [limits]\nmax_new_mailboxes_per_message = 3\nmax_new_mailboxes_per_minute = 5\n",
        dir.path().display().to_string()
    ));
    let cap = Arc::new(MailboxCap::new(&cfg));
    let mut s = session_with(cfg.clone(), "127.0.0.1:40000").with_mailbox_cap(cap.clone());
    say(&mut s, "EHLO client.test");
    say(&mut s, "MAIL FROM:<a@example.test>");
    for i in 0..3 {
        assert_eq!(code(&mut s, &format!("RCPT TO:<new{i}@tern.test>")), 250);
    }
    assert_eq!(
        say(&mut s, "RCPT TO:<new3@tern.test>"),
        "450 4.2.0 <new3@tern.test>: Too many new mailboxes, try again later"
    );
    // Postmaster is configured, and a recipient already counted counts once.
    assert_eq!(code(&mut s, "RCPT TO:<postmaster@tern.test>"), 250);
    assert_eq!(code(&mut s, "RCPT TO:<new0@tern.test>"), 250);
    // The minute is shared with the next session: 2 more fit, then 450.
    let mut t = session_with(cfg, "127.0.0.2:40000").with_mailbox_cap(cap);
    say(&mut t, "EHLO client.test");
    say(&mut t, "MAIL FROM:<a@example.test>");
    assert_eq!(code(&mut t, "RCPT TO:<other0@tern.test>"), 250);
    assert_eq!(code(&mut t, "RCPT TO:<other1@tern.test>"), 250);
    assert_eq!(code(&mut t, "RCPT TO:<other2@tern.test>"), 450);
}

/// Port 25 mail from a host outside `relay.trusted_networks` is verified at the end of DATA;
/// with `checks.spf_fail_reject` its SPF is checked at MAIL FROM first (the transaction opens
/// only once the result is in), and the result rides along to the end of DATA.
#[test]
fn port_25_mail_from_outside_is_verified_and_spf_runs_at_mail_when_it_may_refuse() {
    let cfg = config("[relay]\ntrusted_networks = []\n[checks]\nspf_fail_reject = true\n");
    let mut s = session_with(cfg, "192.0.2.7:40000");
    say(&mut s, "EHLO client.test");
    let Action::CheckSpf(query) = s.handle_line(b"MAIL FROM:<a@sender.test>") else {
        panic!("MAIL should ask for the SPF check");
    };
    assert_eq!(
        query,
        SpfQuery {
            ip: "192.0.2.7".parse().unwrap(),
            helo: "client.test".into(),
            mail_from: "a@sender.test".into(),
        }
    );
    assert!(s.transaction().is_some());
    assert_eq!(
        s.spf_checked(None),
        Action::Reply(replies::sender_ok()),
        "no result: the transaction opens"
    );
    assert_eq!(code(&mut s, "RCPT TO:<bob@tern.test>"), 250);
    assert_eq!(code(&mut s, "DATA"), 354);
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!("stored");
    };
    assert!(
        matches!(acc.inbound, Inbound::Verify { spf: None }),
        "{:?}",
        acc.inbound
    );
    assert!(!acc.sign);

    // Without spf_fail_reject, MAIL answers at once and SPF waits for the end of DATA.
    let cfg = config("[relay]\ntrusted_networks = []\n");
    let mut s = session_with(cfg, "192.0.2.7:40000");
    say(&mut s, "EHLO client.test");
    assert_eq!(
        say(&mut s, "MAIL FROM:<a@sender.test>"),
        "250 2.1.0 Sender OK"
    );
}

/// Our own mail (a trusted host here) is signed, never verified.
#[test]
fn mail_from_a_trusted_host_is_not_verified() {
    let cfg = config("[checks]\nspf_fail_reject = true\n");
    let mut s = session_with(cfg, "127.0.0.1:40000");
    say(&mut s, "EHLO client.test");
    assert_eq!(
        say(&mut s, "MAIL FROM:<a@tern.test>"),
        "250 2.1.0 Sender OK"
    );
    assert_eq!(code(&mut s, "RCPT TO:<bob@tern.test>"), 250);
    assert_eq!(code(&mut s, "DATA"), 354);
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!("stored");
    };
    assert!(matches!(acc.inbound, Inbound::Skip));
    assert!(acc.sign);
}

const MILTER: &str = "[[milters]]\nname = \"f\"\naddress = \"inet:127.0.0.1:9\"\n";

/// Sends a line to a filtered session: the step the filters must see, if any, and then the
/// reply once they answered `verdict`.
fn filtered(s: &mut Session, line: &str, verdict: FilterVerdict) -> (Option<FilterStep>, String) {
    let (step, action) = match s.handle_line(line.as_bytes()) {
        Action::Filter(step) => (Some(step), s.filtered(verdict)),
        other => (None, other),
    };
    let reply = match action {
        Action::Reply(r) | Action::StartData(r) | Action::Close(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    let wire = String::from_utf8(reply.to_bytes()).unwrap();
    (step, wire.lines().last().unwrap().to_string())
}

fn refused() -> FilterVerdict {
    FilterVerdict::Reject(Reply::new(550, tern_proto::ec(5, 7, 1), "Command rejected"))
}

#[test]
fn filters_see_each_step_the_session_accepted_and_a_refusal_changes_nothing() {
    let mut s = session_with(config(MILTER), "192.0.2.1:4000");
    let (step, reply) = filtered(&mut s, "EHLO client.test", refused());
    assert_eq!(
        step,
        Some(FilterStep::Helo {
            name: "client.test".into()
        })
    );
    assert_eq!(reply, "550 5.7.1 Command rejected");
    // The refused EHLO left no greeting behind.
    assert_eq!(code(&mut s, "MAIL FROM:<a@remote.test>"), 503);
    let (_, reply) = filtered(&mut s, "EHLO client.test", FilterVerdict::Continue);
    assert!(reply.starts_with("250 "), "{reply}");

    let (step, reply) = filtered(&mut s, "MAIL FROM:<a@remote.test> SIZE=10", refused());
    let Some(FilterStep::Mail { from, args, id }) = step else {
        panic!("no MAIL step")
    };
    assert_eq!(
        (from.as_str(), args),
        ("<a@remote.test>", vec!["SIZE=10".to_string()])
    );
    assert_eq!(id.len(), 32);
    assert_eq!(reply, "550 5.7.1 Command rejected");
    // No transaction opened.
    assert_eq!(code(&mut s, "RCPT TO:<bob@tern.test>"), 503);

    let (_, reply) = filtered(&mut s, "MAIL FROM:<a@remote.test>", FilterVerdict::Continue);
    assert!(reply.starts_with("250 "), "{reply}");
    // tern's own refusal is never shown to the filters.
    let (step, reply) = filtered(
        &mut s,
        "RCPT TO:<x@elsewhere.test>",
        FilterVerdict::Continue,
    );
    assert_eq!((step, &reply[..3]), (None, "550"));
    let (step, reply) = filtered(&mut s, "RCPT TO:<bob@tern.test>", refused());
    assert_eq!(
        step,
        Some(FilterStep::Rcpt {
            to: "<bob@tern.test>".into()
        })
    );
    assert_eq!(reply, "550 5.7.1 Command rejected");
    // Every recipient refused: DATA has nobody to deliver to.
    assert_eq!(code(&mut s, "DATA"), 554);
    let (_, reply) = filtered(&mut s, "RCPT TO:<carol@tern.test>", FilterVerdict::Continue);
    assert!(reply.starts_with("250 "), "{reply}");
    let (step, reply) = filtered(&mut s, "DATA", refused());
    assert_eq!(
        (step, reply.as_str()),
        (Some(FilterStep::Data), "550 5.7.1 Command rejected")
    );
    let (_, reply) = filtered(&mut s, "DATA", FilterVerdict::Continue);
    assert!(reply.starts_with("354 "), "{reply}");
    let DataEnd::Store(acc) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!("not stored")
    };
    let rcpts: Vec<&str> = acc.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["carol@tern.test"]);
}

#[test]
fn a_discard_takes_the_message_and_stores_nothing() {
    let mut s = session_with(config(MILTER), "192.0.2.1:4000");
    filtered(&mut s, "HELO client.test", FilterVerdict::Continue);
    filtered(&mut s, "MAIL FROM:<a@remote.test>", FilterVerdict::Continue);
    let (_, reply) = filtered(&mut s, "RCPT TO:<bob@tern.test>", FilterVerdict::Discard);
    assert!(reply.starts_with("250 "), "{reply}");
    filtered(&mut s, "DATA", FilterVerdict::Continue);
    let DataEnd::Discard(reply) = s.finish_data(Ok(()), &MessageFacts::of(b"")) else {
        panic!("not discarded")
    };
    assert_eq!(reply.code(), 250);
    // The next transaction starts clean.
    filtered(&mut s, "MAIL FROM:<a@remote.test>", FilterVerdict::Continue);
    filtered(&mut s, "RCPT TO:<bob@tern.test>", FilterVerdict::Continue);
    filtered(&mut s, "DATA", FilterVerdict::Continue);
    assert!(matches!(
        s.finish_data(Ok(()), &MessageFacts::of(b"")),
        DataEnd::Store(_)
    ));
}

#[test]
fn milters_apply_to_the_listeners_they_name() {
    // Default apply_to: port 25 only.
    let submission = |cfg| {
        Session::new(
            cfg,
            ConnInfo {
                peer: "127.0.0.1:4000".parse().unwrap(),
                local: "127.0.0.1:587".parse().unwrap(),
                kind: ListenerKind::Submission,
                tls: None,
                tls_available: false,
            },
        )
    };
    let mut s = submission(config(&format!(
        "{MILTER}[[users]]\nname = \"alice@tern.test\"\n"
    )));
    assert!(matches!(s.handle_line(b"EHLO x"), Action::Reply(_)));
    let mut s = submission(config(&format!("{MILTER}apply_to = [\"submission\"]\n")));
    assert!(matches!(s.handle_line(b"EHLO x"), Action::Filter(_)));
    let mut s = session_with(
        config(&format!("{MILTER}apply_to = [\"submission\"]\n")),
        "192.0.2.1:1",
    );
    assert!(matches!(s.handle_line(b"EHLO x"), Action::Reply(_)));
}

/// BDAT asks the connection for its chunk, accepted or refused; the refusals count as errors
/// like DATA's, except the 503s after a failed BDAT (the client pipelined those chunks).
#[test]
fn bdat_hands_out_its_chunk() {
    let mut s = session();
    assert_eq!(say(&mut s, "BDAT 3"), "503 5.5.1 Send HELO/EHLO first");
    let refused = Some(replies::need_helo());
    assert_eq!(
        s.take_chunk(),
        Some(Chunk {
            size: 3,
            last: false,
            refused
        })
    );
    say(&mut s, "EHLO c.test");
    say(&mut s, "MAIL FROM:<a@b.test>");
    assert_eq!(
        say(&mut s, "BDAT 2 LAST"),
        "503 5.5.1 Need RCPT before BDAT"
    );
    assert!(s
        .take_chunk()
        .is_some_and(|c| c.refused.is_some() && c.last));
    say(&mut s, "RCPT TO:<x@tern.test>");
    assert_eq!(say(&mut s, "BDAT 10"), "250 2.0.0 10 octets received");
    assert_eq!(
        s.take_chunk(),
        Some(Chunk {
            size: 10,
            last: false,
            refused: None
        })
    );
    assert!(s.in_bdat());
    assert_eq!(say(&mut s, "DATA"), "503 5.5.1 DATA not allowed after BDAT");
    assert!(s.take_chunk().is_none() && s.in_bdat());
    s.bdat_failed();
    assert!(!s.in_bdat());
    let errors = s.errors;
    assert_eq!(
        say(&mut s, "BDAT 1 LAST"),
        "503 5.5.1 Transaction abandoned after a failed BDAT, send RSET or MAIL"
    );
    assert_eq!(s.errors, errors, "not counted as an error");
    assert!(s.take_chunk().is_some());
    say(&mut s, "RSET");
    assert_eq!(
        say(&mut s, "BDAT 1 LAST"),
        "503 5.5.1 Need MAIL before BDAT"
    );
    assert_eq!(s.errors, errors + 1);
    // A malformed BDAT closes: the octets after it can't be told from commands.
    assert!(matches!(
        s.handle_line(b"BDAT 1x"),
        Action::Close(r) if r.code() == 501
    ));
}
