//! `tern explain`: what tern would do with a message, without sending it. The inbound answers
//! come from driving the server's own session state machine ([`session`]), the routing from the
//! relay's own route code ([`relay`]), the DKIM key from the signer itself (it signs a stand-in
//! message and the signature's tags are read back), so explain cannot disagree with the server:
//! it runs the same code, only the I/O is left out. One report is built as JSON and printed as
//! such (`--json`) or as text ([`render`]).
//!
//! Exit codes (sysexits.h): 0 everything would be accepted, 1 something would be refused
//! (AUTH, MAIL, a recipient or the message), 64 usage, 78 config error.

mod relay;
mod render;
mod session;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use tern_config::Config;
use tern_delivery::router::{self, Target};
use tern_delivery::srs::{forwarded_sender, Day};
use tern_delivery::Inbound;
use tern_proto::{Address, Reply};
use tern_server::{policy, ListenerKind};

const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;
const EX_SOFTWARE: u8 = 70;

/// The client explain assumes when no --ip is given: an address of TEST-NET-1 (RFC 5737),
/// which no trusted network of a real configuration holds, so the answer is the one for a
/// stranger on the internet.
pub const DEFAULT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const DEFAULT_HELO: &str = "client.example";

const EXIT_HELP: &str = "Exit codes: 0 everything would be accepted, 1 something would be refused \
(AUTH, MAIL FROM, a recipient, the message), 64 usage error, 78 config error.\n\
Nothing is sent and no password is checked: --auth USER stands for a successful login as USER.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListenerArg {
    /// Port 25 (`[smtp] listen`).
    Smtp,
    /// Port 587 (`[submission] listen`): STARTTLS, then AUTH.
    Submission,
    /// Port 465 (`[submissions] listen`): implicit TLS, then AUTH.
    Submissions,
}

