//! Every outbound status tern records, in one place: the replies tern decides on itself when
//! there is no remote reply to quote (docs/queue.md "Statuses tern writes" is this table in
//! prose, checked by a test), and the one conversion from a client [`Outcome`] to the stored
//! per-recipient [`RcptOutcome`], shared by the relay and `tern send`.
//!
//! A remote reply is stored as the remote sent it, with the host name, address and stage it
//! came from in their own fields (so a bounce's Diagnostic-Code quotes exactly the remote
//! reply, RFC 3464 2.3.6); tern's own statuses carry an RFC 3463 enhanced code and say where.

use std::net::IpAddr;
use std::time::Duration;

use tern_client::{ClientError, Failure, Outcome, Stage as ClientStage};
use tern_dns::{DnsError, RefusedTarget, TargetError};
use tern_proto::{EnhancedCode, Reply};
use tern_queue::{RcptClass, RcptOutcome, Remote, Stage, StoredReply};

/// The administrator's `tern queue bounce`.
pub fn admin_bounce() -> StoredReply {
    own(554, 5, 0, 0, "bounced by the administrator")
}

/// The stored envelope sender does not parse (RFC 3463 5.1.7 bad sender's mailbox syntax).
pub fn invalid_sender(sender: &str, error: &str) -> StoredReply {
    own(
        553,
        5,
        1,
        7,
        format!("the stored sender <{sender}> is not valid: {error}"),
    )
}

/// A stored recipient does not parse (5.1.3 bad destination mailbox address syntax).
pub fn invalid_recipient(rcpt: &str, error: &str) -> StoredReply {
    own(
        553,
        5,
        1,
        3,
        format!("the stored recipient <{rcpt}> is not valid: {error}"),
    )
}

/// `tern send` was given an address that does not parse (5.1.3).
pub fn invalid_address(error: &str) -> StoredReply {
    own(553, 5, 1, 3, format!("invalid address: {error}"))
}

/// No hop to try at all (4.4.4 unable to route).
pub fn no_host() -> StoredReply {
    own(451, 4, 4, 4, "no host to deliver to")
}

/// The route's `password_file` cannot be read (4.3.5 system incorrectly configured).
pub fn password_file_unreadable(path: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        3,
        5,
        format!("cannot read the route's password_file {path}: {error}"),
    )
}

/// The route's `ca_file` cannot be used (4.7.5 cryptographic failure).
pub fn ca_file_unreadable(path: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        5,
        format!("cannot read the route's ca_file {path}: {error}"),
    )
}

pub fn ca_file_empty(path: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        5,
        format!("the route's ca_file {path} holds no PEM certificate"),
    )
}

pub fn ca_file_unparsable(path: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        5,
        format!("cannot parse the route's ca_file {path}: {error}"),
    )
}

/// RFC 7505: the domain published a null MX (5.1.10 recipient address has null MX).
pub fn null_mx(domain: &str) -> StoredReply {
    own(
        556,
        5,
        1,
        10,
        format!("{domain} does not accept mail (null MX, RFC 7505)"),
    )
}

/// The domain does not exist (5.1.2 bad destination system address).
pub fn no_such_domain(error: &str) -> StoredReply {
    own(550, 5, 1, 2, error)
}

/// A host name with no address, or not a valid name (5.4.4 unable to route).
pub fn no_address(error: &str) -> StoredReply {
    own(550, 5, 4, 4, error)
}

pub fn no_address_for_any_mx(domain: &str, error: &str) -> StoredReply {
    own(
        550,
        5,
        4,
        4,
        format!("no usable address for any MX host of {domain}: {error}"),
    )
}

