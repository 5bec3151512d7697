//! Invariant checks for the `session` fuzz target, shared with the corpus replay in
//! `crates/server/tests/fuzz_corpus.rs`: arbitrary client bytes driven through a `LineReader`,
//! a `Session` and a `DataDecoder` the way `driver.rs` does it, without sockets.
//! Needs `super::proto_checks` (fuzz/checks/proto.rs) for the reply wire check.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use tern_config::Config;
use tern_proto::{DataDecoder, DataProgress, LineEvent, LineReader, MAX_COMMAND_LINE};
use tern_server::session::{Action, DataEnd};
use tern_server::{ConnInfo, ListenerKind, Session};

use super::proto_checks::{chunks, reply_wire};

/// The password `Action::Verify` accepts (no argon2 here: it would make every exec slow).
pub const PASSWORD: &str = "pw";

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

/// Four configurations the first input byte chooses from: defaults; users, aliases, VRFY and
/// EXPN with small limits; submission with AUTH allowed without TLS; catch-all and no relay.
pub fn configs() -> &'static [Arc<Config>] {
    static CONFIGS: OnceLock<Vec<Arc<Config>>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let users = format!(
            "[[users]]\nname = \"alice@tern.test\"\npassword = \"{HASH}\"\n\
             [[users]]\nname = \"bob@tern.test\"\n\
             [aliases]\n\"team@tern.test\" = [\"alice@tern.test\", \"carol@remote.test\"]\n"
        );
        [
            "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n".to_string(),
            format!(
                "hostname = \"mx.tern.test\"\n[smtp]\nbare_line_endings = \"reject\"\n\
                 [local]\ndomains = [\"tern.test\", \"b.test\"]\n\
                 vrfy = true\nexpn = true\n\
                 [limits]\nmax_errors = 1000\nmax_recipients = 3\nmax_message_size = 200\n\
                 max_auth_failures = 1000\n{users}"
            ),
            format!(
                "hostname = \"mx.tern.test\"\n[local]\ndomains = [\"tern.test\"]\n\
                 [submission]\nrequire_tls_for_auth = false\nenforce_sender = true\n\
                 [limits]\nmax_errors = 50\n{users}"
            ),
            format!(
                "hostname = \"mx.tern.test\"\n[smtp]\nbare_line_endings = \"reject\"\n\
                 [local]\ndomains = [\"tern.test\"]\ncatch_all = true\n\
                 [relay]\ntrusted_networks = []\n[limits]\nmax_errors = 1000\n{users}"
            ),
        ]
        .iter()
        .map(
            |toml| match Config::from_toml_str(toml, std::path::Path::new("fuzz.toml")) {
                Ok(c) => Arc::new(c),
                Err(e) => panic!("fuzz config does not load: {e}\n{toml}"),
            },
        )
        .collect()
    })
}

/// What one run did, so the replay test can check the seeds reach deep states.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub replies: usize,
    pub stored: usize,
    pub rejected: usize,
    pub closed: bool,
}

