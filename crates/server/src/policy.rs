//! Relay rights, the one recipient decision the server makes itself: a client may have mail
//! relayed to remote domains only when it authenticated or connects from `relay.trusted_networks`
//! (never an open relay). Where each recipient goes is the router's decision
//! (`tern_delivery::router`), named here for the session.

use std::net::IpAddr;

use tern_config::Config;

pub use tern_delivery::router::{
    decide_recipient, expand, is_local_domain, local_mailbox_exists, postmaster_address, verify,
    RcptDecision, Target,
};

/// Whether mail from this client may go to remote domains.
pub fn relay_allowed(cfg: &Config, authenticated: bool, client_ip: IpAddr) -> bool {
    authenticated || cfg.is_trusted(client_ip)
}
