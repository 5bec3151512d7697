//! One delivery round (`round::run`) against a scripted SMTP peer on loopback, over a real
//! `FsStore`: what the queue holds afterwards (per-recipient state and reply), what the peer
//! received, and the bounce the sender gets.

// Test code: a failed unwrap is a failed test (the helpers are not `#[test]` functions).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tern_queue::{Envelope, FsStore, QueueId, QueueStore, RecipientStatus};
use tern_relay::round::{self, After};

use support::Step::{Data, Expect, Send};
use support::{
    commit, config, context, envelope, maildir_new, message, parse_dsn, queued, Peer, Step,
    GREETING,
};

/// A script: the plain greeting, then `rest`.
fn script(rest: &[Step]) -> Vec<Step> {
    GREETING.iter().chain(rest).cloned().collect()
}

fn open(dir: &tempfile::TempDir) -> Arc<FsStore> {
    Arc::new(FsStore::open(dir.path()).unwrap())
}

fn load(queue: &FsStore, id: &QueueId) -> Envelope {
    queue.load(id).unwrap()
}

/// The stored state of `address` in `env`.
fn status<'a>(env: &'a Envelope, address: &str) -> &'a RecipientStatus {
    &env.recipients
        .iter()
        .find(|r| r.address == address)
        .unwrap_or_else(|| panic!("no recipient {address} in {env:?}"))
        .status
}

/// The reply text stored with a final or deferred status, through `Display` (whatever type
/// holds it).
fn reply_of(s: &RecipientStatus) -> String {
    match s {
        RecipientStatus::Delivered { reply, .. } | RecipientStatus::Failed { reply, .. } => {
            reply.to_string()
        }
        RecipientStatus::Deferred { last_reply, .. } => last_reply.to_string(),
        RecipientStatus::Pending => panic!("still pending"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn a_250_removes_the_entry_and_the_peer_gets_the_message_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::scripted(vec![script(&[
        Expect("MAIL FROM:<alice@tern.test>"),
        Send("250 2.1.0 ok\r\n"),
        Expect("RCPT TO:<bob@remote.test>"),
        Send("250 2.1.5 ok\r\n"),
        Expect("DATA"),
        Send("354 go ahead\r\n"),
        Data,
        Send("250 2.0.0 queued as P1\r\n"),
    ])])
    .await;
    let cfg = config(dir.path(), peer.port(), "");
    let queue = open(&dir);
    let msg = message("delivery", 0);
    let id = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &msg),
        &msg,
    );

    let ctx = context(&cfg, queue.clone());
    let after = round::run(ctx.clone(), id.clone()).await;
    drop(ctx); // closes the pooled connection: the peer sees the client leave
    let rec = peer.finish().await;

    assert_eq!(after, After::Nothing);
    assert!(!queued(queue.as_ref(), &id), "a delivered entry is removed");
    assert!(queue.list().unwrap().is_empty(), "and nothing else queued");
    assert_eq!(rec.connections.len(), 1);
    // Byte-exact after the peer's own dot-unstuffing, tern's Received header included.
    assert_eq!(rec.connections[0].messages, vec![msg.clone()]);
    assert!(
        text(&msg).starts_with(
            "Received: from client.tern.test ([127.0.0.1])\r\n\tby mx.tern.test (tern) with ESMTP"
        ),
        "{}",
        text(&msg)
    );
    assert!(maildir_new(dir.path(), "tern.test", "alice").is_empty());
}

