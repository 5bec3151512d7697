//! One delivery attempt for a group of recipients that share a destination: take a pooled
//! connection or connect to the hops in order, run one transaction, and turn every recipient's
//! outcome into the typed status the queue stores ([`crate::status`]). Also the connection pool
//! and the concurrency limits (overall and per destination).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use tern_client::{
    connect_first, load_ca_file, CaFileError, CertStatus, ClientError, ConnectOptions, Credentials,
    DsnRequest, Envelope as ClientEnvelope, Session, SessionOptions, Timeouts, TlsFailure, TlsMode,
};
use tern_config::{Config, TlsPolicy};
use tern_dns::Resolver;
use tern_metrics as names;
use tern_proto::{Address, ForwardPath, ReversePath};
use tern_queue::{Cluster, HostSlot, RcptOutcome, StoredReply, TlsOutcome};

use crate::dane::{DanePlan, HostDane};
use crate::message::QueuedMessage;
use crate::mta_sts::{Applied, Mode};
use crate::route::{self, Destination, DestinationKind, Hop};
use crate::status::{self, Peer};

/// How often a delivery waiting for a cluster-wide host slot asks again.
const SLOT_POLL: Duration = Duration::from_millis(200);

/// How long a connection may sit idle in the pool. Short: receivers drop idle clients, and a
/// pooled connection only pays off for mail that is already waiting.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The results of one attempt, in the order of the recipients given, the host that was
/// talked to and how the session was protected (for the log and `tern queue show`).
#[derive(Debug)]
pub struct AttemptResult {
    pub host: Option<String>,
    /// `None` when no session was set up (no hop, every connection failed).
    pub tls: Option<TlsOutcome>,
    pub results: Vec<RcptOutcome>,
    /// Who tells a sender who asked for `NOTIFY=SUCCESS` about a success at this hop.
    pub success_notice: SuccessNotice,
}

/// RFC 3461 5.2.2 and 6.2: after a success, who owes the sender the notification it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessNotice {
    /// The next hop offered DSN and got the NOTIFY request: it carries it on.
    NextHop,
    /// The next hop does not do DSN: tern says "relayed" (the trail ends here).
    Relayed,
    /// The next hop was the mailbox server (LMTP): final delivery, tern says "delivered".
    Delivered,
}

/// What a transaction carries besides addresses: the sender's DSN requests (RFC 3461) and
/// REQUIRETLS (RFC 8689).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `rcpts` in the order of the recipients given to [`Connector::deliver`].
    pub dsn: DsnRequest,
    pub requiretls: bool,
}

struct Pooled {
    session: Session<TcpStream>,
    hop: Hop,
    idle_since: Instant,
}

pub struct Connector {
    cfg: Arc<Config>,
    resolver: Arc<dyn Resolver>,
    overall: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: Mutex<HashMap<String, Vec<Pooled>>>,
    /// A shared queue: `concurrency_per_host` also counts the other nodes' deliveries.
    cluster: Option<Arc<dyn Cluster>>,
}

/// What a delivery holds while it runs: its share of the limits.
struct Permits {
    _per: Option<OwnedSemaphorePermit>,
    _all: Option<OwnedSemaphorePermit>,
    _shared: Option<HostSlot>,
}

impl Connector {
    pub fn new(cfg: Arc<Config>, resolver: Arc<dyn Resolver>) -> Self {
        let overall = Arc::new(Semaphore::new(cfg.outbound.concurrency.max(1)));
        Self {
            cfg,
            resolver,
            overall,
            per_destination: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            cluster: None,
        }
    }

