//! tern's configuration: TOML file -> validated, read-only `Config`, with every default in `defaults`.
//!
//! ```
//! use std::path::Path;
//! let config = tern_config::Config::from_toml_str("[limits]\nmax_recipients = 50\n", Path::new("tern.toml")).unwrap();
//! assert_eq!(config.limits.max_recipients, 50);
//! assert!(config.is_local_domain("LOCALHOST."));
//! ```

mod admin;
mod backend;
mod build;
pub mod caps;
pub mod defaults;
pub mod diff;
mod error;
mod fields;
pub mod files;
mod live;
mod load;
mod milters;
mod password;
mod query;
mod raw;
mod srs;
mod tls_rpt;
mod types;
mod values;

pub use admin::{AdminConfig, AdminToken, DEFAULT_ADMIN_PORT, MIN_TOKEN_LEN};
pub use backend::{PostgresQueue, PostgresUrl, QueueBackend, DEFAULT_LEASE_TIME};
pub use error::{ConfigError, Issue};
pub use live::LiveConfig;
pub use load::{ENV_VAR, SYSTEM_PATH};
pub use milters::{MilterAddress, MilterConfig, MilterListener, OnFailure};
pub use srs::{SrsConfig, SrsSecrets, MAX_AGE_DAYS_CAP, MIN_SECRET_LEN};
pub use tls_rpt::TlsRptConfig;
pub use types::{
    BareLineEndings, ChecksConfig, Config, DkimConfig, DnsConfig, Limits, ListenerConfig,
    LmtpAddress, LocalConfig, LocalDelivery, LogConfig, LogFormat, MinDataRate, MinFreeSpace,
    OutboundConfig, QueueConfig, Refusal, RelayConfig, Route, RouteAuth, TlsConfig, TlsPolicy,
    User, LOG_LEVELS,
};

#[cfg(test)]
mod tests;