/// Every address found for the domain is refused by the outbound address policy (loopback,
/// link-local, unspecified, `outbound.deny_networks`). RFC 3463 X.4.4 "unable to route": the
/// directory (DNS) gave no next hop tern may use, and only a DNS or configuration change can
/// fix that, so permanent like a domain without addresses. Not X.4.6: the address need not be
/// this host (a mail loop is the listener check, which comes first), and not X.7.x: nothing is
/// wrong with the sender or the message.
pub fn addresses_refused(domain: &str, refused: &[RefusedTarget]) -> StoredReply {
    let detail = match refused {
        [] => "no address left".to_string(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    };
    own(
        550,
        5,
        4,
        4,
        format!("every address found for {domain} is refused: {detail}"),
    )
}

/// DNS trouble: retry (4.4.3 directory server failure).
pub fn dns_temporary(error: &str) -> StoredReply {
    own(451, 4, 4, 3, error)
}

/// RFC 5321 5.1: the MX points back here but the domain is not local (5.4.6 routing loop).
pub fn mx_loop(domain: &str, hostname: &str) -> StoredReply {
    own(
        554,
        5,
        4,
        6,
        format!(
            "mail loop: the MX of {domain} points back to this host ({hostname}) but {domain} is not a local domain"
        ),
    )
}

pub fn every_mx_is_self(domain: &str) -> StoredReply {
    own(
        554,
        5,
        4,
        6,
        format!("mail loop: every MX host of {domain} is this server"),
    )
}

/// RFC 5321 6.3: too many Received headers.
pub fn received_loop(count: usize, limit: usize) -> StoredReply {
    own(
        554,
        5,
        4,
        6,
        format!("mail loop: the message has {count} Received headers (limit {limit})"),
    )
}

/// `queue.max_age` passed (4.4.7 delivery time expired); quotes the last error.
pub fn gave_up(max_age: Duration, last: &StoredReply) -> StoredReply {
    let age = humantime::format_duration(max_age);
    own(
        451,
        4,
        4,
        7,
        format!("gave up after {age} in the queue (queue.max_age); last error: {last}"),
    )
}

/// One attempt to a destination took longer than `outbound.attempt_timeout` (a tarpit, or a
/// server crawling through every phase just inside its timeout): deferred, 4.4.2.
pub fn attempt_timed_out(destination: &str, limit: Duration) -> StoredReply {
    let limit = humantime::format_duration(limit);
    own(
        451,
        4,
        4,
        2,
        format!("delivery to {destination} took longer than {limit} (outbound.attempt_timeout)"),
    )
}

/// Every cluster-wide connection slot to the destination stayed taken by other nodes for a
/// whole attempt's time (`outbound.concurrency_per_host` shared through the queue): deferred,
/// 4.4.5 (system congestion, RFC 3463).
pub fn cluster_slots_busy(destination: &str, limit: usize, waited: Duration) -> StoredReply {
    let waited = humantime::format_duration(waited);
    own(
        451,
        4,
        4,
        5,
        format!("all {limit} connection slots to {destination} (outbound.concurrency_per_host, shared by the cluster) stayed in use for {waited}"),
    )
}

/// The LMTP server of `[local] lmtp` could not be reached (down, socket missing, refused):
/// deferred, 4.4.1 (no answer from host, RFC 3463), so the queue holds local mail until the
/// server is back (RFC 2033 is delivery to the mailbox store).
pub fn lmtp_unreachable(target: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        4,
        1,
        format!("cannot connect to LMTP {target}: {error}"),
    )
}

/// RFC 8461 4.2: the domain's MTA-STS policy is `enforce` and none of its MX hosts matches
/// the policy's `mx` patterns: deferred (4.7.5 cryptographic failure, as for any TLS policy
/// failure), the policy or the MX may change.
pub fn mta_sts_no_matching_mx(domain: &str, patterns: &str, hosts: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        5,
        format!("MTA-STS policy of {domain} (enforce): no MX host matches the policy (mx: {patterns}; MX hosts: {hosts})"),
    )
}

/// RFC 8461 4.2 and 5: under an `enforce` policy the MX host offered no STARTTLS, or its
/// certificate did not verify for its MX name, or the handshake failed: deferred, never sent
/// in the clear.
pub fn mta_sts_tls_failed(domain: &str, at: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        5,
        format!("MTA-STS policy of {domain} (enforce): {at}: {error}"),
    )
}

