//! `tern check-config [FILE] [--diff]`: validate a config and print every problem with its key
//! and fix; with `--diff`, also what would change against the config the running server uses
//! (the snapshot `tern serve` keeps in `<data_dir>/run/config.toml`), one line per key.
//!
//! Exit codes: 0 valid, 78 invalid (EX_CONFIG), 66 (EX_NOINPUT) `--diff` without a running
//! server's snapshot.

use std::path::Path;
use std::process::ExitCode;

use tern_config::files::{read_bounded_string, MAX_CONFIG_FILE};
use tern_config::Config;

use super::serve::snapshot_path;

pub fn run(file: Option<&Path>, diff: bool) -> ExitCode {
    let result = match file {
        Some(f) => Config::load_file(f),
        None => Config::discover(None),
    };
    let cfg = match result {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let origin = cfg.source.as_ref().map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    );
    // The [[dkim]] keys are parsed as `serve` parses them, so a key `serve` would
    // refuse (an RSA key under 2048 bits, an EC key) fails here too.
    if let Err(e) = tern_auth::Signer::from_config(&cfg.dkim) {
        eprintln!("{origin}: {e}");
        return ExitCode::from(78); // EX_CONFIG
    }
    println!("{origin}: OK");
    if !diff {
        return ExitCode::SUCCESS;
    }
    let snapshot = snapshot_path(&cfg.data_dir);
    let running = match read_bounded_string(&snapshot, MAX_CONFIG_FILE) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "{}: {e}: no running tern serve found for data_dir {} (the server writes this file when it starts)",
                snapshot.display(),
                cfg.data_dir.display()
            );
            return ExitCode::from(66); // EX_NOINPUT
        }
    };
    let new = match &cfg.source {
        Some(p) => match read_bounded_string(p, MAX_CONFIG_FILE) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                return ExitCode::from(78);
            }
        },
        None => String::new(),
    };
    match tern_config::diff::diff(&running, &new) {
        Ok(changes) if changes.is_empty() => println!("no changes"),
        Ok(changes) => {
            for c in &changes {
                println!("{c}");
            }
            println!(
                "{} {} against the running server; apply with `kill -HUP <pid>` or POST /api/reload",
                changes.len(),
                if changes.len() == 1 { "change" } else { "changes" }
            );
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(78);
        }
    }
    ExitCode::SUCCESS
}
