//! `tern srs`: make an SRS secret file (`keygen`), and show what tern makes of an address with
//! the configured `[srs]` (`forward`: the sender a forwarded copy would get; `reverse`: where a
//! bounce to an SRS address would go). The scheme itself is tern-delivery's `srs` module.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::Subcommand;
use rand::TryRngCore;
use tern_delivery::srs::{Day, Srs};
use tern_proto::Address;

use super::dkim::{config, exit, write_exclusive, ConfigArg, Failed};

const PROG: &str = "tern srs";

/// Random bytes in a new secret (base64 in the file: 44 characters).
const SECRET_BYTES: usize = 32;

#[derive(Subcommand)]
pub enum SrsAction {
    /// Write a new secret file (mode 0600, never over an existing file) for `[srs] secret_file`.
    Keygen {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the SRS sender a copy of mail from SENDER gets when an alias forwards it.
    Forward {
        sender: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print where mail to ADDRESS (one of our SRS addresses) goes, or why it is refused.
    Reverse {
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(action: SrsAction) -> ExitCode {
    let result = match action {
        SrsAction::Keygen { out } => keygen(&out),
        SrsAction::Forward { sender, config } => with_srs(&config, |srs| {
            let sender = parse(&sender)?;
            srs.forward(&sender, Day::today())
                .map(|a| a.to_string())
                .ok_or_else(|| {
                    Failed(
                        exit::MISMATCH,
                        format!("{sender} cannot be rewritten (the SRS address would be longer than 64 octets): forwarded copies keep it"),
                    )
                })
        }),
        SrsAction::Reverse { address, config } => with_srs(&config, |srs| {
            let addr = parse(&address)?;
            if !srs.is_ours(&addr) {
                return Err(Failed(
                    exit::MISMATCH,
                    format!("{addr} is not an SRS address of {}", srs.domain()),
                ));
            }
            srs.reverse(&addr, Day::today())
                .map(|a| a.to_string())
                .map_err(|why| {
                    Failed(
                        exit::MISMATCH,
                        format!("{addr}: {why} (RCPT gets 550 5.1.1)"),
                    )
                })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, message)) => {
            eprintln!("{PROG}: {message}");
            ExitCode::from(code)
        }
    }
}

fn keygen(out: &std::path::Path) -> Result<(), Failed> {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Failed(exit::SOFTWARE, format!("no randomness from the OS: {e}")))?;
    let line = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    write_exclusive(out, line.as_bytes()).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it exists; a secret is never overwritten (addresses made with it may still come back): choose another --out, and to rotate put the new line first in the old file".to_string()
        } else {
            e.to_string()
        };
        Failed(exit::CANTCREAT, format!("cannot write {}: {why}", out.display()))
    })?;
    eprintln!(
        "wrote {} (mode 0600). Add to the config:\n[srs]\nsecret_file = \"{}\"",
        out.display(),
        out.display()
    );
    Ok(())
}

fn parse(text: &str) -> Result<Address, Failed> {
    let bare = text.trim().trim_start_matches('<').trim_end_matches('>');
    Address::parse(bare)
        .map_err(|e| Failed(exit::USAGE, format!("{text:?} is not an address: {e}")))
}

/// Runs `f` with the `[srs]` of the config and prints its answer.
fn with_srs(
    arg: &ConfigArg,
    f: impl FnOnce(Srs<'_>) -> Result<String, Failed>,
) -> Result<(), Failed> {
    let cfg = config(arg)?.ok_or_else(|| {
        Failed(
            exit::CONFIG,
            "no config file (give --config or set TERN_CONFIG)".into(),
        )
    })?;
    let srs = cfg.srs.as_ref().ok_or_else(|| {
        Failed(
            exit::CONFIG,
            "SRS is off: the config has no [srs] secret_file".into(),
        )
    })?;
    println!("{}", f(Srs::new(srs))?);
    Ok(())
}
