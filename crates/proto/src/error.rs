//! Why a command line was not accepted: shared by the command parser and the MAIL/RCPT
//! parameter parser, and mapped by the server to its replies.

use crate::address::AddressError;

/// Why a command line was not accepted; the server maps each kind to its reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command unrecognized")]
    Unrecognized,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    #[error("unsupported parameter {0}")]
    UnsupportedParam(String),
    #[error("invalid value for parameter {0}")]
    BadParamValue(String),
}
