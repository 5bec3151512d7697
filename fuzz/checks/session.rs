//! Invariant checks for the `session` fuzz target, shared with the corpus replay in
//! `crates/server/tests/fuzz_corpus.rs`: arbitrary client bytes fed to a
//! `tern_server::Connection` (the same sans-I/O connection `driver.rs` runs), its effects carried
//! out without sockets.
//! Needs `super::proto_checks` (fuzz/checks/proto.rs) for the reply wire check.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use tern_config::Config;
use tern_proto::{LineEvent, LineReader, MAX_COMMAND_LINE};
use tern_server::connection::{DataBody, Effect, SpoolOp};
use tern_server::session::FilterVerdict;
use tern_server::{Accepted, ConnInfo, Connection, ListenerKind, Session};

use super::proto_checks::{chunks, reply_wire};

/// The password `Effect::Verify` accepts (no argon2 here: it would make every exec slow).
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
                 [relay]\ntrusted_networks = []\n[limits]\nmax_errors = 1000\n{users}\
                 [[milters]]\nname = \"f\"\naddress = \"inet:127.0.0.1:9\"\n\
                 apply_to = [\"smtp\", \"submission\"]\n"
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

/// The replies the client saw, in order, checked as they arrive.
#[derive(Default)]
struct Replies {
    /// Codes of the replies so far.
    codes: Vec<u16>,
    /// A 354 was answered and the end of that message's data has not been answered yet.
    in_data: bool,
    /// The queue id of the message handed to the store, while its reply is due.
    stored_id: Option<String>,
}

impl Replies {
    /// Splits written bytes into replies; each must be valid on the wire, and the first reply
    /// after a 354 is the end of that data: `250 ... queued as <id>` for the stored message, else
    /// a refusal (4xx/5xx).
    fn wrote(&mut self, bytes: &[u8]) {
        let mut reply_begin = 0;
        let mut line_begin = 0;
        while let Some(len) = bytes[line_begin..].windows(2).position(|w| w == b"\r\n") {
            let line_end = line_begin + len + 2;
            // '-' after the code: more lines of the same reply follow (RFC 5321 4.2.1).
            let last = bytes.get(line_begin + 3) != Some(&b'-');
            line_begin = line_end;
            if last {
                let reply = &bytes[reply_begin..line_end];
                reply_wire(reply);
                self.reply(reply);
                reply_begin = line_end;
            }
        }
        assert_eq!(
            reply_begin,
            bytes.len(),
            "write ends inside a reply: {bytes:?}"
        );
    }

    fn reply(&mut self, wire: &[u8]) {
        let code = u16::from(wire[0] - b'0') * 100
            + u16::from(wire[1] - b'0') * 10
            + u16::from(wire[2] - b'0');
        if std::mem::take(&mut self.in_data) {
            match self.stored_id.take() {
                Some(id) => {
                    let want = format!("250 2.0.0 OK: queued as {id}\r\n");
                    assert_eq!(wire, want.as_bytes(), "reply to a stored message");
                }
                None => assert!(code >= 400, "end of data refused with {code}"),
            }
        }
        if code == 354 {
            self.in_data = true;
        }
        self.codes.push(code);
    }
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
    let max_received = cfg.queue.max_received_headers;
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
    let s = Session::new(cfg, conn);
    reply_wire(&s.timeout_reply().to_bytes());
    reply_wire(&s.shutdown_reply().to_bytes());
    let mut c = Connection::new(s);
    // Bit 7: spill every few octets to the spool, as a server whose DATA memory is spent does.
    if mode & 0x80 != 0 {
        c.set_spill_threshold(usize::from(*seed % 8));
    }
    // What the driver would have in the spool file of the message being received.
    let mut spool: Vec<u8> = Vec::new();
    let mut spooling = false;
    let mut seen = Replies::default();
    seen.wrote(&c.greeting());
    // A message may also come in BDAT chunks (RFC 3030), with no 354 before it: then the
    // input names BDAT somewhere (a weaker check, for those inputs only).
    let bdat_sent = rest.windows(4).any(|w| w.eq_ignore_ascii_case(b"BDAT"));