    /// Shares `outbound.concurrency_per_host` with the other nodes of this cluster.
    pub fn with_cluster(mut self, cluster: Option<Arc<dyn Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Delivers `message` (read from the queue as it is sent) from `sender` (None = `<>`) to
    /// `recipients` at `dest`.
    pub async fn deliver(
        &self,
        dest: &Destination,
        sender: Option<&str>,
        recipients: &[String],
        message: &QueuedMessage,
        extras: &Extras,
    ) -> AttemptResult {
        let _permits = match self.permits(&dest.key).await {
            Ok(p) => p,
            Err(reply) => {
                return AttemptResult {
                    host: None,
                    tls: None,
                    results: vec![RcptOutcome::deferred(reply); recipients.len()],
                    success_notice: SuccessNotice::Relayed,
                }
            }
        };
        let mut results: Vec<Option<RcptOutcome>> = vec![None; recipients.len()];
        let from = match sender {
            None => ReversePath::Null,
            Some(s) => match Address::parse(s) {
                Ok(a) => ReversePath::Mailbox(a),
                Err(e) => {
                    let reply = status::invalid_sender(s, &e.to_string());
                    return AttemptResult {
                        host: None,
                        tls: None,
                        results: vec![RcptOutcome::failed(reply); recipients.len()],
                        success_notice: SuccessNotice::Relayed,
                    };
                }
            },
        };
        // Each recipient parsed on its own: one bad stored address fails only itself.
        let mut rcpts = Vec::new();
        let mut sent_index = Vec::new();
        for (i, r) in recipients.iter().enumerate() {
            match Address::parse(r) {
                Ok(a) => {
                    rcpts.push(ForwardPath::Mailbox(a));
                    sent_index.push(i);
                }
                Err(e) => {
                    results[i] = Some(RcptOutcome::failed(status::invalid_recipient(
                        r,
                        &e.to_string(),
                    )))
                }
            }
        }
        if rcpts.is_empty() {
            return AttemptResult {
                host: None,
                tls: None,
                results: results.into_iter().flatten().collect(),
                success_notice: SuccessNotice::Relayed,
            };
        }
        let dsn = DsnRequest {
            rcpts: sent_index
                .iter()
                .map(|&i| extras.dsn.rcpts.get(i).cloned().unwrap_or_default())
                .collect(),
            ..extras.dsn.clone()
        };
        let envelope = ClientEnvelope {
            from,
            rcpts,
            dsn,
            requiretls: extras.requiretls,
        };

        // One deadline for the whole attempt (issue 10: a tarpit answering each phase just
        // inside its own timeout). On expiry the future is dropped, and with it the session.
        let limit = self.cfg.outbound.attempt_timeout;
        let attempt = tokio::time::timeout(limit, async {
            // Local recipients under `delivery = "lmtp"`: LMTP (RFC 2033) to the mailbox
            // server, its own connection each time (crate::lmtp), not the SMTP pool.
            if let DestinationKind::Lmtp { target } = &dest.kind {
                return crate::lmtp::attempt(&self.cfg, target, &envelope, message).await;
            }
            let attempt = self.attempt(dest, &envelope, message).await;
            attempt.map(|(hop, tls, dsn, outcomes)| (hop.name, tls, dsn, outcomes))
        })
        .await;
        let mut success_notice = SuccessNotice::Relayed;
        let (host, tls, outcomes) = match attempt {
            Ok(Ok((host, tls, dsn, outcomes))) => {
                success_notice = match (&dest.kind, dsn) {
                    (DestinationKind::Lmtp { .. }, _) => SuccessNotice::Delivered,
                    (_, true) => SuccessNotice::NextHop,
                    (_, false) => SuccessNotice::Relayed,
                };
                (Some(host), Some(tls), outcomes)
            }
            Ok(Err((host, failure))) => (host, None, vec![failure; sent_index.len()]),
            Err(_) => {
                let reply = status::attempt_timed_out(&dest.key, limit);
                tracing::warn!(destination = %dest.key, limit = ?limit, "relay: delivery attempt timed out");
                (
                    None,
                    None,
                    vec![RcptOutcome::deferred(reply); sent_index.len()],
                )
            }
        };
        for (i, outcome) in sent_index.into_iter().zip(outcomes) {
            results[i] = Some(outcome);
        }
        AttemptResult {
            host,
            tls,
            results: results.into_iter().flatten().collect(),
            success_notice,
        }
    }

    /// Takes a pooled connection or opens one, and runs the transaction: one outcome per
    /// recipient of `envelope`, in order. The session goes back to the pool when still usable.
    async fn attempt(
        &self,
        dest: &Destination,
        envelope: &ClientEnvelope,
        message: &QueuedMessage,
    ) -> Result<(Hop, TlsOutcome, bool, Vec<RcptOutcome>), (Option<String>, RcptOutcome)> {
        // RFC 8461: the recipient domain's MTA-STS policy, for MX delivery only (a route is
        // the operator's own choice, with its own `tls`).
        // TLS-RPT: a report's own delivery is never reported (crate::tls_rpt::scope).
        let quiet = crate::tls_rpt::is_report(&message.head);
        let sts = match &dest.kind {
            DestinationKind::Mx { domain } => {
                let lookup = crate::mta_sts::policy_for(&self.cfg, self.resolver.as_ref(), domain);
                crate::tls_rpt::scope(quiet, lookup).await
            }
            _ => None,
        };
        let enforced;
        let dest = match &sts {
            Some(s) if s.policy.mode == Mode::Enforce => {
                enforced = enforcing(dest, self.cfg.outbound.mta_sts_ca_file.as_ref());
                &enforced
            }
            _ => dest,
        };
        // RFC 7672: DANE decides per host how it is spoken to, so the hosts come first; a
        // session opened under DANE is pooled under its own key.
        let prepared = self.dane_prepare(dest).await?;
        let with_dane;
        let dest = match &prepared {
            Some((_, plan)) if plan.is_active() => {
                let mut d = dest.clone();
                d.key.push_str(" dane");
                with_dane = d;
                &with_dane
            }
            _ => dest,
        };
        let (mut session, hop) = match self.take_pooled(&dest.key).await {
            Some(p) => (p.session, p.hop),
            None => crate::tls_rpt::scope(quiet, self.open(dest, sts.as_ref(), prepared)).await?,
        };
        let tls = tls_outcome(&session);
        let dsn = session.capabilities().is_some_and(|c| c.dsn);
        // Read from the spool a piece at a time, afresh for each attempt.
        let delivery = session
            .send_message_from(envelope, message.traits, &mut message.body())
            .await;
        let outcomes = delivery
            .per_recipient
            .into_iter()
            .map(|(_, outcome)| status::rcpt_outcome(peer(&hop), outcome))
            .collect();
        if session.is_usable() {
            self.put_pooled(&dest.key, session, hop.clone());
        }
        Ok((hop, tls, dsn, outcomes))
    }

    async fn permits(&self, key: &str) -> Result<Permits, StoredReply> {
        let per = {
            let mut map = lock(&self.per_destination);
            // Forget destinations nobody is delivering to, so the map does not grow with every
            // domain ever seen.
            if map.len() > 1024 {
                let limit = self.cfg.outbound.concurrency_per_host.max(1);
                map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < limit);
            }
            map.entry(key.to_string())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(
                        self.cfg.outbound.concurrency_per_host.max(1),
                    ))
                })
                .clone()
        };
        // The semaphores are never closed, so acquire cannot fail; None would only mean "no limit".
        let per = per.acquire_owned().await.ok();
        // Waited for before the overall permit: a destination busy on other nodes must not
        // hold one of the slots this node's other destinations need.
        let shared = match &self.cluster {
            Some(cluster) => self.shared_slot(cluster, key).await?,
            None => None,
        };
        let all = self.overall.clone().acquire_owned().await.ok();
        Ok(Permits {
            _per: per,
            _all: all,
            _shared: shared,
        })
    }

    /// One of the cluster's `concurrency_per_host` slots for `key`, waited for (polling) for at
    /// most one attempt's time. A database that cannot be asked does not stop delivery: this
    /// node's own limit still holds, and the queue itself needs the database anyway.
    async fn shared_slot(
        &self,
        cluster: &Arc<dyn Cluster>,
        key: &str,
    ) -> Result<Option<HostSlot>, StoredReply> {
        let limit = self.cfg.outbound.concurrency_per_host.max(1);
        let wait = self.cfg.outbound.attempt_timeout;
        let started = Instant::now();
        loop {
            let (c, k) = (cluster.clone(), key.to_string());
            match tokio::task::spawn_blocking(move || c.try_host_slot(&k, limit)).await {
                Ok(Ok(Some(slot))) => return Ok(Some(slot)),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(destination = %key, error = %e,
                        "relay: cannot take a shared host slot; this node's own limit applies");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(destination = %key, error = %e, "relay: host slot task failed");
                    return Ok(None);
                }
            }
            if started.elapsed() >= wait {
                return Err(status::cluster_slots_busy(key, limit, wait));
            }
            tokio::time::sleep(SLOT_POLL).await;
        }
    }

    async fn take_pooled(&self, key: &str) -> Option<Pooled> {
        loop {
            let candidate = {
                let mut pool = lock(&self.pool);
                let list = pool.get_mut(key)?;
                let p = list.pop();
                if list.is_empty() {
                    pool.remove(key);
                }
                p
            }?;
            if candidate.idle_since.elapsed() > POOL_IDLE {
                quit_in_background(candidate.session);
                continue;
            }
            let mut p = candidate;
            // RSET between messages (RFC 5321 4.1.1.5) also proves the connection still works.
            match p.session.rset().await {
                Ok(reply) if reply.is_positive() && p.session.is_usable() => return Some(p),
                _ => continue,
            }
        }
    }

    fn put_pooled(&self, key: &str, session: Session<TcpStream>, hop: Hop) {
        let mut pool = lock(&self.pool);
        let list = pool.entry(key.to_string()).or_default();
        if list.len() < self.cfg.outbound.concurrency_per_host.max(1) {
            list.push(Pooled {
                session,
                hop,
                idle_since: Instant::now(),
            });
        } else {
            drop(pool);
            quit_in_background(session);
        }
    }

    /// Closes pooled connections idle for too long (all of them when `all`), with QUIT.
    pub fn sweep(&self, all: bool) {
        let expired: Vec<Pooled> = {
            let mut pool = lock(&self.pool);
            let mut out = Vec::new();
            for list in pool.values_mut() {
                let (old, keep): (Vec<Pooled>, Vec<Pooled>) = list
                    .drain(..)
                    .partition(|p| all || p.idle_since.elapsed() > POOL_IDLE);
                *list = keep;
                out.extend(old);
            }
            pool.retain(|_, l| !l.is_empty());
            out
        };
        for p in expired {
            quit_in_background(p.session);
        }
    }

    /// Connects to the first hop that answers and completes EHLO, STARTTLS and AUTH.
    /// Under an MTA-STS policy (`sts`), `enforce` keeps only the MX hosts it names (and `dest`
    /// requires verified TLS already, [`enforcing`]); `testing` logs what would have failed.
    ///
    /// `prepared`: the hops and their DANE plan when [`Connector::dane_prepare`] looked them up
    /// (RFC 7672): a host with usable TLSA records must do STARTTLS with a certificate that
    /// matches them (even under MTA-STS, RFC 8461 2), one whose DNSSEC lookups failed is not
    /// used, the others are spoken to as without DANE.
    async fn open(
        &self,
        dest: &Destination,
        sts: Option<&Applied>,
        prepared: Option<(Vec<Hop>, DanePlan)>,
    ) -> Result<(Session<TcpStream>, Hop), (Option<String>, RcptOutcome)> {
        let (mut hops, plan) = match prepared {
            Some(p) => p,
            None => (
                route::hops(&self.cfg, self.resolver.as_ref(), dest)
                    .await
                    .map_err(|f| (None, f))?,
                DanePlan::default(),
            ),
        };
        // RFC 8461 2: a host with usable TLSA records is DANE's, whatever the MTA-STS policy.
        let by_dane = |name: &str| matches!(plan.host(name), HostDane::Verify(_));
        let mut opts = self
            .connect_options(dest)
            .map_err(|reply| (None, RcptOutcome::deferred(reply)))?;
        let enforce = sts.filter(|s| s.policy.mode == Mode::Enforce);
        let testing = sts.filter(|s| s.policy.mode == Mode::Testing);
        // TLS-RPT: what this delivery reports into (None: a route, or reporting is off). DANE:
        // when TLSA records apply, set `rpt.policy = crate::tls_rpt::Policy::tlsa(records)`.
        let mut rpt = crate::tls_rpt::Target::new(dest, sts);
        if let Some(r) = rpt.as_mut().filter(|_| plan.is_active()) {
            r.policy = crate::tls_rpt::Policy::tlsa(plan.records());
        }
        if let Some(s) = sts {
            let mut names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
            names.dedup();
            let other: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !s.policy.allows(n) && !by_dane(n))
                .collect();
            if enforce.is_some() {
                if other.len() == names.len() {
                    let reply = status::mta_sts_no_matching_mx(
                        &s.domain,
                        &s.policy.patterns(),
                        &names.join(", "),
                    );
                    tracing::warn!(domain = %s.domain, mx = %names.join(", "),
                        patterns = %s.policy.patterns(),
                        "relay: MTA-STS policy (enforce): no MX host matches; deferred");
                    if let Some(r) = &rpt {
                        r.no_matching_mx(&names);
                    }
                    return Err((None, RcptOutcome::deferred(reply)));
                }
                hops.retain(|h| s.policy.allows(&h.name) || by_dane(&h.name));
            } else {
                // Testing changes nothing about where mail goes, in what order.
                for name in other {
                    let reason = format!(
                        "MX host {name} does not match the policy (mx: {})",
                        s.policy.patterns()
                    );
                    tracing::warn!(domain = %s.domain, host = %name, reason = %reason,
                        "relay: MTA-STS testing policy would have failed");
                }
            }
        }
        if testing.is_some() && opts.tls == TlsMode::Opportunistic && opts.pin.is_none() {
            // Check the certificate (for the log only): an unverified one still encrypts.
            opts.verify_tls = true;
            if let Some(path) = &self.cfg.outbound.mta_sts_ca_file {
                match ca_roots(path) {
                    Ok(roots) => opts.extra_roots = roots,
                    Err(e) => {
                        tracing::warn!(error = %e, "relay: cannot use outbound.mta_sts_ca_file")
                    }
                }
            }
        }
        let tls_off = opts.tls == TlsMode::None;
        let (reached, skipped) = self.connect_hops(&hops, &opts, &plan).await;
        match reached {
            Ok((session, i)) => {
                let Some(hop) = hops.into_iter().nth(i) else {
                    return Err((None, RcptOutcome::deferred(status::no_host())));
                };
                if let Some(reason) = session.tls_fallback() {
                    // RFC 7435: opportunistic TLS falls back to cleartext; the operator
                    // should know the handshake failed and why.
                    tracing::warn!(
                        host = %hop.name,
                        addr = %hop.addr,
                        error = %reason,
                        "relay: TLS handshake failed; delivering in cleartext on a new connection"
                    );
                }
                if let Some(s) = testing {
                    let why = match session.tls() {
                        None => Some(match session.tls_fallback() {
                            Some(reason) => {
                                format!("TLS handshake failed ({reason}); delivered in cleartext")
                            }
                            None if tls_off => {
                                "outbound.tls is \"none\"; delivered in cleartext".to_string()
                            }
                            None => "no STARTTLS; delivered in cleartext".to_string(),
                        }),
                        Some(t) => t
                            .certificate
                            .unverified_reason()
                            .map(|r| format!("certificate not verified for {}: {r}", hop.name)),
                    };
                    if let Some(reason) = why {
                        tracing::warn!(domain = %s.domain, host = %hop.name, addr = %hop.addr,
                            reason = %reason, "relay: MTA-STS testing policy would have failed");
                    }
                }
                if let Some(t) = session.tls() {
                    metrics::counter!(names::TLS_SESSIONS, "direction" => "outbound",
                        "version" => names::tls_version(&t.version))
                    .increment(1);
                }
                if let Some(r) = &rpt {
                    r.session(&hop, &session, tls_off);
                }
                if session
                    .tls()
                    .is_some_and(|t| t.certificate == CertStatus::Dane)
                {
                    tracing::info!(host = %hop.name, addr = %hop.addr,
                        "relay: DANE verified: the certificate matches the host's TLSA records");
                }
                Ok((session, hop))
            }
            Err(errors) => {
                // Hosts left out over DANE lookups come first: a later host's own failure,
                // if any, is the one kept (status::connect_failure).
                let mut failures: Vec<(String, RcptOutcome)> = skipped;
                failures.extend(errors.into_iter().filter_map(|(i, e)| {
                        let hop = hops.get(i)?;
                        tracing::info!(host = %hop.name, addr = %hop.addr, error = %e, "relay: connection failed");
                        // RFC 8689 4.2.1: no STARTTLS at all is no REQUIRETLS either; the
                        // message must not go that way (a failed handshake or certificate
                        // stays temporary: the next try may work).
                        let e = match e {
                            ClientError::TlsUnavailable if dest.requiretls => {
                                ClientError::NeedsRequireTls
                            }
                            e => e,
                        };
                        if let Some(r) = &rpt {
                            r.connect_error(hop, &e);
                        }
                        // RFC 7672 2.2: a DANE host never goes unauthenticated or in the clear.
                        if plan.host(&hop.name).requires_tls() {
                            if let Some(reply) = dane_failure(hop, &e) {
                                return Some((hop.name.clone(), RcptOutcome::deferred(reply)));
                            }
                        }
                        // RFC 8461 5: under enforce, a TLS failure is the policy's failure.
                        if let (Some(s), ClientError::Tls(_) | ClientError::TlsUnavailable) =
                            (enforce, &e)
                        {
                            let p = peer(hop);
                            let reply = status::mta_sts_tls_failed(
                                &s.domain,
                                &status::at(p.name, p.addr),
                                &e.to_string(),
                            );
                            return Some((hop.name.clone(), RcptOutcome::deferred(reply)));
                        }
                        Some((hop.name.clone(), status::session_failure(peer(hop), e)))
                }));
                Err(status::connect_failure(failures))
            }
        }
    }

    /// The hops of `dest` and their DANE plan (RFC 7672), when DANE applies to it: MX delivery
    /// under `outbound.dane`, a route with `dane = true`, never `tls = "none"`. `None`: no
    /// DANE, [`Connector::open`] looks the hops up itself.
    async fn dane_prepare(
        &self,
        dest: &Destination,
    ) -> Result<Option<(Vec<Hop>, DanePlan)>, (Option<String>, RcptOutcome)> {
        if !dest.dane || dest.tls == TlsPolicy::None {
            return Ok(None);
        }
        let resolver = self.resolver.as_ref();
        // The probe (tern_dns::dnssec): without a validating resolver, nothing to look up.
        if !resolver.dnssec_validates().await.unwrap_or(false) {
            return Ok(None);
        }
        let plan = match &dest.kind {
            DestinationKind::Lmtp { .. } => return Ok(None),
            DestinationKind::Mx { domain } => {
                let hops = route::hops(&self.cfg, resolver, dest)
                    .await
                    .map_err(|f| (None, f))?;
                let mut names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
                names.dedup();
                let plan =
                    crate::dane::plan_mx(resolver, domain, &names, self.cfg.outbound.mx_port)
                        .await
                        .map_err(|reply| {
                            tracing::warn!(domain = %domain, status = %reply,
                                "relay: DANE: the MX lookup failed; deferred");
                            (None, RcptOutcome::deferred(reply))
                        })?;
                return Ok(Some((hops, plan.unwrap_or_default())));
            }
            DestinationKind::Route { host, port } => {
                crate::dane::plan_route(resolver, host, *port).await
            }
        };
        let hops = route::hops(&self.cfg, resolver, dest)
            .await
            .map_err(|f| (None, f))?;
        Ok(Some((hops, plan.unwrap_or_default())))
    }

    /// RFC 5321 5.1 over `hops` in order, each host with the options its DANE verdict gives
    /// (`opts` when none): the session and the index of the hop reached, or every hop's error;
    /// and, in order, the hosts not tried because their DNSSEC lookups failed.
    async fn connect_hops(
        &self,
        hops: &[Hop],
        opts: &ConnectOptions,
        plan: &DanePlan,
    ) -> (
        Result<(Session<TcpStream>, usize), Vec<(usize, ClientError)>>,
        Vec<(String, RcptOutcome)>,
    ) {
        let mut errors = Vec::new();
        let mut skipped = Vec::new();
        let mut start = 0;
        while start < hops.len() {
            let name = hops[start].name.as_str();
            let end = hops[start..]
                .iter()
                .position(|h| h.name != name)
                .map_or(hops.len(), |n| start + n);
            let group = start..end;
            start = end;
            let dane_opts;
            let group_opts = match plan.host(name) {
                HostDane::Off => opts,
                HostDane::Unusable(reply) => {
                    skipped.push((name.to_string(), RcptOutcome::deferred(reply.clone())));
                    continue;
                }
                HostDane::Verify(check) => {
                    let mut o = opts.clone();
                    o.tls = TlsMode::Required;
                    o.pin = None;
                    o.dane = Some(check.clone());
                    dane_opts = o;
                    &dane_opts
                }
                HostDane::TlsOnly => {
                    let mut o = opts.clone();
                    // RFC 7672 3.1.3: TLS without authentication, unless something (an
                    // MTA-STS enforce policy, a route) already demands a verified one.
                    if o.tls != TlsMode::Required {
                        o.tls = TlsMode::Required;
                        o.verify_tls = false;
                    }
                    dane_opts = o;
                    &dane_opts
                }
            };
            let addrs: Vec<(std::net::SocketAddr, &str)> = hops[group.clone()]
                .iter()
                .map(|h| (h.addr, h.name.as_str()))
                .collect();
            match connect_first(&addrs, group_opts).await {
                Ok((session, i)) => return (Ok((session, group.start + i)), skipped),
                Err(errs) => errors.extend(errs.into_iter().map(|(i, e)| (group.start + i, e))),
            }
        }
        (Err(errors), skipped)
    }

    fn connect_options(&self, dest: &Destination) -> Result<ConnectOptions, StoredReply> {
        let o = &self.cfg.outbound;
        let mut session = SessionOptions::new(o.helo_name.clone());
        session.timeouts = outbound_timeouts(&self.cfg);
        // Issue 10: a server trickling the body must not hold the attempt for a data-block
        // timeout per block; routes too (a smarthost crawling is no better).
        session.min_data_rate = o.min_data_rate.map(|r| tern_client::MinDataRate {
            bytes_per_sec: r.bytes_per_sec,
            grace: r.grace,
        });
        let mut opts = ConnectOptions::new(session);
        // RFC 7435: between MTAs, encryption without authentication beats no encryption; only a
        // route that demands TLS also demands a certificate we can verify.
        (opts.tls, opts.verify_tls) = match dest.tls {
            TlsPolicy::None => (TlsMode::None, false),
            TlsPolicy::Opportunistic => (TlsMode::Opportunistic, false),
            TlsPolicy::Required => (TlsMode::Required, true),
        };
        if let Some(path) = &dest.ca_file {
            opts.extra_roots = ca_roots(path)?;
        }
        if let Some(auth) = &dest.auth {
            let password = auth.read_password().map_err(|e| {
                status::password_file_unreadable(
                    &auth.password_file.display().to_string(),
                    &e.to_string(),
                )
            })?;
            opts.credentials = Some(Credentials {
                authzid: None,
                username: auth.user.clone(),
                password,
            });
        }
        Ok(opts)
    }
}

