//! `tern spf check --ip IP --from ADDR --helo NAME`: evaluate SPF (RFC 7208) as the port-25
//! listener does at MAIL FROM, and print the result, why, and the Authentication-Results
//! field it would add. For administrators debugging a rejected or marked message.
//!
//! Exit codes: 0 pass; 1 fail or softfail; 2 neutral or none; 3 permerror; 75 temperror
//! (EX_TEMPFAIL: DNS failed, try again); 64 usage; 78 config.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Subcommand;
use tern_auth::AuthResult;

use super::dkim::{exit, ConfigArg, Failed};
use super::verifier;

const PROG: &str = "tern spf";

#[derive(Subcommand)]
pub enum SpfAction {
    /// Evaluate the SPF record of the MAIL FROM domain (of HELO when --from is empty) for a client address.
    Check {
        /// The client's IP address (IPv4 or IPv6).
        #[arg(long)]
        ip: IpAddr,
        /// The MAIL FROM address; "" or "<>" for the null sender (then HELO is checked).
        #[arg(long = "from")]
        from: String,
        /// The HELO/EHLO name the client gave.
        #[arg(long)]
        helo: String,
        /// Ask this DNS server (ip:port) instead of [dns] nameservers or the system resolver.
        #[arg(long)]
        nameserver: Option<SocketAddr>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(action: SpfAction) -> ExitCode {
    let SpfAction::Check {
        ip,
        from,
        helo,
        nameserver,
        config,
    } = action;
    match check(ip, &from, &helo, nameserver, &config) {
        Ok(code) => ExitCode::from(code),
        Err(Failed(code, message)) => {
            eprintln!("{PROG}: {message}");
            ExitCode::from(code)
        }
    }
}

fn check(
    ip: IpAddr,
    from: &str,
    helo: &str,
    nameserver: Option<SocketAddr>,
    config: &ConfigArg,
) -> Result<u8, Failed> {
    let from = from.trim().trim_start_matches('<').trim_end_matches('>');
    if !from.is_empty() && !from.contains('@') {
        return Err(Failed(
            exit::USAGE,
            format!("--from {from:?} is not an address (local@domain), nor empty for <>"),
        ));
    }
    let helo = helo.trim();
    if helo.is_empty() {
        return Err(Failed(exit::USAGE, "--helo must not be empty".into()));
    }
    let rt = verifier::runtime()?;
    rt.block_on(async {
        let v = verifier::build(nameserver, config, tern_config::defaults::CHECKS)?;
        let outcome = v.spf(ip, helo, from).await;
        println!("result: {}", outcome.result);
        println!("domain: {}", outcome.domain);
        if let Some(why) = &outcome.explanation {
            println!("explanation: {why}");
        }
        print!("{}", v.spf_header(&outcome, ip, helo));
        Ok(match outcome.result {
            AuthResult::Pass => 0,
            AuthResult::Fail | AuthResult::SoftFail => 1,
            AuthResult::Neutral | AuthResult::None => 2,
            AuthResult::PermError => 3,
            AuthResult::TempError => exit::TEMPFAIL,
        })
    })
}
