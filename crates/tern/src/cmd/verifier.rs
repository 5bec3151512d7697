//! The verifier the debugging commands (`tern spf check`, `tern dkim verify`) build: the
//! config's `[dns]` nameservers (or `--nameserver`, or the system resolver), its hostname as
//! the authserv-id, and a runtime to run it on.

use std::net::SocketAddr;

use tern_auth::verify::ResolverSettings;
use tern_auth::Verifier;
use tern_config::{ChecksConfig, Config};

use super::dkim::{config, exit, ConfigArg, Failed};

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failed> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed(exit::SOFTWARE, format!("cannot start the runtime: {e}")))
}

/// Must run inside the runtime (hickory's builder needs one).
pub(crate) fn build(
    nameserver: Option<SocketAddr>,
    arg: &ConfigArg,
    checks: ChecksConfig,
) -> Result<Verifier, Failed> {
    let cfg = config(arg)?;
    let nameservers = match (nameserver, &cfg) {
        (Some(ns), _) => vec![ns],
        (None, Some(c)) => c.dns.nameservers.clone(),
        (None, None) => Vec::new(),
    };
    let hostname = cfg.map_or_else(|| Config::defaults().hostname, |c| c.hostname);
    Verifier::new(&ResolverSettings::new(nameservers), checks, &hostname)
        .map_err(|e| Failed(exit::TEMPFAIL, e.to_string()))
}
