//! Replays the committed fuzz corpus (fuzz/seeds/<target> and fuzz/corpus/<target>) through
//! the same invariant checks the fuzz targets run (fuzz/checks/proto.rs), so every input the
//! fuzzer ever kept stays a regression test in `cargo test`.

use std::path::Path;

#[path = "../../../fuzz/checks/proto.rs"]
mod proto_checks;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

/// One target's invariant check: panics on a violation.
type Check = fn(&[u8]);

/// Every seed and corpus input of `target` through `check` (at least 5 of them).
fn replay(target: &str, check: Check) {
    replay::replay(env!("CARGO_MANIFEST_DIR"), target, 5, check);
}

/// Strict xfail: every input in fuzz/known-failures/<target>/ reproduces a reported finding
/// listed in `proto_checks::KNOWN_ISSUES`; once fixed, it no longer fails, and this test says so.
#[test]
fn known_failures_still_fail() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/known-failures");
    let checks: [(&str, Check); 4] = [
        ("command", proto_checks::command),
        ("reply", proto_checks::reply),
        ("address", proto_checks::address),
        ("data", proto_checks::data),
    ];
    let mut fixed = Vec::new();
    for (target, check) in checks {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for f in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let data = std::fs::read(&f).expect("known-failure file readable");
            // Tolerated in the corpus replay, so it must pass there ...
            assert!(
                std::panic::catch_unwind(|| check(&data)).is_ok(),
                "{} fails even with KNOWN_ISSUES tolerated",
                f.display()
            );
            // ... and fail when known issues count.
            if std::panic::catch_unwind(|| proto_checks::strict(|| check(&data))).is_ok() {
                fixed.push(f.display().to_string());
            }
        }
    }
    assert!(
        fixed.is_empty(),
        "fixed (drop the id from KNOWN_ISSUES, move the file to fuzz/seeds/<target>/): {fixed:#?}"
    );
}

#[test]
fn command_corpus() {
    replay("command", proto_checks::command);
}

#[test]
fn reply_corpus() {
    replay("reply", proto_checks::reply);
}

#[test]
fn address_corpus() {
    replay("address", proto_checks::address);
}

#[test]
fn data_corpus() {
    replay("data", proto_checks::data);
}

/// Documented exception 1 (docs/fuzzing.md): an unbracketed 255-octet path parses, but its
/// written form gains the brackets and is refused as too long. If this starts failing, the
/// exception in `proto_checks::command` / `address` can go.
#[test]
fn exception_unbracketed_path_grows() {
    use tern_proto::{AddressError, Command, CommandError};
    let domain = ["a".repeat(63).as_str(); 3].join(".") + ".abc";
    let path = format!("{}@{domain}", "l".repeat(59));
    assert_eq!(path.len(), 255);
    let cmd = Command::parse(format!("MAIL FROM:{path}").as_bytes()).expect("parses");
    let line = cmd.to_line();
    assert_eq!(
        Command::parse(&line[..line.len() - 2]),
        Err(CommandError::BadSender(AddressError::PathTooLong))
    );
}

/// Documented exception 2: a bare CR in reply text is kept by the parser, dropped by the writer.
#[test]
fn exception_bare_cr_in_reply_text() {
    let mut p = tern_proto::ReplyParser::new();
    p.push(b"250 a\rb\r\n").expect("push");
    let r = p.next_reply().expect("valid").expect("complete");
    assert_eq!(r.lines(), ["a\rb".to_string()]);
    assert_eq!(r.to_bytes(), b"250 ab\r\n");
}
