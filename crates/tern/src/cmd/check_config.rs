//! `tern check-config [FILE]`: validate a config and print every problem with its key and fix.

use std::path::Path;
use std::process::ExitCode;

use tern_config::Config;

pub fn run(file: Option<&Path>) -> ExitCode {
    let result = match file {
        Some(f) => Config::load_file(f),
        None => Config::discover(None),
    };
    match result {
        Ok(cfg) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(78) // EX_CONFIG
        }
    }
}
