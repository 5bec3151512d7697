//! Getting a message to its recipients: through one given server, or straight to each
//! recipient domain's MX hosts (RFC 5321 5.1: preference order, implicit MX, null MX refused).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tern_client::{connect, ClientError, ConnectOptions, Envelope, Outcome, Session};
use tern_dns::{mx_hosts, resolve_host, DnsError, Resolver};
use tern_proto::{Address, Domain};
use tokio::net::TcpStream;

use tern_queue::RcptOutcome;
use tern_relay::status::{self, Peer};

use super::report::RcptResult;

/// Messages at least this big get a progress bar (when stderr is a terminal).
const PROGRESS_MIN: usize = 1 << 20;

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
            let addrs = match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => {
                    let reply = status::dns_temporary(&format!("cannot resolve {host}: {e}"));
                    return fail_all(rcpts, RcptOutcome::deferred(reply));
                }
            };
            try_hosts(&[(host.clone(), addrs)], opts, from, rcpts, message).await
        }
        Route::Mx { port, resolver } => {
            let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for r in rcpts {
                let domain = Address::parse(r)
                    .map(|a| a.domain().normalized())
                    .unwrap_or_default();
                by_domain.entry(domain).or_default().push(r.clone());
            }
            let mut all = Vec::new();
            for (domain, group) in by_domain {
                let hosts = match mx_targets(resolver.as_ref(), &domain, *port).await {
                    Ok(h) => h,
                    Err(e) => {
                        all.extend(fail_all(&group, status::dns_failure(&e)));
                        continue;
                    }
                };
                all.extend(try_hosts(&hosts, opts, from, &group, message).await);
            }
            all
        }
    };
    // Report in the order the recipients were given.
    results.sort_by_key(|r| rcpts.iter().position(|x| *x == r.0).unwrap_or(usize::MAX));
    results
}

/// The (host name, addresses) to try for a domain, in order.
async fn mx_targets(
    resolver: &dyn Resolver,
    domain: &str,
    port: u16,
) -> Result<Vec<(String, Vec<SocketAddr>)>, DnsError> {
    // An address literal (user@[192.0.2.1]) names the host itself (RFC 5321 4.1.3).
    let literal = match Address::parse(&format!("x@{domain}")).map(|a| a.domain().clone()) {
        Ok(Domain::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Ok(Domain::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = literal {
        return Ok(vec![(ip.to_string(), vec![SocketAddr::new(ip, port)])]);
    }
    let mx = mx_hosts(resolver, domain).await?;
    let mut targets = Vec::new();
    let mut last_err = None;
    for host in mx.hosts {
        match resolve_host(resolver, &host.name).await {
            Ok(ips) => targets.push((
                host.name,
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
            )),
            Err(e) => last_err = Some(e),
        }
    }
    match (targets.is_empty(), last_err) {
        (true, Some(e)) => Err(e),
        _ => Ok(targets),
    }
}

/// Tries each address of each host until one session is established, then sends once.
/// RFC 5321 5.1: a host that can't be reached or greets with an error is skipped for the next.
async fn try_hosts(
    hosts: &[(String, Vec<SocketAddr>)],
    opts: &ConnectOptions,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Vec<RcptResult> {
    let mut last: Option<(String, ClientError)> = None;
    for (name, addrs) in hosts {
        for addr in addrs {
            match connect(*addr, name, opts).await {
                Ok(session) => return send_on(session, name, from, rcpts, message).await,
                Err(e) => last = Some((name.clone(), e)),
            }
        }
    }
    match last {
        Some((host, e)) => {
            let peer = Peer {
                name: &host,
                addr: None,
            };
            fail_all(rcpts, status::rcpt_outcome(peer, Outcome::from_error(e)))
        }
        None => fail_all(rcpts, RcptOutcome::deferred(status::no_host())),
    }
}

async fn send_on(
    mut session: Session<TcpStream>,
    host: &str,
    from: &str,
    rcpts: &[String],
    message: &[u8],
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
    let bar = progress_bar(message.len());
    if let Some(pb) = &bar {
        let pb = pb.clone();
        session.set_progress(Some(Box::new(move |sent, _total| pb.set_position(sent))));
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

fn progress_bar(len: usize) -> Option<ProgressBar> {
    if len < PROGRESS_MIN || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("sending {bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
    {
        pb.set_style(style);
    }
    Some(pb)
}

fn fail_all(rcpts: &[String], outcome: RcptOutcome) -> Vec<RcptResult> {
    rcpts.iter().map(|r| (r.clone(), outcome.clone())).collect()
}
