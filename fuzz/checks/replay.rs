//! The corpus replay the `fuzz_corpus` tests share (crates/proto, client, config, milter): every file
//! of fuzz/seeds/<target> and fuzz/corpus/<target> through the target's check.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Runs `check` on every input of `target` (paths relative to the crate at `manifest_dir`);
/// fails listing every input that panicked, and fails with fewer than `min` inputs (a moved
/// corpus must not make the test pass vacuously).
pub fn replay(manifest_dir: &str, target: &str, min: usize, check: fn(&[u8])) {
    let root = Path::new(manifest_dir).join("../../fuzz");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.sort();
    assert!(
        files.len() >= min,
        "only {} inputs for {target}",
        files.len()
    );
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