    // The framing invariant, on the raw stream: no line the reader gives is 512 octets or more,
    // or holds a LF (RFC 5321 4.5.3.1.4).
    let mut framing = LineReader::new(MAX_COMMAND_LINE);
    for chunk in chunks(rest, *seed, if seed & 1 == 0 { 3 } else { 1024 }) {
        framing.push(chunk);
        while let Some(event) = framing.next_line() {
            if let LineEvent::Line(line) = event {
                assert!(
                    line.len() < MAX_COMMAND_LINE && !line.contains(&b'\n'),
                    "line reader gave {line:?}"
                );
            }
        }

        c.feed(chunk);
        while let Some(effect) = c.poll() {
            match effect {
                Effect::Write(bytes) => {
                    if bytes.windows(4).any(|w| w == b"354 ") {
                        // A new message: the last one's spool file was stored or discarded.
                        assert!(!spooling, "a spool file outlived its message");
                    }
                    seen.wrote(&bytes)
                }
                Effect::Spool(SpoolOp::Append(bytes)) => {
                    assert!(seen.in_data || bdat_sent, "spooling outside DATA and BDAT");
                    assert!(!bytes.is_empty(), "an empty spool write");
                    spool.extend_from_slice(&bytes);
                    spooling = true;
                }
                Effect::Spool(SpoolOp::Discard) => {
                    assert!(spooling, "discarding a spool file that does not exist");
                    spool.clear();
                    spooling = false;
                }
                Effect::Close(bytes, _) => {
                    seen.wrote(&bytes);
                    assert!(c.poll().is_none(), "effects after the close");
                    outcome.closed = true;
                    break;
                }
                Effect::StartTls(ticket) => {
                    // RFC 3207 4: the handshake starts right after the 220 went out.
                    assert_eq!(seen.codes.last(), Some(&220), "STARTTLS without its 220");
                    c.tls_established(ticket, "TLSv1.3 TLS13_AES_256_GCM_SHA384".to_string());
                }
                Effect::Verify(creds, ticket) => {
                    let ok = creds.password == PASSWORD;
                    let _ = c.session().auth_delay();
                    c.auth_verified(ticket, ok.then_some(creds.username));
                }
                // No resolver under the fuzzer: SPF at MAIL FROM finds nothing to say.
                Effect::CheckSpf(_, ticket) => c.spf_checked(ticket, None),
                // The milter of the fourth configuration lets everything through, so the
                // filtered steps keep every other invariant (and the corpus its outcomes).
                Effect::Filter(_, ticket) => c.filtered(ticket, FilterVerdict::Continue),
                Effect::Store(acc, body, ticket) => {
                    assert!(
                        seen.in_data || bdat_sent,
                        "a message stored without a 354 or a BDAT"
                    );
                    // The next reply ends this message, as after DATA's dot.
                    seen.in_data = true;
                    let message = match body {
                        DataBody::Memory(m) => {
                            assert!(!spooling, "a message in memory with a spool file");
                            m
                        }
                        DataBody::Spooled { tail } => {
                            assert!(spooling, "a spooled message without a spool file");
                            [std::mem::take(&mut spool), tail].concat()
                        }
                    };
                    spooling = false;
                    // Whatever the pieces, the message stored is one that passed the checks.
                    let header = tern_proto::HeaderSection::find(&message);
                    assert!(
                        header.received_count() < max_received,
                        "a looping message stored"
                    );
                    check_accepted(&acc);
                    seen.stored_id = Some(acc.id.clone());
                    outcome.stored += 1;
                    c.stored(ticket, Ok(()));
                }
            }
        }
        if outcome.closed {
            break;
        }
        // poll() stops only to wait for input, or once closed.
        assert!(c.wants().is_some(), "connection stalled without a close");
    }
    outcome.replies = seen.codes.len() - 1;
    outcome.rejected = c.rejected() as usize;
    outcome
}

/// An accepted message has a recipient and a trace header that is one folded header
/// (RFC 5322 2.2.3): CRLF only, every continuation line starts with white space.
fn check_accepted(acc: &Accepted) {
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
}