/// DANE (RFC 7672 3.1): the certificate of a host with usable TLSA records matched none of
/// them; `mismatch` is the client's `DANE: certificate of <host> does not match ...`.
pub fn dane_mismatch(mismatch: &str) -> StoredReply {
    own(451, 4, 7, 5, mismatch.to_string())
}

/// DANE (RFC 7672 2.2): a host with usable TLSA records offered no STARTTLS or the handshake
/// failed; never sent in the clear.
pub fn dane_tls_failed(at: &str, error: &str) -> StoredReply {
    own(451, 4, 7, 5, format!("DANE: {at}: {error}"))
}

/// DANE (RFC 7672 2.1.1): a DNSSEC lookup (MX, addresses or TLSA) came back bogus or could not
/// be done; the host (or the domain) is not used, never downgraded.
pub fn dane_lookup_failed(name: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        5,
        format!("DANE: DNSSEC lookup of {name} failed: {error}"),
    )
}

/// `host NAME[ADDR]`: how tern's own statuses say which host they are about.
pub fn at(name: &str, addr: Option<IpAddr>) -> String {
    match addr {
        Some(ip) => format!("host {name}[{ip}]"),
        None => format!("host {name}"),
    }
}

/// The route has credentials but the connection is not encrypted (4.7.9; RFC 4954 4).
pub fn plaintext_auth(at: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        9,
        format!("{at}: {error} (the route has user/password_file: use tls = \"required\")"),
    )
}

/// No common AUTH mechanism (4.7.9).
pub fn auth_unavailable(at: &str, error: &str) -> StoredReply {
    own(451, 4, 7, 9, format!("{at}: {error}"))
}

/// The server refused the route's credentials: the operator's to fix, so deferred (4.7.8).
pub fn auth_failed(at: &str, reply: &str) -> StoredReply {
    own(
        451,
        4,
        7,
        8,
        format!(
            "{at}: authentication failed, check the route's user and password_file (server said: {reply})"
        ),
    )
}

/// A reply outside 4xx/5xx ended a recipient's attempt (a stray 3xx): recorded under tern's
/// code of the outcome's class (4.5.0 / 5.5.0 other protocol status).
pub fn unexpected_reply(permanent: bool, reply: &str, at: &str, stage: &str) -> StoredReply {
    let text = format!("unexpected reply: {reply} ({at}, in reply to {stage})");
    if permanent {
        own(554, 5, 5, 0, text)
    } else {
        own(451, 4, 5, 0, text)
    }
}

/// The remote took the message body slower than `outbound.min_data_rate` (after
/// `outbound.min_data_rate_grace`): the attempt is abandoned and retried, 4.4.2 like any
/// other timeout (RFC 3463 X.4.2 "bad connection").
pub fn too_slow(at: &str, error: &str) -> StoredReply {
    own(
        451,
        4,
        4,
        2,
        format!("{at}: {error} (outbound.min_data_rate)"),
    )
}

/// A failure that is not a reply (network, timeout, TLS, a message the server cannot take).
pub fn client_error(at: &str, error: &ClientError, permanent: bool) -> StoredReply {
    if let ClientError::TooSlow { .. } = error {
        return too_slow(at, &error.to_string());
    }
    let (code, class, subject, detail) = match error {
        ClientError::Timeout { .. } => (451, 4, 4, 2),
        ClientError::Io { .. } | ClientError::Closed { .. } => (451, 4, 4, 1),
        ClientError::Protocol { .. } => (451, 4, 5, 0),
        ClientError::Tls(_) | ClientError::TlsUnavailable => (451, 4, 7, 5),
        ClientError::TooBig { .. } => (552, 5, 3, 4),
        ClientError::Needs8BitMime => (554, 5, 6, 3),
        ClientError::NeedsSmtpUtf8 => (553, 5, 6, 7),
        // RFC 8689 5: "REQUIRETLS support required".
        ClientError::NeedsRequireTls => (550, 5, 7, 30),
        ClientError::PlaintextAuth | ClientError::AuthUnavailable => (451, 4, 7, 9),
        _ if permanent => (554, 5, 0, 0),
        _ => (451, 4, 0, 0),
    };
    own(code, class, subject, detail, format!("{at}: {error}"))
}

