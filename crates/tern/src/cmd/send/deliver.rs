//! Getting a message to its recipients: through one given server, or straight to each
//! recipient domain's MX hosts, chosen by `tern_dns::mx_targets` with the relay's rules
//! (RFC 5321 5.1: preference order, implicit MX, null MX refused, address literals, at most ten
//! addresses).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tern_client::{
    connect_first, ClientError, ConnectOptions, Envelope, Outcome, Session, TlsFailure,
};
use tern_dns::{mx_targets, Myself, Resolver, Target};
use tern_proto::Address;
use tokio::net::TcpStream;

use tern_queue::RcptOutcome;
use tern_relay::status::{self, Peer};

use super::report::RcptResult;

/// Messages at least this big get a progress bar (when stderr is a terminal).
const PROGRESS_MIN: usize = 1 << 20;

/// The bar moves at most once per this many bytes sent, so drawing it never costs the transfer
/// anything (the client reports every 64 KiB chunk; indicatif also limits its redraws to 20/s).
const PROGRESS_STEP: u64 = 64 * 1024;

/// The whole MX lookup of one domain (MX records, then every MX host's addresses at once) must
/// be done by then; a host still unresolved counts as a temporary failure.
const MX_DEADLINE: Duration = Duration::from_secs(30);

pub enum Route {
    /// A smarthost / submission server: `host` is resolved by the system resolver.
    Server { host: String, port: u16 },
    /// Each recipient domain's MX hosts on `port`.
    Mx {
        port: u16,
        resolver: Arc<dyn Resolver>,
    },
}

/// Delivers `message` from `from` to every recipient; one result per recipient, in input order.
pub async fn deliver(
    route: &Route,
    opts: &ConnectOptions,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<RcptResult> {
    let mut results = match route {
        Route::Server { host, port } => {
            let targets: Vec<Target> = match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => addrs
                    .map(|addr| Target {
                        name: host.clone(),
                        addr,
                    })
                    .collect(),
                Err(e) => {
                    let reply = status::dns_temporary(&format!("cannot resolve {host}: {e}"));
                    return fail_all(rcpts, RcptOutcome::deferred(reply));
                }
            };
            try_targets(&targets, opts, from, rcpts, message).await
        }
        Route::Mx { port, resolver } => {
            let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for r in rcpts {
                let domain = Address::parse(r)
                    .map(|a| a.domain().normalized())
                    .unwrap_or_default();
                by_domain.entry(domain).or_default().push(r.clone());
            }
            // `tern send` is a client, not a hop of this host's relay: an MX record naming this
            // machine is where the mail should go (the local server takes it), so no host name
            // and no listener counts as "this host" here. The server applies the loop rules.
            let myself = Myself::default();
            let mut all = Vec::new();
            for (domain, group) in by_domain {
                let targets =
                    match mx_targets(resolver.as_ref(), &domain, *port, &myself, MX_DEADLINE).await
                    {
                        Ok(t) => t,
                        Err(e) => {
                            all.extend(fail_all(&group, status::target_failure(&e)));
                            continue;
                        }
                    };
                all.extend(try_targets(&targets, opts, from, &group, message).await);
            }
            all
        }
    };
    // Report in the order the recipients were given.
    results.sort_by_key(|r| rcpts.iter().position(|x| *x == r.0).unwrap_or(usize::MAX));
    results
}

/// Tries each target in order until one session is established, then sends once.
/// RFC 5321 5.1: a host that can't be reached or greets with an error is skipped for the next.
async fn try_targets(
    targets: &[Target],
    opts: &ConnectOptions,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<RcptResult> {
    let addrs: Vec<(std::net::SocketAddr, &str)> =
        targets.iter().map(|t| (t.addr, t.name.as_str())).collect();
    match connect_first(&addrs, opts).await {
        Ok((session, i)) => {
            let host = targets.get(i).map_or("", |t| t.name.as_str());
            // No bar under --verbose: the transcript goes to stderr too, and the two would
            // interleave.
            let progress = opts.session.transcript.is_none();
            send_on(session, host, from, rcpts, message, progress).await
        }
        // The relay's rule (RFC 5321 5.1): permanent only when every host refused for good.
        Err(errors) => {
            let failures = errors
                .into_iter()
                .filter_map(|(i, e)| {
                    let t = targets.get(i)?;
                    let peer = Peer {
                        name: &t.name,
                        addr: Some(t.addr.ip()),
                    };
                    let fix = fix_for(&e);
                    // Not `session_failure`: that defers a route's AUTH trouble for the relay
                    // to retry, while a wrong password given to `tern send` is final.
                    let mut outcome = status::rcpt_outcome(peer, Outcome::from_error(e));
                    if let Some(fix) = fix {
                        let text = format!("{}; {fix}", outcome.reply.text());
                        outcome.reply = outcome.reply.with_text(text);
                    }
                    Some((t.name.clone(), outcome))
                })
                .collect();
            fail_all(rcpts, status::connect_failure(failures).1)
        }
    }
}

/// What the user can do about a failure that is `tern send`'s own policy rather than the
/// server's answer: a certificate that did not verify (or would carry a password unverified)
/// names the flags that make it verify.
fn fix_for(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Tls(t)
            if t.is_certificate() && !matches!(t, TlsFailure::FingerprintMismatch { .. }) =>
        {
            Some(format!("to verify this server, {}", super::VERIFY_HINT))
        }
        ClientError::PlaintextAuth => Some(
            "the server offered no usable STARTTLS; use --tls implicit if it listens for TLS \
             (port 465), or add --allow-plaintext-auth to send the password in the clear"
                .into(),
        ),
        _ => None,
    }
}

async fn send_on(
    mut session: Session<TcpStream>,
    host: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
    progress: bool,
) -> Vec<RcptResult> {
    let envelope = match Envelope::parse(from, rcpts.iter().map(String::as_str)) {
        Ok(e) => e,
        Err(e) => {
            return fail_all(
                rcpts,
                RcptOutcome::failed(status::invalid_address(&e.to_string())),
            )
        }
    };
    let bar = progress_bar(message.len(), progress);
    if let Some(pb) = &bar {
        let pb = pb.clone();
        let mut shown = 0u64;
        session.set_progress(Some(Box::new(move |sent, total| {
            if sent >= shown + PROGRESS_STEP || sent >= total {
                shown = sent;
                pb.set_position(sent);
            }
        })));
    }
    let delivery = session.send_message(&envelope, message).await;
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if session.is_usable() {
        let _ = session.quit().await;
    }
    let peer = Peer {
        name: host,
        addr: None,
    };
    delivery
        .per_recipient
        .into_iter()
        .zip(rcpts)
        .map(|((_, outcome), rcpt)| (rcpt.clone(), status::rcpt_outcome(peer, outcome)))
        .collect()
}

/// A bar of the bytes sent during DATA (sent / total, rate, time left), for a message of at
/// least [`PROGRESS_MIN`] bytes when stderr is a terminal and nothing else writes there (`wanted`);
/// never in a pipe, a file or a cron mail, where it would only be noise.
fn progress_bar(len: usize, wanted: bool) -> Option<ProgressBar> {
    if !wanted || len < PROGRESS_MIN || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "sending [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    // Drawn once at the start, so even a transfer faster than the first redraw is shown.
    pb.tick();
    Some(pb)
}

fn fail_all(rcpts: &[String], outcome: RcptOutcome) -> Vec<RcptResult> {
    rcpts.iter().map(|r| (r.clone(), outcome.clone())).collect()
}
