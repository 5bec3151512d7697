//! One line per recipient outcome, quoting the server's reply:
//! `tern send: bob@x.test: rejected by mx.x.test: 550 5.1.1 no such user`.
//! The outcomes are the relay's per-recipient type ([`RcptOutcome`], built by
//! `tern_relay::status`), so `tern send` and the queue describe a failure the same way.

use tern_queue::{RcptClass, RcptOutcome};

/// A recipient and what happened to it.
pub type RcptResult = (String, RcptOutcome);

/// `prog: rcpt: accepted by host: 250 ...`, `rejected by host: 550 ...` for a remote reply,
/// `temporary failure: 451 4.4.1 host ...: ...` for a status tern decided on.
pub fn line(prog: &str, rcpt: &str, outcome: &RcptOutcome) -> String {
    let reply = &outcome.reply;
    let detail = match (outcome.class, reply.remote_host()) {
        (RcptClass::Delivered, host) => format!("accepted by {}: {reply}", host.unwrap_or("-")),
        (RcptClass::Deferred, Some(host)) => format!("temporarily rejected by {host}: {reply}"),
        (RcptClass::Failed, Some(host)) => format!("rejected by {host}: {reply}"),
        (RcptClass::Deferred, None) => format!("temporary failure: {reply}"),
        (RcptClass::Failed, None) => format!("permanent failure: {reply}"),
    };
    format!("{prog}: {rcpt}: {detail}")
}

/// The worst class, and the lines to print: every recipient when some failed (so a partial
/// acceptance is never silent), none when all were accepted unless `verbose`.
pub fn summarize(results: &[RcptResult], prog: &str, verbose: bool) -> (RcptClass, Vec<String>) {
    let worst = results
        .iter()
        .map(|(_, o)| o.class)
        .max()
        .unwrap_or(RcptClass::Delivered);
    let lines = if worst != RcptClass::Delivered || verbose {
        results.iter().map(|(r, o)| line(prog, r, o)).collect()
    } else {
        Vec::new()
    };
    (worst, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_client::{Failure, Outcome, Stage};
    use tern_proto::{ec, Reply};
    use tern_relay::status::{self, Peer};

    #[test]
    fn quotes_the_reply() {
        let peer = Peer {
            name: "mx.x.test",
            addr: None,
        };
        let o = Outcome::PermanentFailure(Failure::Reply {
            stage: Stage::Rcpt,
            reply: Reply::new(550, ec(5, 1, 1), "no such user"),
        });
        let r = ("bob@x.test".to_string(), status::rcpt_outcome(peer, o));
        assert_eq!(
            line("tern send", &r.0, &r.1),
            "tern send: bob@x.test: rejected by mx.x.test: 550 5.1.1 no such user"
        );
        let ok = (
            "a@x.test".to_string(),
            status::rcpt_outcome(peer, Outcome::Accepted(Reply::new(250, None, "ok"))),
        );
        assert_eq!(
            line("tern send", &ok.0, &ok.1),
            "tern send: a@x.test: accepted by mx.x.test: 250 ok"
        );
        let (worst, lines) = summarize(&[ok.clone(), r], "tern send", false);
        assert_eq!(worst, RcptClass::Failed);
        assert_eq!(lines.len(), 2);
        assert!(summarize(&[ok], "tern send", false).1.is_empty());
        let local = RcptOutcome::deferred(status::no_host());
        assert_eq!(
            line("tern send", "c@x.test", &local),
            "tern send: c@x.test: temporary failure: 451 4.4.4 no host to deliver to"
        );
    }
}