/// What a DNS error means for delivery (RFC 5321 4.5.4.1: only a definite answer is final).
pub fn dns_failure(e: &DnsError) -> RcptOutcome {
    match e {
        DnsError::NullMx(d) => RcptOutcome::failed(null_mx(d)),
        DnsError::NxDomain(_) => RcptOutcome::failed(no_such_domain(&e.to_string())),
        DnsError::NoAddresses(_) | DnsError::InvalidName(_) => {
            RcptOutcome::failed(no_address(&e.to_string()))
        }
        DnsError::Temporary { .. } => RcptOutcome::deferred(dns_temporary(&e.to_string())),
    }
}

/// What a routing failure means for the recipients: one of tern's own statuses (docs/queue.md).
pub fn target_failure(e: &TargetError) -> RcptOutcome {
    match e {
        TargetError::NullMx { domain } => RcptOutcome::failed(null_mx(domain)),
        TargetError::NoSuchDomain(d) | TargetError::Unroutable(d) => dns_failure(d),
        // Whatever the DNS said last, the deadline or a SERVFAIL makes it worth another try.
        TargetError::Temporary(d) => RcptOutcome::deferred(dns_temporary(&d.to_string())),
        TargetError::NoUsableMx { domain, last } => {
            RcptOutcome::failed(no_address_for_any_mx(domain, &last.to_string()))
        }
        TargetError::SelfMx { domain, hostname } => RcptOutcome::failed(mx_loop(domain, hostname)),
        TargetError::OwnListener { domain } => RcptOutcome::failed(every_mx_is_self(domain)),
        TargetError::Refused { domain, refused } => {
            RcptOutcome::failed(addresses_refused(domain, refused))
        }
    }
}

/// The host a session talked to: its name (MX or route host, RFC 3464 Remote-MTA) and address.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub name: &'a str,
    pub addr: Option<IpAddr>,
}

/// One recipient's outcome as stored: the remote reply as given (with where it came from), or
/// tern's own status for failures that are not replies.
pub fn rcpt_outcome(peer: Peer<'_>, outcome: Outcome) -> RcptOutcome {
    match outcome {
        Outcome::Accepted(reply) => {
            RcptOutcome::delivered(remote(peer, ClientStage::DataEnd, &reply))
        }
        Outcome::TemporaryFailure(f) => failure(peer, &f, false),
        Outcome::PermanentFailure(f) => failure(peer, &f, true),
    }
}

/// A session that could not be set up. Trouble with the route's own AUTH settings (wrong
/// password, no TLS to send it over, no common mechanism) is the operator's to fix, not the
/// recipient's fault: defer, as Postfix does, instead of bouncing every message meanwhile.
pub fn session_failure(peer: Peer<'_>, e: ClientError) -> RcptOutcome {
    let at = at(peer.name, peer.addr);
    match &e {
        ClientError::PlaintextAuth => RcptOutcome::deferred(plaintext_auth(&at, &e.to_string())),
        ClientError::AuthUnavailable => {
            RcptOutcome::deferred(auth_unavailable(&at, &e.to_string()))
        }
        ClientError::Rejected {
            stage: ClientStage::Auth,
            reply,
        } => RcptOutcome::deferred(auth_failed(&at, &reply.to_string())),
        _ => rcpt_outcome(peer, Outcome::from_error(e)),
    }
}

/// What the recipients get when no host of a destination could be reached, from each host's
/// failure in the order tried ([`session_failure`]): RFC 5321 5.1, a 5xx from one MX does not
/// stop the others, so only when every host refused permanently is the recipient failed;
/// otherwise the last failure is kept as a deferral. `None` when there was no host at all.
pub fn connect_failure(failures: Vec<(String, RcptOutcome)>) -> (Option<String>, RcptOutcome) {
    let any_temporary = failures.iter().any(|(_, r)| r.class != RcptClass::Failed);
    match failures.into_iter().last() {
        Some((host, r)) if any_temporary && r.class == RcptClass::Failed => {
            (Some(host), RcptOutcome::deferred(r.reply))
        }
        Some((host, r)) => (Some(host), r),
        None => (None, RcptOutcome::deferred(no_host())),
    }
}

