//! Replays the committed `session` fuzz corpus (fuzz/seeds/session and fuzz/corpus/session)
//! through the fuzz target's own checks (fuzz/checks/session.rs) in `cargo test`.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/checks/proto.rs"]
mod proto_checks;
#[path = "../../../fuzz/checks/session.rs"]
mod session_checks;

use session_checks::{session, Outcome};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("seeds/session").join(name)).expect("seed file")
}

#[test]
fn fuzz_configs_load() {
    assert_eq!(session_checks::configs().len(), 4);
}

/// The harness really drives a session to the end of DATA: the seeds reach the states they
/// were written for (so a harness that silently stops early fails here).
#[test]
fn seeds_reach_their_states() {
    let o = session(&seed("seed-transaction"));
    assert_eq!((o.stored, o.rejected, o.closed), (1, 0, true), "{o:?}");
    // The same bytes one to three at a time end the same way.
    let o = session(&seed("seed-transaction-bytewise"));
    assert_eq!((o.stored, o.rejected, o.closed), (1, 0, true), "{o:?}");
    // <LF>.<LF> does not end the data; the message is refused at the real end (RFC 5321 2.3.8).
    let o = session(&seed("smuggling"));
    assert_eq!((o.stored, o.rejected, o.closed), (0, 1, true), "{o:?}");
    // 51 Received headers, over the default queue.max_received_headers (RFC 5321 6.3).
    let o = session(&seed("mail-loop"));
    assert_eq!((o.stored, o.rejected, o.closed), (0, 1, true), "{o:?}");
    let o = session(&seed("too-big"));
    assert_eq!((o.stored, o.rejected), (0, 1), "{o:?}");
    let o = session(&seed("auth-plain-submission"));
    assert_eq!((o.stored, o.closed), (1, true), "{o:?}");
    let o = session(&seed("errors-until-close"));
    assert!(o.closed && o.replies < 30, "{o:?}");
    // A message in BDAT chunks (RFC 3030), one holding a fake end of data and a command.
    let o = session(&seed("bdat-transaction"));
    assert_eq!((o.stored, o.rejected, o.closed), (1, 0, true), "{o:?}");
    let o = session(&seed("bdat-spooled"));
    assert_eq!((o.stored, o.rejected, o.closed), (1, 0, true), "{o:?}");
    assert_eq!(session(b"\x00"), Outcome::default());
}

#[test]
fn session_corpus() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join("session")) else {
            continue;
        };
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.sort();
    assert!(files.len() >= 5, "only {} session inputs", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("corpus file readable");
        if std::panic::catch_unwind(|| session(&data)).is_err() {
            failures.push(f.display().to_string());
        }
    }
    assert!(failures.is_empty(), "session: failing inputs {failures:#?}");
}