#[tokio::test]
async fn a_451_at_rcpt_defers_within_the_retry_window() {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::scripted(vec![script(&[
        Expect("MAIL FROM:<alice@tern.test>"),
        Send("250 2.1.0 ok\r\n"),
        Expect("RCPT TO:<bob@remote.test>"),
        Send("451 4.7.1 greylisted, come back later\r\n"),
    ])])
    .await;
    // A first step unlike the default (5m), so the window can only come from this config.
    let cfg = config(
        dir.path(),
        peer.port(),
        "[queue]\nretry_schedule = [\"7m\", \"1h\"]\n",
    );
    let queue = open(&dir);
    let msg = message("deferral", 0);
    let id = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &msg),
        &msg,
    );

    let ctx = context(&cfg, queue.clone());
    let before = SystemTime::now();
    let after = round::run(ctx.clone(), id.clone()).await;
    let done = SystemTime::now();
    drop(ctx);
    let rec = peer.finish().await;

    let env = load(&queue, &id);
    let RecipientStatus::Deferred {
        attempts,
        next_attempt,
        ..
    } = status(&env, "bob@remote.test")
    else {
        panic!("not deferred: {env:?}");
    };
    assert_eq!(*attempts, 1);
    let reply = reply_of(status(&env, "bob@remote.test"));
    assert!(
        reply.starts_with("451 4.7.1 greylisted, come back later"),
        "{reply}"
    );
    // The remote reply is stored as sent (no trailer); where it came from is in typed fields.
    let RecipientStatus::Deferred { last_reply, .. } = status(&env, "bob@remote.test") else {
        unreachable!()
    };
    let origin = last_reply
        .origin()
        .expect("a remote reply names its origin");
    assert_eq!(origin.stage, Some(tern_queue::Stage::Rcpt), "{origin:?}");
    assert_eq!(
        origin.addr,
        Some("127.0.0.1".parse().unwrap()),
        "{origin:?}"
    );
    // 7 minutes ±10 % jitter (backoff.rs), counted from some time during the round.
    let step = Duration::from_secs(7 * 60);
    assert!(
        *next_attempt >= before + step.mul_f64(0.9) && *next_attempt <= done + step.mul_f64(1.1),
        "next attempt {:?} s after the round",
        next_attempt.duration_since(before).unwrap_or_default()
    );
    assert_eq!(after, After::At(*next_attempt));
    // The attempt is logged with the host that answered.
    let last = env.attempts_log.last().unwrap();
    assert_eq!(last.recipient, "bob@remote.test");
    assert_eq!(last.host.as_deref(), Some("127.0.0.1"));
    assert!(last.reply.to_string().starts_with("451 "));
    // Nothing was sent, nothing bounced.
    assert!(rec.messages().is_empty());
    assert!(maildir_new(dir.path(), "tern.test", "alice").is_empty());
    assert_eq!(queue.list().unwrap(), vec![id]);
}

#[tokio::test]
async fn partial_success_bounces_only_the_failed_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::scripted(vec![
        script(&[
            Expect("MAIL FROM:<sender@elsewhere.test>"),
            Send("250 2.1.0 ok\r\n"),
            Expect("RCPT TO:<bob@remote.test>"),
            Send("250 2.1.5 ok\r\n"),
            Expect("RCPT TO:<dave@remote.test>"),
            Send("550 5.1.1 <dave@remote.test>: no such user\r\n"),
            Expect("RCPT TO:<carol@remote.test>"),
            Send("452 4.2.2 carol's mailbox is full\r\n"),
            Expect("DATA"),
            Send("354 go ahead\r\n"),
            Data,
            Send("250 2.0.0 queued as P1\r\n"),
        ]),
        // The second round, after carol's retry was made due (as `tern queue flush` does),
        // on the same connection when the pool kept it or on a new one.
        script(&[
            Expect("MAIL FROM:<sender@elsewhere.test>"),
            Send("250 2.1.0 ok\r\n"),
            Expect("RCPT TO:<carol@remote.test>"),
            Send("250 2.1.5 ok\r\n"),
            Expect("DATA"),
            Send("354 go ahead\r\n"),
            Data,
            Send("250 2.0.0 queued as P2\r\n"),
        ]),
    ])
    .await;
    let cfg = config(dir.path(), peer.port(), "");
    let queue = open(&dir);
    let msg = message("partial", 0);
    let id = commit(
        &queue,
        &envelope(
            Some("sender@elsewhere.test"),
            &["bob@remote.test", "dave@remote.test", "carol@remote.test"],
            &msg,
        ),
        &msg,
    );

    // Each round on a context of its own: the second one cannot ride on the first's connection.
    let after = round::run(context(&cfg, queue.clone()), id.clone()).await;
    let env = load(&queue, &id);
    let bob = reply_of(status(&env, "bob@remote.test"));
    assert!(
        matches!(
            status(&env, "bob@remote.test"),
            RecipientStatus::Delivered { .. }
        ),
        "{env:?}"
    );
    assert!(bob.starts_with("250 2.0.0 queued as P1"), "{bob}");
    assert!(
        matches!(
            status(&env, "dave@remote.test"),
            RecipientStatus::Failed { .. }
        ),
        "{env:?}"
    );
    let dave = reply_of(status(&env, "dave@remote.test"));
    assert!(dave.starts_with("550 5.1.1 "), "{dave}");
    let RecipientStatus::Deferred {
        attempts: 1,
        next_attempt,
        ..
    } = status(&env, "carol@remote.test")
    else {
        panic!("carol not deferred once: {env:?}");
    };
    assert!(reply_of(status(&env, "carol@remote.test")).starts_with("452 4.2.2 "));
    assert_eq!(after, After::At(*next_attempt));

    // One bounce, queued for the remote sender with the null sender, about dave only.
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 2, "the entry and one DSN: {ids:?}");
    let dsn_id = ids.iter().find(|i| **i != id).unwrap().clone();
    let dsn_env = load(&queue, &dsn_id);
    assert_eq!(dsn_env.sender, None);
    assert_eq!(dsn_env.recipients.len(), 1);
    assert_eq!(dsn_env.recipients[0].address, "sender@elsewhere.test");
    let dsn = queue.read_message(&dsn_id).unwrap();
    let (subject, report, headers) = parse_dsn(&dsn);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    assert!(
        report.contains(
            "Final-Recipient: rfc822; dave@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{report}"
    );
    assert!(
        !report.contains("bob@") && !report.contains("carol@"),
        "{report}"
    );
    assert!(headers.contains("Subject: partial\r\n"), "{headers}");

    // carol's retry made due as `tern queue flush` does (lock, set, update), then the round.
    {
        let lock = queue.lock(&id).unwrap().unwrap();
        let mut env = load(&queue, &id);
        for r in &mut env.recipients {
            if let RecipientStatus::Deferred { next_attempt, .. } = &mut r.status {
                *next_attempt = SystemTime::now();
            }
        }
        queue.update(&lock, &env).unwrap();
    }
    let after = round::run(context(&cfg, queue.clone()), id.clone()).await;
    assert_eq!(after, After::Nothing);
    assert!(!queued(queue.as_ref(), &id), "removed once all are final");
    // Still the one DSN: a delivered carol is nobody's bounce.
    assert_eq!(queue.list().unwrap(), vec![dsn_id]);

    let rec = peer.finish().await;
    assert_eq!(rec.connections.len(), 2);
    assert_eq!(rec.messages(), vec![msg.clone(), msg]);
}