fn failure(peer: Peer<'_>, failure: &Failure, permanent: bool) -> RcptOutcome {
    let class = if permanent {
        RcptClass::Failed
    } else {
        RcptClass::Deferred
    };
    let reply = match failure {
        Failure::Reply { stage, reply } => checked(peer, *stage, reply, permanent),
        Failure::Error(e) => match e {
            ClientError::Rejected { stage, reply } => checked(peer, *stage, reply, permanent),
            _ => client_error(&at(peer.name, peer.addr), e, permanent),
        },
    };
    RcptOutcome { class, reply }
}

/// Keeps a stored status honest about its class: a reply outside 4xx/5xx that ended a
/// recipient's attempt is recorded under tern's own code.
fn checked(peer: Peer<'_>, stage: ClientStage, reply: &Reply, permanent: bool) -> StoredReply {
    match (reply.code() / 100, permanent) {
        (4, false) | (5, true) => remote(peer, stage, reply),
        _ => unexpected_reply(
            permanent,
            &reply.to_string(),
            &at(peer.name, peer.addr),
            &stage.to_string(),
        ),
    }
}

fn remote(peer: Peer<'_>, stage: ClientStage, reply: &Reply) -> StoredReply {
    StoredReply::remote(
        reply.code(),
        reply.enhanced(),
        reply.text(),
        Remote {
            host: peer.name.to_string(),
            addr: peer.addr,
            stage: Some(stage_of(stage)),
        },
    )
}

/// The stored name of a client stage.
pub fn stage_of(stage: ClientStage) -> Stage {
    match stage {
        ClientStage::Connect => Stage::Connect,
        ClientStage::Banner => Stage::Banner,
        ClientStage::Ehlo => Stage::Ehlo,
        ClientStage::Helo => Stage::Helo,
        ClientStage::StartTls => Stage::Starttls,
        ClientStage::Tls => Stage::Tls,
        ClientStage::Auth => Stage::Auth,
        ClientStage::Mail => Stage::Mail,
        ClientStage::Rcpt => Stage::Rcpt,
        ClientStage::Data => Stage::Data,
        ClientStage::DataBody => Stage::DataBody,
        ClientStage::DataEnd => Stage::DataEnd,
        ClientStage::Rset => Stage::Rset,
        ClientStage::Quit => Stage::Quit,
    }
}

