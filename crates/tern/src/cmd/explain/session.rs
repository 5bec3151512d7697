//! The inbound half of `tern explain`: a real `tern_server::Session` (the state machine every
//! connection runs) is driven through EHLO, STARTTLS, AUTH, MAIL, RCPT and DATA without a
//! socket, so every reply shown is the one the server would send and every recipient's targets
//! are the ones the router gives the intake. Nothing here decides anything on its own: it only
//! stands in for the parts that need I/O (the TLS handshake, the password check, the SPF lookup,
//! the content filters) and says so in the transcript.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use tern_config::Config;
use tern_proto::Reply;
use tern_server::session::{Action, DataEnd, FilterVerdict, MessageFacts};
use tern_server::{Accepted, ConnInfo, ListenerKind, Session};

/// One command of the simulated session and the reply the server gives it.
pub struct Step {
    pub command: String,
    pub reply: Reply,
    /// What explain stood in for at this step, when anything (e.g. the TLS handshake).
    pub note: Option<String>,
}

/// What the simulated session found.
pub struct Simulated {
    pub steps: Vec<Step>,
    /// EHLO keywords before STARTTLS, and after it when TLS was negotiated.
    pub ehlo_plain: Vec<String>,
    pub ehlo_tls: Option<Vec<String>>,
    /// The AUTH reply, when --auth was given.
    pub auth: Option<Reply>,
    /// The user name the session holds after AUTH (canonical, from `[[users]]`).
    pub authenticated: Option<String>,
    pub mail: Reply,
    /// SPF ran at MAIL FROM (`checks.spf_fail_reject`), with its result standing in as none.
    pub spf_at_mail: bool,
    /// The content filters were asked at some step (`[[milters]]`).
    pub filtered: bool,
    /// One reply per recipient, in the order given.
    pub rcpts: Vec<(String, Reply)>,
    /// What the session hands the intake at the end of DATA, when any recipient was accepted.
    pub accepted: Option<Accepted>,
    /// Why the end of DATA did not produce a message to store, when it did not.
    pub data_refused: Option<Reply>,
}

pub struct Client<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub kind: ListenerKind,
    pub helo: &'a str,
    pub auth: Option<&'a str>,
    pub from: &'a str,
    pub rcpts: &'a [String],
    /// The message the DATA step stands in with (the From: is the sender).
    pub message: &'a [u8],
}

/// What the TLS layer reports after the handshake explain does not make.
const ASSUMED_TLS: &str = "TLS (assumed by tern explain)";