/// The status of a TLS failure at a host DANE applies to (RFC 7672 2.2): a certificate that
/// matched no TLSA record, or no STARTTLS or a failed handshake; None for other failures.
fn dane_failure(hop: &Hop, e: &ClientError) -> Option<StoredReply> {
    match e {
        ClientError::Tls(TlsFailure::Certificate(m)) if m.starts_with("DANE:") => {
            Some(status::dane_mismatch(m))
        }
        ClientError::Tls(_) | ClientError::TlsUnavailable => {
            let p = peer(hop);
            Some(status::dane_tls_failed(
                &status::at(p.name, p.addr),
                &e.to_string(),
            ))
        }
        _ => None,
    }
}

/// The certificates of a route's `ca_file` (`tern_client::load_ca_file`), read at each
/// connection so a renewed CA needs no restart; a bad file is one of tern's own statuses.
fn ca_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, StoredReply> {
    let shown = path.display().to_string();
    load_ca_file(path).map_err(|e| match &e {
        CaFileError::Unreadable { source, .. } => {
            status::ca_file_unreadable(&shown, &source.to_string())
        }
        CaFileError::Empty { .. } => status::ca_file_empty(&shown),
        CaFileError::Invalid { source, .. } => {
            status::ca_file_unparsable(&shown, &source.to_string())
        }
    })
}

