//! One outcome per recipient (RFC 5321 allows partial acceptance): accepted with the server's
//! final reply, or a temporary / permanent failure with the reply or local cause behind it.

use std::fmt;

use tern_proto::{Reply, Severity};

use crate::error::{ClientError, Stage};

/// Why a recipient was not delivered.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The server said no, at this stage.
    Reply { stage: Stage, reply: Reply },
    /// A local or network problem; no reply to quote.
    Error(ClientError),
}

impl Failure {
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Failure::Reply { reply, .. } => Some(reply),
            Failure::Error(e) => e.reply(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Reply { stage, reply } => write!(f, "{reply} (after {stage})"),
            Failure::Error(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Accepted(Reply),
    TemporaryFailure(Failure),
    PermanentFailure(Failure),
}

/// The class of an outcome, ordered from best to worst (a CLI exits with the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutcomeClass {
    Accepted,
    Temporary,
    Permanent,
}

impl Outcome {
    /// A reply that ends the recipient's fate: 2xx accepted, 5xx permanent, anything else
    /// (4xx, or a 3xx where none belongs) temporary.
    pub fn from_reply(stage: Stage, reply: Reply) -> Outcome {
        match reply.severity() {
            Severity::Positive => Outcome::Accepted(reply),
            Severity::Permanent => Outcome::PermanentFailure(Failure::Reply { stage, reply }),
            Severity::Transient | Severity::Intermediate => {
                Outcome::TemporaryFailure(Failure::Reply { stage, reply })
            }
        }
    }

    pub fn from_error(error: ClientError) -> Outcome {
        if let ClientError::Rejected { stage, reply } = error {
            return Outcome::from_reply(stage, reply);
        }
        if error.is_temporary() {
            Outcome::TemporaryFailure(Failure::Error(error))
        } else {
            Outcome::PermanentFailure(Failure::Error(error))
        }
    }

    pub fn class(&self) -> OutcomeClass {
        match self {
            Outcome::Accepted(_) => OutcomeClass::Accepted,
            Outcome::TemporaryFailure(_) => OutcomeClass::Temporary,
            Outcome::PermanentFailure(_) => OutcomeClass::Permanent,
        }
    }

    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted(_))
    }

    /// The reply to quote (the acceptance or the rejection), if the server gave one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Accepted(r) => Some(r),
            Outcome::TemporaryFailure(f) | Outcome::PermanentFailure(f) => f.reply(),
        }
    }
}

/// The result of one message on one connection.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Every envelope recipient (as `local@domain`, `postmaster` for the bare form) in envelope
    /// order, with its outcome.
    pub per_recipient: Vec<(String, Outcome)>,
    /// The reply to the final dot, when the message data was sent.
    pub data_reply: Option<Reply>,
}

impl Delivery {
    pub fn all_accepted(&self) -> bool {
        self.per_recipient.iter().all(|(_, o)| o.is_accepted())
    }

    /// The worst class among the recipients (Accepted when there are none).
    pub fn worst(&self) -> OutcomeClass {
        self.per_recipient
            .iter()
            .map(|(_, o)| o.class())
            .max()
            .unwrap_or(OutcomeClass::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_classes() {
        let o = |c| Outcome::from_reply(Stage::Rcpt, Reply::new(c, None, "x")).class();
        assert_eq!(o(250), OutcomeClass::Accepted);
        assert_eq!(o(452), OutcomeClass::Temporary);
        assert_eq!(o(354), OutcomeClass::Temporary);
        assert_eq!(o(550), OutcomeClass::Permanent);
        assert!(OutcomeClass::Permanent > OutcomeClass::Temporary);
    }
}
