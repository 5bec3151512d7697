//! The checks that talk to tern's own listeners: `ports` (each configured listener greets with
//! 220, after a TLS handshake for implicit TLS, RFC 8314) and `open_relay` (from an address
//! outside `[relay] trusted_networks`, a recipient in a domain that is not ours must be
//! refused, RFC 5321 3.6.2 / RFC 2505). Every step is bounded by [`STEP`]; no message is ever
//! sent (no DATA), and each session ends with QUIT.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use tern_client::{CertCheck, ClientError, HeloName, Session, SessionOptions, Stage, TlsParams};
use tern_proto::command::Command;
use tern_proto::reply::Reply;
use tokio::net::{TcpSocket, TcpStream};

use super::{Check, Context, Status};

/// Connect, handshake, and each reply: a listener that is up answers in well under this.
const STEP: Duration = Duration::from_secs(5);

/// The envelope of the relay probe: a sender domain that cannot exist (RFC 2606 .invalid) and a
/// recipient domain that is not local (RFC 2606 example.net), so a 250 means tern would relay.
const PROBE_FROM: &str = "doctor@example.invalid";
const PROBE_TO: &str = "relay-test@example.net";

fn options() -> SessionOptions {
    let mut opts = SessionOptions::new(HeloName::Name("doctor.invalid".into()));
    let t = &mut opts.timeouts;
    t.connect = STEP;
    t.banner = STEP;
    t.ehlo = STEP;
    t.mail = STEP;
    t.rcpt = STEP;
    t.command = STEP;
    opts
}

/// A listen address as a place to connect to: a wildcard means this host's loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    opts: SessionOptions,
) -> Result<Session<TcpStream>, String> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("cannot open a socket: {e}"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("cannot bind to {ip}: {e}"))?;
    }
    let tcp = match tokio::time::timeout(STEP, socket.connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {target}: {e}")),
        Err(_) => {
            return Err(format!(
                "no answer from {target} within {}s",
                STEP.as_secs()
            ))
        }
    };
    let local = tcp.local_addr().ok();
    let mut session = Session::new(tcp, opts);
    session.set_local_addr(local);
    Ok(session)
}

/// One listener greets: (kind, address, error if not).
async fn greets(kind: &'static str, addr: SocketAddr, hostname: &str) -> Result<String, String> {
    let target = reachable(addr);
    let mut session = connect(target, None, options()).await?;
    if kind == "submissions" {
        // RFC 8314: TLS first. Any certificate will do here; the `tls` check judges it.
        let params = TlsParams::new(hostname, &CertCheck::Any).map_err(|e| e.to_string())?;
        session
            .tls_handshake(&params)
            .await
            .map_err(|e| format!("TLS handshake with {target} failed: {e}"))?;
    }
    let banner = session
        .banner()
        .await
        .map_err(|e| format!("{target} did not greet: {e}"))?;
    let _ = session.quit().await;
    Ok(banner.to_string())
}

/// `ports`: every configured listener accepts a connection and greets with 220.
pub(super) async fn ports(ctx: &Context) -> Check {
    const ID: &str = "ports";
    let listeners: Vec<(&'static str, SocketAddr)> = [
        ("smtp", &ctx.cfg.smtp.listen),
        ("submission", &ctx.cfg.submission.listen),
        ("submissions", &ctx.cfg.submissions.listen),
    ]
    .into_iter()
    .flat_map(|(kind, addrs)| addrs.iter().map(move |a| (kind, *a)))
    .collect();
    if listeners.is_empty() {
        return Check::new(ID, Status::Skip, "no listener is configured");
    }
    // One after another: each is bounded, and a listener that is down refuses at once.
    let mut results = Vec::with_capacity(listeners.len());
    for (kind, addr) in &listeners {
        results.push(greets(kind, *addr, &ctx.hostname).await);
    }
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let mut details = Vec::new();
    for ((kind, addr), result) in listeners.iter().zip(results) {
        match result {
            Ok(banner) => {
                ok.push(format!("{kind} {addr}"));
                details.push(json!({"listener": kind, "address": addr.to_string(), "ok": true, "greeting": banner}));
            }
            Err(e) => {
                bad.push(format!("{kind} {addr}: {e}"));
                details.push(
                    json!({"listener": kind, "address": addr.to_string(), "ok": false, "error": e}),
                );
            }
        }
    }
    if bad.is_empty() {
        Check::new(ID, Status::Ok, format!("{} greet with 220", ok.join(", ")))
            .details(json!(details))
    } else {
        Check::new(ID, Status::Fail, format!("not reachable: {}", bad.join("; ")))
            .fix("is tern serve running? start it (tern serve -c CONFIG) and check its log; a firewall must let the ports in")
            .details(json!(details))
    }
}

/// The addresses the relay probe may connect from, for a listener at `target`: on loopback,
/// other 127/8 addresses (Linux routes all of 127.0.0.0/8 to lo); elsewhere, the listener's own
/// address, which is where the kernel would connect from anyway.
fn sources(target: IpAddr) -> Vec<IpAddr> {
    match target {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let mut c: Vec<IpAddr> = (2..=9)
                .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
                .collect();
            c.push(IpAddr::V4(Ipv4Addr::new(127, 1, 2, 3)));
            c.push(IpAddr::V4(Ipv4Addr::new(127, 254, 254, 254)));
            c
        }
        ip => vec![ip],
    }
}

