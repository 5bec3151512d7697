//! Walks tests/bad/*.toml: each broken config must be rejected with every `# expect: ...` substring.

use std::path::Path;

use tern_config::{Config, ConfigError};

#[test]
fn every_bad_config_is_rejected_with_its_expected_error() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    assert!(
        files.len() >= 40,
        "expected the folder of bad configs, found {} files",
        files.len()
    );

    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)?;
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        match Config::load_file(path) {
            Ok(_) => failures.push(format!("{}: was accepted", path.display())),
            Err(e @ ConfigError::Read { .. }) => failures.push(format!("{}: {e}", path.display())),
            Err(e) => {
                let message = e.to_string();
                // Every line names the file, so a person knows where to look.
                for line in message.lines() {
                    if !line.starts_with(&path.display().to_string()) {
                        failures.push(format!(
                            "{}: line does not start with the file name: {line}",
                            path.display()
                        ));
                    }
                    if !line.contains("; fix: ") {
                        failures.push(format!("{}: line has no fix: {line}", path.display()));
                    }
                }
                for needle in expected {
                    if !message.contains(needle) {
                        failures.push(format!(
                            "{}: expected {needle:?} in:\n{message}",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