pub fn run(cfg: Arc<Config>, client: &Client<'_>) -> Simulated {
    let implicit_tls = client.kind == ListenerKind::Submissions;
    let conn = ConnInfo {
        peer: client.peer,
        local: client.local,
        kind: client.kind,
        // RFC 8314 3.3: port 465 starts with the handshake, before the greeting.
        tls: implicit_tls.then(|| ASSUMED_TLS.to_string()),
        // As the listener sets it: STARTTLS is offered when a certificate is configured.
        tls_available: cfg.tls.is_some(),
    };
    let mut s = Session::new(cfg.clone(), conn);
    let mut steps = Vec::new();
    let mut filtered = false;

    let ehlo_cmd = format!("EHLO {}", client.helo);
    let ehlo = answer(&mut s, &ehlo_cmd, &mut filtered);
    let ehlo_plain = keywords(&ehlo);
    steps.push(step(ehlo_cmd.clone(), ehlo, None));

    // A client that is offered STARTTLS uses it (every MTA and MUA does); the handshake itself
    // is not made, the session is told it succeeded, as the driver tells it.
    let mut ehlo_tls = None;
    if ehlo_plain.iter().any(|k| k == "STARTTLS") {
        if let Action::StartTls(reply) = s.handle_line(b"STARTTLS") {
            steps.push(step(
                "STARTTLS".into(),
                reply,
                Some("handshake assumed to succeed".into()),
            ));
            s.tls_established(ASSUMED_TLS.to_string());
            let again = answer(&mut s, &ehlo_cmd, &mut filtered);
            ehlo_tls = Some(keywords(&again));
            steps.push(step(ehlo_cmd.clone(), again, None));
        }
    } else if implicit_tls {
        ehlo_tls = Some(ehlo_plain.clone());
    }

    let mut auth = None;
    if let Some(user) = client.auth {
        // AUTH PLAIN (RFC 4616) with a placeholder password: the password check is the one
        // step explain cannot make, so the session is told it passed for this user, exactly
        // as the driver reports a good password (the canonical `[[users]]` name).
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0(password not checked)"));
        let line = format!("AUTH PLAIN {token}");
        let shown = "AUTH PLAIN <credentials>".to_string();
        let (reply, note) = match s.handle_line(line.as_bytes()) {
            Action::Verify(_) => {
                let canonical = cfg.user(user).map(|u| u.name.clone());
                (
                    action_reply(s.auth_verified(canonical)),
                    Some("password assumed correct".to_string()),
                )
            }
            other => (action_reply(other), None),
        };
        auth = Some(reply.clone());
        steps.push(step(shown, reply, note));
    }

    let mail_cmd = format!("MAIL FROM:<{}>", client.from);
    let act = s.handle_line(mail_cmd.as_bytes());
    let spf_at_mail = matches!(act, Action::CheckSpf(_));
    let mail = action_reply(settle(&mut s, act, &mut filtered));
    steps.push(step(
        mail_cmd,
        mail.clone(),
        spf_at_mail.then(|| {
            "SPF is checked here (checks.spf_fail_reject); a fail would be refused 550 5.7.23, \
             the result is not looked up by explain"
                .to_string()
        }),
    ));

    let mut rcpts = Vec::new();
    for rcpt in client.rcpts {
        let cmd = format!("RCPT TO:<{rcpt}>");
        let reply = answer(&mut s, &cmd, &mut filtered);
        rcpts.push((rcpt.clone(), reply.clone()));
        steps.push(step(cmd, reply, None));
    }

    let mut accepted = None;
    let mut data_refused = None;
    if rcpts.iter().any(|(_, r)| r.is_positive()) && mail.is_positive() {
        let act = s.handle_line(b"DATA");
        let act = settle(&mut s, act, &mut filtered);
        match act {
            Action::StartData(reply) => {
                steps.push(step("DATA".into(), reply, None));
                match s.finish_data(Ok(()), &MessageFacts::of(client.message)) {
                    DataEnd::Store(a) => accepted = Some(a),
                    DataEnd::Reject(r) | DataEnd::Discard(r) => data_refused = Some(r),
                }
            }
            other => {
                let reply = action_reply(other);
                steps.push(step("DATA".into(), reply.clone(), None));
                data_refused = Some(reply);
            }
        }
    }
    Simulated {
        authenticated: s.authenticated().map(str::to_string),
        steps,
        ehlo_plain,
        ehlo_tls,
        auth,
        mail,
        spf_at_mail,
        filtered,
        rcpts,
        accepted,
        data_refused,
    }
}

/// Runs one command line and returns the reply the client would read.
fn answer(s: &mut Session, line: &str, filtered: &mut bool) -> Reply {
    let act = s.handle_line(line.as_bytes());
    action_reply(settle(s, act, filtered))
}

/// Answers the session's requests that need I/O the way an uneventful connection would: the
/// content filters say continue (their verdict is theirs, not the configuration's), SPF at MAIL
/// FROM gives no result.
fn settle(s: &mut Session, mut act: Action, filtered: &mut bool) -> Action {
    for _ in 0..4 {
        act = match act {
            Action::Filter(_) => {
                *filtered = true;
                s.filtered(FilterVerdict::Continue)
            }
            Action::CheckSpf(_) => s.spf_checked(None),
            other => return other,
        };
    }
    act
}

fn action_reply(act: Action) -> Reply {
    match act {
        Action::Reply(r) | Action::StartData(r) | Action::StartTls(r) | Action::Close(r) => r,
        // Not reached for the commands explain sends; a reply that says so rather than a panic.
        Action::Verify(_) | Action::CheckSpf(_) | Action::Filter(_) => Reply::new(
            451,
            tern_proto::ec(4, 3, 0),
            "tern explain: the session asked for a step explain does not simulate",
        ),
    }
}

/// The EHLO keywords (RFC 5321 4.1.1.1: every line after the first), e.g. `STARTTLS`, `AUTH`.
fn keywords(reply: &Reply) -> Vec<String> {
    reply
        .lines()
        .iter()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_ascii_uppercase)
        .collect()
}

fn step(command: String, reply: Reply, note: Option<String>) -> Step {
    Step {
        command,
        reply,
        note,
    }
}
