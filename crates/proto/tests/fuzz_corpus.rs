//! Replays the committed fuzz corpus (fuzz/seeds/<target> and fuzz/corpus/<target>) through
//! the same invariant checks the fuzz targets run (fuzz/checks/proto.rs), so every input the
//! fuzzer ever kept stays a regression test in `cargo test`.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/checks/proto.rs"]
mod proto_checks;

/// Runs `check` on every file of the target's seed and corpus directories; fails listing every
/// input that panicked, and fails if there are no inputs at all (a moved corpus must not make
/// the test pass vacuously).
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.sort();
    assert!(files.len() >= 5, "only {} inputs for {target}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("corpus file readable");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failures.push(f.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: failing inputs {failures:#?}"
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