/// `dest` under an MTA-STS `enforce` policy (RFC 8461 4.2): TLS required with a certificate
/// verified for the MX name (as a route's `tls = "required"`), `outbound.mta_sts_ca_file`
/// trusted besides the webpki roots, and its own pool key (never a session opened without it).
fn enforcing(dest: &Destination, ca_file: Option<&std::path::PathBuf>) -> Destination {
    let mut d = dest.clone();
    d.tls = TlsPolicy::Required;
    if d.ca_file.is_none() {
        d.ca_file = ca_file.cloned();
    }
    d.key.push_str(" mta-sts=enforce");
    d
}

/// The client's timeouts from `[outbound]`: `data_timeout` for the reply after the message,
/// `command_timeout` for every other step (SMTP and LMTP alike).
pub(crate) fn outbound_timeouts(cfg: &Config) -> Timeouts {
    let o = &cfg.outbound;
    Timeouts {
        connect: o.connect_timeout,
        banner: o.command_timeout,
        ehlo: o.command_timeout,
        mail: o.command_timeout,
        rcpt: o.command_timeout,
        data: o.command_timeout,
        data_block: o.command_timeout,
        data_end: o.data_timeout,
        command: o.command_timeout,
    }
}

fn peer(hop: &Hop) -> Peer<'_> {
    Peer {
        name: &hop.name,
        addr: Some(hop.addr.ip()),
    }
}

/// What protected the session, for the attempt's record.
fn tls_outcome(session: &Session<TcpStream>) -> TlsOutcome {
    match session.tls() {
        Some(t) => TlsOutcome::Tls {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            verified: t.verified,
        },
        None => TlsOutcome::Cleartext,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn quit_in_background(session: Session<TcpStream>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), session.quit()).await;
    });
}