#[tokio::test]
async fn a_550_for_a_local_sender_puts_the_bounce_in_their_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::scripted(vec![script(&[
        Expect("MAIL FROM:<alice@tern.test>"),
        Send("250 2.1.0 ok\r\n"),
        Expect("RCPT TO:<bob@remote.test>"),
        Send("550 5.1.1 <bob@remote.test>: no such user\r\n"),
    ])])
    .await;
    let cfg = config(dir.path(), peer.port(), "");
    let queue = open(&dir);
    let msg = message("bounce-me", 0);
    let id = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &msg),
        &msg,
    );

    let ctx = context(&cfg, queue.clone());
    let after = round::run(ctx.clone(), id.clone()).await;
    drop(ctx);
    let rec = peer.finish().await;

    assert_eq!(after, After::Nothing);
    assert!(
        queue.list().unwrap().is_empty(),
        "failed: removed, no DSN queued"
    );
    assert!(rec.messages().is_empty());
    let bounces = maildir_new(dir.path(), "tern.test", "alice");
    assert_eq!(bounces.len(), 1);
    let bounce = text(&bounces[0]);
    assert!(
        bounce.starts_with("Return-Path: <>\r\nDelivered-To: alice@tern.test\r\n"),
        "{bounce}"
    );
    let (subject, report, headers) = parse_dsn(&bounces[0]);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    assert!(report.contains("\r\nStatus: 5.1.1\r\n"), "{report}");
    assert!(report.contains("Action: failed\r\n"), "{report}");
    assert!(
        report.contains("Remote-MTA: dns; 127.0.0.1\r\n"),
        "{report}"
    );
    assert!(
        report.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user"),
        "{report}"
    );
    assert!(headers.contains("Subject: bounce-me\r\n"), "{headers}");
    assert!(
        !bounce.contains("starts with a dot"),
        "the body is not returned"
    );
}

