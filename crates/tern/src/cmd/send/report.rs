//! One line per recipient outcome, quoting the server's reply:
//! `tern send: bob@x.test: rejected by mx.x.test: 550 5.1.1 no such user`.

use tern_client::{ClientError, Failure, Outcome, OutcomeClass};
use tern_proto::Reply;

/// What happened to one recipient, and where.
#[derive(Debug, Clone)]
pub struct RcptResult {
    pub rcpt: String,
    pub class: OutcomeClass,
    pub detail: String,
}

impl RcptResult {
    pub fn from_outcome(rcpt: String, host: &str, outcome: &Outcome) -> Self {
        let (class, detail) = match outcome {
            Outcome::Accepted(reply) => (
                OutcomeClass::Accepted,
                format!("accepted by {host}: {reply}"),
            ),
            Outcome::TemporaryFailure(f) => (OutcomeClass::Temporary, describe(host, f, true)),
            Outcome::PermanentFailure(f) => (OutcomeClass::Permanent, describe(host, f, false)),
        };
        Self {
            rcpt,
            class,
            detail,
        }
    }

    /// A failure described by `detail` (already phrased, see [`error_detail`] / [`kind`]).
    pub fn failed(rcpt: String, temporary: bool, detail: String) -> Self {
        let class = if temporary {
            OutcomeClass::Temporary
        } else {
            OutcomeClass::Permanent
        };
        Self {
            rcpt,
            class,
            detail,
        }
    }

    pub fn line(&self, prog: &str) -> String {
        format!("{prog}: {}: {}", self.rcpt, self.detail)
    }
}

fn describe(host: &str, f: &Failure, temporary: bool) -> String {
    match f {
        Failure::Reply { reply, .. } => rejected(host, reply, temporary),
        Failure::Error(e) => error_detail(host, e),
    }
}

fn rejected(host: &str, reply: &Reply, temporary: bool) -> String {
    if temporary {
        format!("temporarily rejected by {host}: {reply}")
    } else {
        format!("rejected by {host}: {reply}")
    }
}

/// "temporary failure" / "permanent failure".
pub fn kind(temporary: bool) -> &'static str {
    if temporary {
        "temporary failure"
    } else {
        "permanent failure"
    }
}

/// How a connection-level error reads: the server's reply when there is one, else the cause.
pub fn error_detail(host: &str, e: &ClientError) -> String {
    match e.reply() {
        Some(reply) => rejected(host, reply, e.is_temporary()),
        None => format!("{} with {host}: {e}", kind(e.is_temporary())),
    }
}

/// The worst class, and the lines to print: every recipient when some failed (so a partial
/// acceptance is never silent), none when all were accepted unless `verbose`.
pub fn summarize(results: &[RcptResult], prog: &str, verbose: bool) -> (OutcomeClass, Vec<String>) {
    let worst = results
        .iter()
        .map(|r| r.class)
        .max()
        .unwrap_or(OutcomeClass::Accepted);
    let lines = if worst != OutcomeClass::Accepted || verbose {
        results.iter().map(|r| r.line(prog)).collect()
    } else {
        Vec::new()
    };
    (worst, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_client::Stage;
    use tern_proto::ec;

    #[test]
    fn quotes_the_reply() {
        let o = Outcome::PermanentFailure(Failure::Reply {
            stage: Stage::Rcpt,
            reply: Reply::new(550, ec(5, 1, 1), "no such user"),
        });
        let r = RcptResult::from_outcome("bob@x.test".into(), "mx.x.test", &o);
        assert_eq!(
            r.line("tern send"),
            "tern send: bob@x.test: rejected by mx.x.test: 550 5.1.1 no such user"
        );
        let ok = RcptResult::from_outcome(
            "a@x.test".into(),
            "mx.x.test",
            &Outcome::Accepted(Reply::new(250, None, "ok")),
        );
        let (worst, lines) = summarize(&[ok.clone(), r], "tern send", false);
        assert_eq!(worst, OutcomeClass::Permanent);
        assert_eq!(lines.len(), 2);
        assert!(summarize(&[ok], "tern send", false).1.is_empty());
    }
}