/// Input layout: byte 0 picks the config (bits 0-1), the listener (bits 2-3), TLS already up
/// (bit 4), STARTTLS available (bit 5) and the peer (bit 6: trusted loopback or a remote
/// address); byte 1 seeds the chunking; the rest is what the client sends.
pub fn session(input: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let [mode, seed, rest @ ..] = input else {
        return outcome;
    };
    let cfg = configs()[usize::from(mode & 3)].clone();
    let kind = match (mode >> 2) & 3 {
        0 | 3 => ListenerKind::Smtp,
        1 => ListenerKind::Submission,
        _ => ListenerKind::Submissions,
    };
    let peer = if mode & 0x40 == 0 {
        "127.0.0.1:40000"
    } else {
        "192.0.2.7:40000"
    };
    let conn = ConnInfo {
        peer: peer.parse().expect("literal address"),
        local: "127.0.0.1:25".parse().expect("literal address"),
        kind,
        tls: (mode & 0x10 != 0).then(|| "TLSv1.3 TLS13_AES_128_GCM_SHA256".to_string()),
        tls_available: mode & 0x20 != 0,
    };
    let data_cfg = Arc::clone(&cfg);
    let mut s = Session::new(cfg, conn);
    reply_wire(&s.greeting().to_bytes());
    reply_wire(&s.timeout_reply().to_bytes());
    reply_wire(&s.shutdown_reply().to_bytes());

    let mut reader = LineReader::new(MAX_COMMAND_LINE);
    // Some(decoder, body) while reading DATA.
    let mut data: Option<(DataDecoder, Vec<u8>)> = None;
    for chunk in chunks(rest, *seed, if seed & 1 == 0 { 3 } else { 1024 }) {
        if let Some((decoder, body)) = &mut data {
            match decoder.feed(chunk, body) {
                DataProgress::NeedMore => continue,
                DataProgress::Done { consumed } => {
                    let (decoder, body) = data.take().expect("in DATA");
                    end_data(&mut s, &decoder, &body, &mut outcome);
                    reader.push(&chunk[consumed..]);
                }
            }
        } else {
            reader.push(chunk);
        }
        // Answer every buffered line, as the driver does (pipelining).
        while let Some(event) = reader.next_line() {
            let action = match event {
                LineEvent::Line(line) => {
                    assert!(
                        line.len() < MAX_COMMAND_LINE && !line.contains(&b'\n'),
                        "line reader gave {line:?}"
                    );
                    s.handle_line(&line)
                }
                LineEvent::TooLong => s.line_too_long(),
            };
            let action = match action {
                Action::Verify(creds) => {
                    let ok = creds.password == PASSWORD;
                    let _ = s.auth_delay();
                    s.auth_verified(ok.then_some(creds.username))
                }
                other => other,
            };
            outcome.replies += 1;
            match action {
                Action::Reply(r) => reply_wire(&r.to_bytes()),
                Action::Verify(_) => panic!("auth_verified asked to verify again"),
                Action::Close(r) => {
                    reply_wire(&r.to_bytes());
                    outcome.closed = true;
                    return outcome;
                }
                Action::StartTls(r) => {
                    reply_wire(&r.to_bytes());
                    assert_eq!(r.code(), 220);
                    // RFC 3207 5: nothing pipelined after STARTTLS survives the handshake.
                    reader.clear();
                    s.tls_established("TLSv1.3 TLS13_AES_256_GCM_SHA384".to_string());
                    break;
                }
                Action::StartData(r) => {
                    reply_wire(&r.to_bytes());
                    assert_eq!(r.code(), 354);
                    let mut decoder = tern_server::data::decoder(&data_cfg);
                    let mut body = Vec::new();
                    match reader.drain_into(&mut decoder, &mut body) {
                        DataProgress::Done { .. } => {
                            end_data(&mut s, &decoder, &body, &mut outcome)
                        }
                        DataProgress::NeedMore => {
                            data = Some((decoder, body));
                            break;
                        }
                    }
                }
            }
        }
    }
    outcome
}

/// The end of DATA: the reply is valid, and an accepted message's trace header is one folded
/// header (RFC 5322 2.2.3): CRLF only, every continuation line starts with white space.
fn end_data(s: &mut Session, decoder: &DataDecoder, body: &[u8], outcome: &mut Outcome) {
    match s.finish_data(decoder.verdict(), body) {
        DataEnd::Reject(r) => {
            reply_wire(&r.to_bytes());
            assert!(r.code() >= 400, "rejected with {}", r.code());
            outcome.rejected += 1;
        }
        DataEnd::Store(acc) => {
            assert!(decoder.verdict().is_ok());
            assert!(!acc.recipients.is_empty());
            let h = acc.received.as_bytes();
            assert!(h.starts_with(b"Received: ") && h.ends_with(b"\r\n"));
            let folded = &h[..h.len() - 2];
            for (i, &b) in folded.iter().enumerate() {
                let ok = match b {
                    b'\r' => folded.get(i + 1) == Some(&b'\n'),
                    b'\n' => matches!(folded.get(i + 1), Some(b' ' | b'\t')),
                    _ => true,
                };
                assert!(
                    ok,
                    "Received header not one folded header: {:?}",
                    acc.received
                );
            }
            reply_wire(&tern_server::replies::queued(&acc.id).to_bytes());
            outcome.stored += 1;
        }
    }
}
