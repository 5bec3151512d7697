//! The `tern` binary: one executable for the server, the sending tools and administration.
//! Invoked as `sendmail` (a symlink), it behaves as the sendmail-compatible submission tool.

mod cmd;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "tern: a mail transfer agent and sending tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SMTP server (embedded defaults when no config is found).
    Serve {
        /// Config file (default: $TERN_CONFIG, else /etc/tern/tern.toml if present, else built-in defaults).
        #[arg(long, short = 'c', env = "TERN_CONFIG")]
        config: Option<PathBuf>,
        /// Log lines as `text` or `json` (one object per line, for log shippers); overrides [log] format.
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<tern_config::LogFormat>,
    },
    /// Validate a config file and print every problem with its key and fix.
    CheckConfig {
        /// The file to check (default: the one `serve` would use).
        file: Option<PathBuf>,
        /// The file to check, as `serve -c` names it (the same as FILE).
        #[arg(long, short = 'c', conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Also show what would change against the running server (`<data_dir>/run/config.toml`).
        #[arg(long)]
        diff: bool,
    },
    /// Read a password on stdin and print its argon2id hash for `[[users]] password`.
    Passwd,
    /// Compose a message (text, HTML, attachments) and send it; see `tern send --help`.
    Send(Box<cmd::send::SendArgs>),
    /// sendmail-compatible submission to the local tern (flags: -t -i -oi -f -F -v, -- ...).
    Sendmail {
        /// sendmail flags and recipients, passed through unparsed.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Inspect and manage the mail queue: list, show, flush, hold, release, delete, bounce.
    Queue(cmd::queue::QueueArgs),
    /// DKIM keys: keygen (new key + DNS record), record (print it again), check (against the DNS); verify a message.
    Dkim {
        #[command(subcommand)]
        action: cmd::dkim::DkimAction,
    },
    /// SPF: check (evaluate a sender's record for a client address, as port 25 does at MAIL FROM).
    Spf {
        #[command(subcommand)]
        action: cmd::spf::SpfAction,
    },
    /// SRS for forwarded mail: keygen (a new secret file), forward / reverse (what tern makes of an address).
    Srs {
        #[command(subcommand)]
        action: cmd::srs::SrsAction,
    },
    /// Print what tern would do with a message (listener rules, routing, MX, TLS, DKIM, limits) without sending it.
    Explain(Box<cmd::explain::ExplainArgs>),
    /// Check this server's own setup against live DNS and itself (MX, FCrDNS, SPF, DKIM, DMARC, TLS, ports, open relay).
    Doctor(cmd::doctor::DoctorArgs),
    /// Certificates for testing TLS.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Subcommand)]
enum CertAction {
    /// Write a self-signed cert.pem and key.pem (for tests; use a CA-issued chain in production).
    SelfSigned {
        /// Host name the certificate is for.
        #[arg(long)]
        host: String,
        /// Directory to write cert.pem and key.pem into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Replace existing cert.pem and key.pem (a symlink is removed, never followed).
        #[arg(long)]
        force: bool,
    },
}

fn parse_log_format(s: &str) -> Result<tern_config::LogFormat, String> {
    match s {
        "text" => Ok(tern_config::LogFormat::Text),
        "json" => Ok(tern_config::LogFormat::Json),
        _ => Err(format!("{s:?}: use text or json")),
    }
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // sendmail's flags (-oi, -FName, -odq...) don't fit clap: route them before parsing.
    if invoked_as == "sendmail" {
        return cmd::sendmail::run_args(std::env::args_os().skip(1).collect());
    }
    // Usage errors exit with EX_USAGE (64, sysexits.h), as `tern send` documents; help is 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    match cli.command {
        Command::Serve { config, log_format } => cmd::serve::run(config.as_deref(), log_format),
        Command::CheckConfig { file, config, diff } => {
            cmd::check_config::run(file.or(config).as_deref(), diff)
        }
        Command::Passwd => cmd::passwd::run(),
        Command::Send(args) => cmd::send::run(args),
        Command::Sendmail { args } => cmd::sendmail::run_args(args),
        Command::Queue(args) => cmd::queue::run(args),
        Command::Dkim { action } => cmd::dkim::run(action),
        Command::Spf { action } => cmd::spf::run(action),
        Command::Srs { action } => cmd::srs::run(action),
        Command::Explain(args) => cmd::explain::run(*args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Cert {
            action:
                CertAction::SelfSigned {
                    host,
                    out_dir,
                    force,
                },
        } => cmd::cert::self_signed(&host, &out_dir, force),
    }
}