fn own(code: u16, class: u8, subject: u16, detail: u16, text: impl Into<String>) -> StoredReply {
    StoredReply::local(code, Some(EnhancedCode::new(class, subject, detail)), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::ec;

    const P: Peer<'static> = Peer {
        name: "mx.remote.test",
        addr: Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
    };

    fn refused(ip: &str) -> RefusedTarget {
        RefusedTarget {
            target: tern_dns::Target {
                name: "mx.remote.test".into(),
                addr: std::net::SocketAddr::new(ip.parse().unwrap(), 25),
            },
            reason: "loopback (127.0.0.0/8), never used for MX delivery unless in outbound.allow_networks".into(),
        }
    }

    /// The status cells of the docs/queue.md "Statuses tern writes" table.
    fn documented_rows() -> Vec<String> {
        let doc = include_str!("../../../docs/queue.md").replace("\\|", "|");
        let table = doc
            .split("### Statuses tern writes")
            .nth(1)
            .expect("docs/queue.md has a \"Statuses tern writes\" section");
        table
            .lines()
            .take_while(|l| !l.starts_with('#'))
            .filter_map(|row| row.strip_prefix("| `"))
            .map(|cell| cell.split('`').next().unwrap_or_default().to_string())
            .collect()
    }

    /// `row` with each `<placeholder>` standing for any non-empty text matches all of `status`.
    fn matches(row: &str, status: &str) -> bool {
        let mut pieces = Vec::new();
        let mut rest = row;
        while let Some(start) = rest.find('<') {
            let Some(len) = rest[start..].find('>') else {
                break;
            };
            pieces.push(&rest[..start]);
            rest = &rest[start + len + 1..];
        }
        pieces.push(rest);
        let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
        if pieces.len() == 1 {
            return status == first;
        }
        if !status.starts_with(first) {
            return false;
        }
        let mut at = first.len();
        for piece in &pieces[1..pieces.len() - 1] {
            // A placeholder takes at least one character.
            match status.get(at + 1..).and_then(|s| s.find(piece)) {
                Some(found) => at += 1 + found + piece.len(),
                None => return false,
            }
        }
        let tail = &status[at..];
        tail.len() > last.len() && tail.ends_with(last)
    }

    /// docs/queue.md "Statuses tern writes" is the operator's reference: every status tern
    /// records on its own must match a row there (`<placeholders>` for the variable parts), and
    /// every row must be one that tern writes.
    #[test]
    fn documented_statuses_match_the_table() {
        let rows = documented_rows();
        assert!(rows.len() > 20, "{rows:?}");
        let at = at("mx.remote.test", Some("192.0.2.1".parse().unwrap()));
        let e = "something went wrong";
        let err = |e: ClientError| client_error(&at, &e, false);
        let statuses = [
            admin_bounce(),
            invalid_sender("a@b@c", e),
            invalid_recipient("x@", e),
            invalid_address(e),
            no_host(),
            password_file_unreadable("/etc/tern/pw", e),
            ca_file_unreadable("/etc/tern/ca.pem", e),
            ca_file_empty("/etc/tern/ca.pem"),
            ca_file_unparsable("/etc/tern/ca.pem", e),
            null_mx("null.test"),
            no_such_domain("domain nowhere.test does not exist (NXDOMAIN)"),
            no_address("no MX and no address records for x.test"),
            no_address_for_any_mx("x.test", e),
            dns_temporary("temporary DNS failure for x.test: SERVFAIL"),
            mx_loop("x.test", "mx.tern.test"),
            every_mx_is_self("x.test"),
            addresses_refused("x.test", &[refused("127.0.0.1")]),
            addresses_refused("x.test", &[refused("127.0.0.1"), refused("::1")]),
            received_loop(31, 30),
            gave_up(Duration::from_secs(5 * 86400), &no_host()),
            attempt_timed_out("mx remote.test", Duration::from_secs(1800)),
            lmtp_unreachable("unix:/run/dovecot/lmtp", e),
            plaintext_auth(&at, e),
            auth_unavailable(&at, e),
            auth_failed(&at, "535 5.7.8 no"),
            unexpected_reply(false, "354 go ahead", &at, "end of data"),
            unexpected_reply(true, "354 go ahead", &at, "end of data"),
            err(ClientError::Timeout {
                stage: ClientStage::Banner,
                after: Duration::from_secs(30),
            }),
            err(ClientError::Closed {
                stage: ClientStage::Rcpt,
            }),
            err(ClientError::Tls("handshake eof".into())),
            err(ClientError::TlsUnavailable),
            err(ClientError::TooBig { size: 10, limit: 5 }),
            err(ClientError::Needs8BitMime),
            err(ClientError::NeedsSmtpUtf8),
            err(ClientError::NeedsRequireTls),
            cluster_slots_busy("mx remote.test", 5, Duration::from_secs(300)),
            mta_sts_no_matching_mx("remote.test", "*.remote.test", "mx.other.test"),
            mta_sts_tls_failed("remote.test", &at, e),
            dane_mismatch(
                "DANE: certificate of mx.remote.test does not match its TLSA records (3 1 1)",
            ),
            dane_tls_failed(&at, e),
            dane_lookup_failed("_25._tcp.mx.remote.test", e),
            err(ClientError::Unusable),
            client_error(&at, &ClientError::Unusable, true),
            err(ClientError::TooSlow {
                sent: 65536,
                after: Duration::from_secs(40),
                min: std::num::NonZeroU64::MIN,
            }),
        ];
        let mut used = vec![false; rows.len()];
        for s in &statuses {
            let line = s.to_string();
            let hit: Vec<usize> = (0..rows.len())
                .filter(|&i| matches(&rows[i], &line))
                .collect();
            assert!(!hit.is_empty(), "docs/queue.md has no row for `{line}`");
            for i in hit {
                used[i] = true;
            }
        }
        // A protocol error needs a ReplyError; its code is checked without one.
        let protocol = own(451, 4, 5, 0, format!("{at}: {e}")).to_string();
        let i = rows.iter().position(|r| matches(r, &protocol));
        used[i.expect("a row for protocol errors")] = true;
        for (row, used) in rows.iter().zip(used) {
            assert!(used, "docs/queue.md lists `{row}`, which tern never writes");
        }
    }

    #[test]
    fn the_placeholder_matcher() {
        assert!(matches("550 5.1.2 <error>", "550 5.1.2 no such domain"));
        assert!(!matches("550 5.1.2 <error>", "550 5.1.2 "));
        assert!(!matches("550 5.1.2 <error>", "550 5.4.4 no address"));
        assert!(matches(
            "451 4.4.4 no host to deliver to",
            "451 4.4.4 no host to deliver to"
        ));
        assert!(!matches(
            "451 4.4.4 no host",
            "451 4.4.4 no host to deliver to"
        ));
        assert!(matches("a <x> b <y> c", "a 1 b 2 c"));
        assert!(!matches("a <x> b <y> c", "a 1 b 2 d"));
        assert!(!matches("a <x> b", "a b"));
    }

    #[test]
    fn remote_replies_are_stored_as_given_with_their_origin() {
        let r = Reply::new(550, ec(5, 1, 1), "no such user");
        let out = rcpt_outcome(P, Outcome::from_reply(ClientStage::Rcpt, r));
        assert_eq!(out.class, RcptClass::Failed);
        assert_eq!(out.reply.to_string(), "550 5.1.1 no such user");
        let origin = out.reply.origin().unwrap();
        assert_eq!(origin.host, "mx.remote.test");
        assert_eq!(origin.stage, Some(Stage::Rcpt));
        assert_eq!(origin.addr, P.addr);
    }

    #[test]
    fn network_failures_get_tern_codes_and_no_origin() {
        let e = ClientError::Timeout {
            stage: ClientStage::Banner,
            after: Duration::from_secs(2),
        };
        let out = rcpt_outcome(P, Outcome::from_error(e));
        assert_eq!(out.class, RcptClass::Deferred);
        let t = out.reply.to_string();
        assert!(
            t.starts_with("451 4.4.2 host mx.remote.test[127.0.0.1]: "),
            "{t}"
        );
        assert_eq!(out.reply.origin(), None);
    }

    #[test]
    fn route_auth_trouble_is_deferred_not_bounced() {
        for e in [
            ClientError::PlaintextAuth,
            ClientError::Rejected {
                stage: ClientStage::Auth,
                reply: Reply::new(535, None, "bad credentials"),
            },
        ] {
            let out = session_failure(P, e);
            assert_eq!(out.class, RcptClass::Deferred);
            assert!(out.reply.to_string().starts_with("451 4.7."), "{:?}", out);
        }
    }

    #[test]
    fn a_stray_3xx_is_recorded_as_temporary() {
        let r = Reply::new(354, None, "go ahead");
        let out = rcpt_outcome(P, Outcome::from_reply(ClientStage::DataEnd, r));
        assert_eq!(out.class, RcptClass::Deferred);
        let t = out.reply.to_string();
        assert!(t.starts_with("451 4.5.0 unexpected reply: 354"), "{t}");
        assert_eq!(out.reply.origin(), None);
    }

    #[test]
    fn dns_errors_map_to_their_statuses() {
        let out = dns_failure(&DnsError::NullMx("x.test".into()));
        assert_eq!(out.class, RcptClass::Failed);
        assert!(out.reply.to_string().starts_with("556 5.1.10 "));
    }
}