/// Explain what tern would do with a message from --from to each --to, without sending it.
#[derive(Debug, Args)]
#[command(after_help = EXIT_HELP)]
pub struct ExplainArgs {
    /// Envelope sender (MAIL FROM), also taken as the From: header's address for DKIM; "" for
    /// the null sender.
    #[arg(long, value_name = "ADDRESS")]
    pub from: String,
    /// Recipient (RCPT TO); repeat for more.
    #[arg(long, value_name = "ADDRESS", required = true)]
    pub to: Vec<String>,
    /// The client's address (default 192.0.2.1, an untrusted internet client, RFC 5737).
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// The client's EHLO name.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_HELO)]
    pub helo: String,
    /// Explain for a client that logged in as this `[[users]]` name (the password is not
    /// checked); implies --listener submission.
    #[arg(long, value_name = "USER")]
    pub auth: Option<String>,
    /// The listener the client connects to (default: smtp, or submission with --auth).
    #[arg(long, value_enum)]
    pub listener: Option<ListenerArg>,
    /// Config file (default: $TERN_CONFIG, else /etc/tern/tern.toml if present, else built-in defaults).
    #[arg(long, short = 'c', env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExplainArgs) -> ExitCode {
    let cfg = match Config::discover(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern explain: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    // The server refuses to start with a key it cannot use; so does explain.
    let signer = match tern_auth::Signer::from_config(&cfg.dkim) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern explain: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let kind = match (args.listener, &args.auth) {
        (Some(ListenerArg::Smtp), _) | (None, None) => ListenerKind::Smtp,
        (Some(ListenerArg::Submission), _) | (None, Some(_)) => ListenerKind::Submission,
        (Some(ListenerArg::Submissions), _) => ListenerKind::Submissions,
    };
    let listen = listener_config(&cfg, kind).listen.clone();
    let Some(local) = listen.first().copied() else {
        eprintln!(
            "tern explain: the {0} listener is not enabled ([{0}] listen is empty); fix: pick \
             another with --listener, or add a listen address to [{0}]",
            kind.name()
        );
        return ExitCode::from(EX_USAGE);
    };
    if let Some(user) = &args.auth {
        if cfg.user(user).is_none() {
            eprintln!(
                "tern explain: --auth {user}: no [[users]] entry has that name; fix: use one of \
                 the configured names ({})",
                cfg.users
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::from(EX_USAGE);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern explain: cannot start the runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let cfg = Arc::new(cfg);
    let (report, ok) = runtime.block_on(explain(&cfg, &signer, &args, kind, local, &listen));
    if args.json {
        println!("{report:#}");
    } else {
        print!("{}", render::text(&report));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn listener_config(cfg: &Config, kind: ListenerKind) -> &tern_config::ListenerConfig {
    match kind {
        ListenerKind::Smtp => &cfg.smtp,
        ListenerKind::Submission => &cfg.submission,
        ListenerKind::Submissions => &cfg.submissions,
    }
}

/// The whole report, and whether everything would be accepted.
async fn explain(
    cfg: &Arc<Config>,
    signer: &tern_auth::Signer,
    args: &ExplainArgs,
    kind: ListenerKind,
    local: SocketAddr,
    listen: &[SocketAddr],
) -> (Value, bool) {
    let ip = args.ip.unwrap_or(DEFAULT_IP);
    let message = stand_in_message(&args.from, &args.to);
    let sim = session::run(
        cfg.clone(),
        &session::Client {
            // An ephemeral port: only the address matters to any decision.
            peer: SocketAddr::new(ip, 49152),
            local,
            kind,
            helo: &args.helo,
            auth: args.auth.as_deref(),
            from: &args.from,
            rcpts: &args.to,
            message: &message,
        },
    );
    let authenticated = sim.authenticated.is_some();
    let trusted = cfg.is_trusted(ip);
    let relay_allowed = policy::relay_allowed(cfg, authenticated, ip);

    let listener = json!({
        "name": kind.name(),
        "addresses": listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tls": tls_text(cfg, kind, &sim),
        "starttls_offered": sim.ehlo_plain.iter().any(|k| k == "STARTTLS"),
        "auth_offered_before_tls": sim.ehlo_plain.iter().any(|k| k == "AUTH"),
        "auth_offered_after_tls": sim.ehlo_tls.as_ref().map(|k| k.iter().any(|k| k == "AUTH")),
        "auth_required": kind != ListenerKind::Smtp,
        "auth_rule": if kind == ListenerKind::Smtp {
            "AUTH is optional on port 25; MAIL is accepted without it (for local recipients)"
        } else {
            "MAIL is refused without AUTH on this listener (RFC 6409 4.3)"
        },
        "milters": sim.filtered,
        "session": sim.steps.iter().map(|s| json!({
            "command": s.command,
            "reply": reply_json(&s.reply),
            "note": s.note,
        })).collect::<Vec<_>>(),
    });
    let trusted_net = cfg
        .relay
        .trusted_networks
        .iter()
        .find(|n| n.contains(&ip))
        .map(ToString::to_string);
    let client = json!({
        "ip": ip.to_string(),
        "ip_given": args.ip.is_some(),
        "helo": args.helo,
        "auth": args.auth,
        "authenticated": sim.authenticated,
        "trusted": trusted,
        "trusted_network": trusted_net,
        "relay_allowed": relay_allowed,
        "relay_reason": relay_reason(authenticated, trusted_net.as_deref(), ip),
    });

    let accepted = sim.accepted.as_ref();
    let inbound_verify = matches!(accepted.map(|a| &a.inbound), Some(Inbound::Verify { .. }));
    let checks = cfg.checks;
    let spf = if sim.spf_at_mail {
        "checked at MAIL FROM (checks.spf_fail_reject): a fail is refused 550 5.7.23".to_string()
    } else if inbound_verify && checks.spf {
        "checked at the end of DATA with DKIM, ARC and DMARC (port 25 mail from outside)".into()
    } else if inbound_verify {
        "not checked (checks.spf = false)".into()
    } else {
        "not checked: mail from an authenticated or trusted client, or not on port 25, is ours"
            .into()
    };
    let sender = json!({
        "address": args.from,
        "reply": reply_json(&sim.mail),
        "accepted": sim.mail.is_positive(),
        "spf": spf,
        "inbound_checks": if inbound_verify {
            json!({"spf": checks.spf, "dkim": checks.dkim, "arc": checks.arc, "dmarc": checks.dmarc,
                   "dmarc_reject": checks.dmarc_reject})
        } else {
            Value::Null
        },
        "enforce_sender": authenticated.then_some(cfg.submission.enforce_sender),
        "enforce_sender_rule": authenticated.then(|| if cfg.submission.enforce_sender {
            "submission.enforce_sender: an authenticated user may only send as its own [[users]] name"
        } else {
            "submission.enforce_sender is off: an authenticated user may send as any address"
        }),
    });

    let resolver_setup =
        tern_dns::setup_resolver(&cfg.dns.nameservers, tern_relay::scheduler::DNS_TIMEOUT);
    let resolver = resolver_setup.resolver.clone();
    let mut routes: BTreeMap<String, Value> = BTreeMap::new();
    let mut recipients = Vec::new();
    let mut accepted_iter = accepted.map(|a| a.recipients.iter());
    for (rcpt, reply) in &sim.rcpts {
        let mut r = json!({"address": rcpt, "reply": reply_json(reply)});
        if !reply.is_positive() {
            r["decision"] = json!("refused");
            r["why"] = json!(if sim.mail.is_positive() {
                refusal_reason(reply, relay_allowed, &client)
            } else {
                "MAIL FROM was refused (see the sender), so the session takes no recipient"
                    .to_string()
            });
            recipients.push(r);
            continue;
        }
        let Some(acc) = accepted_iter.as_mut().and_then(Iterator::next) else {
            // RCPT was accepted but the message is not (MAIL or DATA refused): shown there.
            r["decision"] = json!("refused");
            r["why"] = json!("the message as a whole would be refused (see the session)");
            recipients.push(r);
            continue;
        };
        let srs = Address::parse(&acc.address)
            .ok()
            .filter(|a| router::is_srs_address(cfg, a));
        let direct = |t: &Target| match t {
            Target::Local(k) => Address::parse(&acc.address).is_ok_and(|a| a.lookup_key() == *k),
            Target::Remote(a) => *a == acc.address,
        };
        let (decision, why) = match acc.targets.as_slice() {
            _ if srs.is_some() => (
                "srs",
                "one of our SRS addresses ([srs]): routed to the address it encodes".to_string(),
            ),
            [t] if direct(t) => match t {
                Target::Local(_) => ("local", "a mailbox in a local domain".to_string()),
                Target::Remote(_) => (
                    "relay",
                    format!(
                        "not a local domain; relaying allowed: {}",
                        client["relay_reason"].as_str().unwrap_or_default()
                    ),
                ),
            },
            _ => (
                "alias",
                format!(
                    "an [aliases] entry: expands to {}",
                    acc.targets
                        .iter()
                        .map(target_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        };
        r["decision"] = json!(decision);
        r["why"] = json!(why);
        let mut targets = Vec::new();
        for t in &acc.targets {
            targets.push(match t {
                Target::Local(key) => json!({
                    "kind": "local",
                    "mailbox": key,
                    "path": tern_delivery::local::mailbox_of(&cfg.data_dir, key)
                        .join("new").display().to_string(),
                }),
                Target::Remote(addr) => {
                    let domain = Address::parse(addr)
                        .map(|a| a.domain().normalized())
                        .unwrap_or_default();
                    if !routes.contains_key(&domain) {
                        let explained = relay::explain(cfg, resolver.as_ref(), &domain).await;
                        routes.insert(domain.clone(), explained);
                    }
                    let forwarded = *addr != acc.address;
                    json!({
                        "kind": "remote",
                        "address": addr,
                        "domain": domain,
                        "forwarded": forwarded,
                        "srs": forwarded.then(|| srs_json(cfg, accepted.and_then(|a| a.sender.as_deref()))),
                        "route": routes.get(&domain).cloned().unwrap_or(Value::Null),
                    })
                }
            });
        }
        r["targets"] = Value::Array(targets);
        recipients.push(r);
    }

    let dkim = dkim_json(signer, accepted, &message, &args.from);
    let limits = limits_json(cfg, authenticated || trusted);
    let ok = sim.auth.as_ref().is_none_or(Reply::is_positive)
        && sim.mail.is_positive()
        && sim.rcpts.iter().all(|(_, r)| r.is_positive())
        && sim.data_refused.is_none();
    let report = json!({
        "accepted": ok,
        "client": client,
        "listener": listener,
        "sender": sender,
        "recipients": recipients,
        "data": sim.data_refused.as_ref().map(reply_json),
        "dkim": dkim,
        "limits": limits,
        "dns": {
            "nameservers": if cfg.dns.nameservers.is_empty() {
                json!("system resolver (/etc/resolv.conf)")
            } else {
                json!(cfg.dns.nameservers.iter().map(ToString::to_string).collect::<Vec<_>>())
            },
            "fallback": resolver_setup.fallback.as_ref().map(|e| format!(
                "the configured resolver could not be set up ({e}); the relay asks {} instead",
                tern_dns::FALLBACK_NAMESERVER)),
        },
    });
    (report, ok)
}

/// The message DATA stands in with: the sender as From: (what DKIM signs for), the recipients
/// as To:.
fn stand_in_message(from: &str, to: &[String]) -> Vec<u8> {
    let from = if from.is_empty() { "<>" } else { from };
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: tern explain\r\nMessage-ID: <explain@tern.invalid>\r\n\r\n(tern explain: nothing is sent)\r\n",
        to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", ")
    )
    .into_bytes()
}

pub(crate) fn reply_json(r: &Reply) -> Value {
    json!({
        "code": r.code(),
        "enhanced": r.enhanced().map(|e| e.to_string()),
        "text": r.text(),
        "line": r.to_string().trim_end().to_string(),
    })
}

fn target_name(t: &Target) -> String {
    match t {
        Target::Local(k) => format!("{k} (local)"),
        Target::Remote(a) => format!("{a} (remote)"),
    }
}

fn relay_reason(authenticated: bool, trusted_net: Option<&str>, ip: IpAddr) -> String {
    match (authenticated, trusted_net) {
        (true, _) => "yes, the client authenticated".to_string(),
        (false, Some(net)) => format!("yes, {ip} is in relay.trusted_networks ({net})"),
        (false, None) => format!(
            "no, {ip} is not in relay.trusted_networks and the client did not authenticate \
             (tern is never an open relay)"
        ),
    }
}

fn refusal_reason(reply: &Reply, relay_allowed: bool, client: &Value) -> String {
    let enhanced = reply.enhanced().map(|e| e.to_string()).unwrap_or_default();
    match enhanced.as_str() {
        "5.7.1" if !relay_allowed => format!(
            "relay denied: not a local domain, and relay allowed? {}",
            client["relay_reason"].as_str().unwrap_or_default()
        ),
        "5.1.1" => "no such user: a local domain, but no [[users]] entry, alias or catch-all \
                    takes this address"
            .to_string(),
        _ => format!("the server refuses it: {}", reply.text()),
    }
}

fn srs_json(cfg: &Config, sender: Option<&str>) -> Value {
    match forwarded_sender(cfg, sender, Day::today()) {
        Some(rewritten) => json!({
            "applies": true,
            "sender": rewritten,
            "text": "the forwarded copy's envelope sender is rewritten (SRS), so SPF at the next hop passes",
        }),
        None => json!({
            "applies": false,
            "text": if cfg.srs.is_none() {
                "SRS is off ([srs] not configured): the forwarded copy keeps the original sender, \
                 which may fail SPF at the next hop"
            } else {
                "not rewritten: the sender is null, in a local or the SRS domain, or cannot be rewritten"
            },
        }),
    }
}

/// The keys that would sign: the signer itself signs the stand-in message, and the tags of
/// each signature (RFC 6376 3.5: d=, s=, a=) are read back.
fn dkim_json(
    signer: &tern_auth::Signer,
    accepted: Option<&tern_delivery::Accepted>,
    message: &[u8],
    from: &str,
) -> Value {
    let domain = from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
    let keys: Vec<Value> = match signer.sign(message) {
        Ok(fields) => String::from_utf8_lossy(&fields)
            .split("DKIM-Signature:")
            .filter(|f| !f.trim().is_empty())
            .map(|f| {
                let flat: String = f.split_whitespace().collect();
                let tag = |name: &str| {
                    flat.split(';')
                        .find_map(|t| t.strip_prefix(&format!("{name}=")))
                        .map(str::to_string)
                };
                json!({"domain": tag("d"), "selector": tag("s"), "algorithm": tag("a")})
            })
            .collect(),
        Err(e) => return json!({"signs": false, "keys": [], "why": e.to_string()}),
    };
    let signs = accepted.is_some_and(|a| a.sign);
    let why = match (accepted, signs, keys.is_empty()) {
        (None, _, _) => "nothing would be accepted, so nothing is signed".to_string(),
        (Some(_), false, _) => "not signed: only mail of authenticated clients and of \
            relay.trusted_networks is signed; this is inbound mail"
            .to_string(),
        (Some(_), true, true) => format!(
            "not signed: no [[dkim]] key covers the From: domain {}",
            domain.as_deref().unwrap_or("(none)")
        ),
        (Some(_), true, false) => {
            "signed with every [[dkim]] key of the From: domain (taken to be \
            the sender's)"
                .to_string()
        }
    };
    json!({"signs": signs && !keys.is_empty(), "keys": keys, "why": why})
}

fn limits_json(cfg: &Config, ours: bool) -> Value {
    let l = &cfg.limits;
    let d = |t: Duration| humantime::format_duration(t).to_string();
    json!({
        "max_message_size": l.max_message_size,
        "max_header_size": l.max_header_size,
        "max_recipients": l.max_recipients,
        "max_connections": l.max_connections,
        "max_connections_per_ip": l.max_connections_per_ip,
        "max_messages_per_ip_per_minute": l.max_messages_per_ip_per_minute,
        "message_rate_applies": !ours,
        "message_rate_rule": if ours {
            "not applied: the client authenticated or is trusted"
        } else if l.max_messages_per_ip_per_minute == 0 {
            "no limit (0)"
        } else {
            "applied per client address (an IPv4 address or IPv6 prefix): 450 past it"
        },
        "max_errors": l.max_errors,
        "max_auth_failures": l.max_auth_failures,
        "command_timeout": d(l.command_timeout),
        "data_timeout": d(l.data_timeout),
        "max_session_time": d(l.max_session_time),
    })
}

/// The listener's TLS and AUTH rules as the session showed them in its EHLO replies.
fn tls_text(cfg: &Config, kind: ListenerKind, sim: &session::Simulated) -> String {
    let has = |keys: &[String], k: &str| keys.iter().any(|x| x == k);
    let tls = if kind == ListenerKind::Submissions {
        "implicit TLS from the first byte (RFC 8314)"
    } else if has(&sim.ehlo_plain, "STARTTLS") {
        "STARTTLS offered (RFC 3207)"
    } else if cfg.tls.is_none() {
        "no TLS: [tls] has no certificate, so STARTTLS is not offered"
    } else {
        "STARTTLS not offered"
    };
    let after = sim.ehlo_tls.as_deref().is_some_and(|k| has(k, "AUTH"));
    let auth = match (has(&sim.ehlo_plain, "AUTH"), after) {
        // On port 465 the first EHLO is already over TLS.
        (true, _) if kind == ListenerKind::Submissions => "AUTH offered",
        (true, _) => "AUTH offered without TLS",
        (false, true) => "AUTH offered only after STARTTLS",
        (false, false) => "AUTH not offered (no [[users]] with a password, or no TLS)",
    };
    let required = if kind != ListenerKind::Smtp && !has(&sim.ehlo_plain, "AUTH") {
        "; TLS is required in effect (MAIL needs AUTH, AUTH needs TLS)"
    } else if kind == ListenerKind::Smtp {
        "; TLS is not required on port 25"
    } else {
        ""
    };
    format!("{tls}; {auth}{required}")
}
