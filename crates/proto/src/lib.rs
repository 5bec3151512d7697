//! tern's SMTP protocol core, free of I/O so it can be unit-tested and fuzzed: commands,
//! replies, addresses, ESMTP parameters, DATA transparency, EHLO capabilities, SASL, and the
//! message facts several crates need (header section, `Received:` count, RFC 5322 dates).

pub mod address;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod error;
pub mod line;
pub mod message;
pub mod params;
pub mod reply;
pub mod sasl;

pub use address::{Address, AddressError, Domain, ForwardPath, ReversePath};
pub use command::{Command, CommandError, MAX_COMMAND_LINE, MAX_PARAM_LINE};
pub use data::{BareLineEndings, DataDecoder, DataProgress, DataRejection, DotStuffer};
pub use ehlo::Capabilities;
pub use line::{LineEvent, LineReader};
pub use message::{count_received, rfc5322_date, rfc5322_date_at, HeaderScanner, HeaderSection};
pub use params::{
    xtext_decode, xtext_encode, BodyType, MailParams, Notify, Orcpt, RcptParams, Ret, MAX_ENVID,
    MAX_ORCPT,
};
pub use reply::{ec, EnhancedCode, Reply, ReplyError, ReplyParser, Severity};