#[tokio::test]
async fn two_entries_for_one_route_share_a_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let transaction = |n: usize| {
        [
            Expect("MAIL FROM:<alice@tern.test>"),
            Send("250 2.1.0 ok\r\n"),
            Expect("RCPT TO:<bob@remote.test>"),
            Send("250 2.1.5 ok\r\n"),
            Expect("DATA"),
            Send("354 go ahead\r\n"),
            Data,
            Send(if n == 1 {
                "250 2.0.0 queued as P1\r\n"
            } else {
                "250 2.0.0 queued as P2\r\n"
            }),
        ]
    };
    let mut steps = script(&transaction(1));
    // RFC 5321 4.1.1.5: the pooled connection is reset before the next message.
    steps.extend([Expect("RSET"), Send("250 2.0.0 ok\r\n")]);
    steps.extend(transaction(2));
    steps.extend([Expect("QUIT"), Send("221 2.0.0 bye\r\n")]);
    // A second script would let a second connection pass unnoticed: there is none.
    let peer = Peer::scripted(vec![steps]).await;
    let cfg = config(dir.path(), peer.port(), "");
    let queue = open(&dir);
    let first = message("first", 0);
    let second = message("second", 0);
    let id1 = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &first),
        &first,
    );
    let id2 = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &second),
        &second,
    );

    let ctx = context(&cfg, queue.clone());
    assert_eq!(round::run(ctx.clone(), id1).await, After::Nothing);
    assert_eq!(round::run(ctx.clone(), id2).await, After::Nothing);
    // Shutdown's sweep: every pooled connection is closed with QUIT.
    ctx.connector.sweep(true);
    let rec = peer.finish().await;

    assert!(queue.list().unwrap().is_empty());
    assert_eq!(rec.connections.len(), 1, "{:?}", rec.connections);
    let conn = &rec.connections[0];
    assert_eq!(conn.messages, vec![first, second]);
    let verbs: Vec<&str> = conn
        .lines
        .iter()
        .map(|l| l.split([' ', ':']).next().unwrap_or(""))
        .collect();
    assert_eq!(
        verbs,
        ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    );
}

#[tokio::test]
async fn a_looping_message_fails_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    // No script: any connection would be recorded (and refused).
    let peer = Peer::scripted(Vec::new()).await;
    let cfg = config(
        dir.path(),
        peer.port(),
        "[queue]\nmax_received_headers = 3\n",
    );
    let queue = open(&dir);
    // tern's own Received plus three earlier hops: four, one more than allowed.
    let msg = message("loop", 3);
    let id = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &msg),
        &msg,
    );

    let ctx = context(&cfg, queue.clone());
    let after = round::run(ctx.clone(), id.clone()).await;
    drop(ctx);
    let rec = peer.finish().await;

    assert_eq!(after, After::Nothing);
    assert!(rec.connections.is_empty(), "{:?}", rec.connections);
    assert!(queue.list().unwrap().is_empty());
    let bounces = maildir_new(dir.path(), "tern.test", "alice");
    assert_eq!(bounces.len(), 1);
    let (_, report, headers) = parse_dsn(&bounces[0]);
    assert!(report.contains("\r\nStatus: 5.4.6\r\n"), "{report}");
    // tern decided on its own: no remote MTA to name, no SMTP diagnostic; the reason is in
    // the human-readable part.
    assert!(
        !report.contains("Remote-MTA") && !report.contains("Diagnostic-Code"),
        "{report}"
    );
    let bounce = text(&bounces[0]);
    assert!(
        bounce.contains("554 5.4.6 mail loop: the message has 4 Received headers (limit 3)"),
        "{bounce}"
    );
    assert!(headers.contains("Subject: loop\r\n"), "{headers}");
}

#[tokio::test]
async fn the_loop_limit_counts_received_headers_exactly() {
    // At the limit (not above it) the message is delivered.
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::scripted(vec![script(&[
        Expect("MAIL FROM:<alice@tern.test>"),
        Send("250 2.1.0 ok\r\n"),
        Expect("RCPT TO:<bob@remote.test>"),
        Send("250 2.1.5 ok\r\n"),
        Expect("DATA"),
        Send("354 go ahead\r\n"),
        Data,
        Send("250 2.0.0 queued as P1\r\n"),
    ])])
    .await;
    let cfg = config(
        dir.path(),
        peer.port(),
        "[queue]\nmax_received_headers = 3\n",
    );
    let queue = open(&dir);
    let msg = message("three-hops", 2);
    let id = commit(
        &queue,
        &envelope(Some("alice@tern.test"), &["bob@remote.test"], &msg),
        &msg,
    );
    let ctx = context(&cfg, queue.clone());
    assert_eq!(round::run(ctx.clone(), id).await, After::Nothing);
    drop(ctx);
    assert_eq!(peer.finish().await.messages(), vec![msg]);
}
