//! One module per subcommand.

pub mod cert;
pub mod check_config;
pub mod dkim;
mod dkim_verify;
pub mod doctor;
pub mod explain;
pub mod passwd;
pub mod queue;
pub mod send;
pub mod sendmail;
pub mod serve;
pub mod spf;
pub mod srs;
mod verifier;