/// `open_relay`: from an untrusted address, MAIL FROM a foreign sender and RCPT TO a foreign
/// recipient must be refused. A 250 is an open relay: spammers find those within hours.
pub(super) async fn open_relay(ctx: &Context) -> Check {
    const ID: &str = "open_relay";
    let Some(listen) = ctx.cfg.smtp.listen.first() else {
        return Check::new(ID, Status::Skip, "no [smtp] listener to test");
    };
    let target = reachable(*listen);
    let trusted = &ctx.cfg.relay.trusted_networks;
    // A trusted network that takes in the Internet makes an open relay by config, whatever the
    // probe from here would see (it may well be unable to test at all then).
    let public = [
        IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
        IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888)),
    ];
    if let Some((net, ip)) = trusted.iter().find_map(|net| {
        public
            .iter()
            .find(|ip| net.contains(*ip))
            .map(|ip| (net, ip))
    }) {
        return Check::new(
            ID,
            Status::Fail,
            format!("OPEN RELAY by config: [relay] trusted_networks has {net}, which takes in Internet addresses such as {ip}: anyone there may relay through this server"),
        )
        .fix("list only your own networks in [relay] trusted_networks (e.g. 127.0.0.0/8, ::1, your LAN); remote users should authenticate on submission")
        .details(json!({"trusted_network": net.to_string()}));
    }
    let Some(source) = sources(target.ip())
        .into_iter()
        .find(|ip| !trusted.iter().any(|net| net.contains(ip)))
    else {
        return Check::new(
            ID,
            Status::Skip,
            format!(
                "cannot test from here: every address this host could connect to {target} from is in [relay] trusted_networks"
            ),
        )
        .details(json!({"target": target.to_string()}));
    };
    let details = json!({"target": target.to_string(), "source": source.to_string()});
    match probe(target, source).await {
        Probe::Refused(reply) => Check::new(
            ID,
            Status::Ok,
            format!("not an open relay: from {source}, RCPT TO:<{PROBE_TO}> got {reply}"),
        )
        .details(details),
        Probe::Accepted(reply) => Check::new(
            ID,
            Status::Fail,
            format!("OPEN RELAY: from untrusted {source}, RCPT TO:<{PROBE_TO}> got {reply}"),
        )
        .fix("relay only for [relay] trusted_networks and authenticated users: narrow trusted_networks to the hosts that really send through this server")
        .details(details),
        Probe::Inconclusive(why) => Check::new(ID, Status::Warn, format!("cannot tell: {why}"))
            .fix("is tern serve running? then check its log for why the session ended")
            .details(details),
    }
}

enum Probe {
    Refused(String),
    Accepted(String),
    Inconclusive(String),
}

fn line(cmd: &str) -> Result<Command, String> {
    Command::parse(cmd.as_bytes()).map_err(|e| format!("{cmd}: {e:?}"))
}

async fn probe(target: SocketAddr, source: IpAddr) -> Probe {
    let mut session = match connect(target, Some(source), options()).await {
        Ok(s) => s,
        Err(e) => return Probe::Inconclusive(e),
    };
    let result = exchange(&mut session).await;
    // Never DATA: end the transaction and the session whatever happened.
    if session.is_usable() {
        let _ = session.rset().await;
        let _ = session.quit().await;
    }
    result
}

async fn exchange(session: &mut Session<TcpStream>) -> Probe {
    if let Err(e) = session.banner().await {
        return Probe::Inconclusive(format!("no greeting: {e}"));
    }
    if let Err(e) = session.ehlo().await {
        return Probe::Inconclusive(format!("EHLO: {e}"));
    }
    let (mail, rcpt) = match (
        line(&format!("MAIL FROM:<{PROBE_FROM}>")),
        line(&format!("RCPT TO:<{PROBE_TO}>")),
    ) {
        (Ok(m), Ok(r)) => (m, r),
        (Err(e), _) | (_, Err(e)) => return Probe::Inconclusive(e),
    };
    match session.command(Stage::Mail, &mail, STEP).await {
        Ok(r) if r.is_positive() => {}
        Ok(r) => return Probe::Inconclusive(format!("MAIL FROM:<{PROBE_FROM}> refused: {r}")),
        Err(e) => return Probe::Inconclusive(describe(&e)),
    }
    match session.command(Stage::Rcpt, &rcpt, STEP).await {
        Ok(r) => judge(&r),
        Err(e) => Probe::Inconclusive(describe(&e)),
    }
}

/// RFC 5321 4.2: 2yz accepts the recipient; 4yz/5yz refuse it (a 4yz is a refusal for this
/// probe: the recipient is not taken now, and tern's relay denial is 5yz anyway).
fn judge(reply: &Reply) -> Probe {
    match reply.code() / 100 {
        2 => Probe::Accepted(reply.to_string()),
        4 | 5 => Probe::Refused(reply.to_string()),
        _ => Probe::Inconclusive(format!("unexpected reply to RCPT: {reply}")),
    }
}

fn describe(e: &ClientError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_probes_come_from_other_loopback_addresses() {
        let s = sources("127.0.0.1".parse().unwrap());
        assert!(!s.contains(&"127.0.0.1".parse().unwrap()));
        assert!(s.iter().all(|ip| ip.is_loopback()));
        let public: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(sources(public), vec![public]);
        assert_eq!(
            reachable("0.0.0.0:25".parse().unwrap()),
            "127.0.0.1:25".parse().unwrap()
        );
    }
}
