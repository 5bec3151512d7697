//! One delivery attempt for a group of recipients that share a destination: take a pooled
//! connection or connect to the hops in order, run one transaction, and turn every recipient's
//! outcome into the status text the queue stores. Also the connection pool and the concurrency
//! limits (overall and per destination).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use tern_client::{
    connect, load_ca_file, ClientError, ConnectOptions, Credentials, Envelope as ClientEnvelope,
    Failure, Outcome, Session, SessionOptions, Stage, Timeouts, TlsMode,
};
use tern_config::{Config, TlsPolicy};
use tern_dns::Resolver;
use tern_proto::{Address, ForwardPath, ReversePath};

use super::route::{self, Destination, Hop};

/// How long a connection may sit idle in the pool. Short: receivers drop idle clients, and a
/// pooled connection only pays off for mail that is already waiting.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// What happened to one recipient in one attempt; the text starts with a reply code and an
/// enhanced status code (RFC 3463) whether the remote said it or tern did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

/// The results of one attempt, in the order of the recipients given, and the host that was
/// talked to (for `Remote-MTA` and `tern queue show`).
#[derive(Debug)]
pub struct AttemptResult {
    pub host: Option<String>,
    pub results: Vec<RcptResult>,
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
        }
    }

    /// Delivers `message` from `sender` (None = `<>`) to `recipients` at `dest`.
    pub async fn deliver(
        &self,
        dest: &Destination,
        sender: Option<&str>,
        recipients: &[String],
        message: &[u8],
    ) -> AttemptResult {
        let _permits = self.permits(&dest.key).await;
        let mut results: Vec<Option<RcptResult>> = vec![None; recipients.len()];
        let from = match sender {
            None => ReversePath::Null,
            Some(s) => match Address::parse(s) {
                Ok(a) => ReversePath::Mailbox(a),
                Err(e) => {
                    let text = format!("553 5.1.7 the stored sender <{s}> is not valid: {e}");
                    return AttemptResult {
                        host: None,
                        results: vec![RcptResult::Failed(text); recipients.len()],
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
                    results[i] = Some(RcptResult::Failed(format!(
                        "553 5.1.3 the stored recipient <{r}> is not valid: {e}"
                    )))
                }
            }
        }
        if rcpts.is_empty() {
            return AttemptResult {
                host: None,
                results: results.into_iter().flatten().collect(),
            };
        }
        let envelope = ClientEnvelope { from, rcpts };

        let (mut session, hop) = match self.take_pooled(&dest.key).await {
            Some(p) => (p.session, p.hop),
            None => match self.open(dest).await {
                Ok(pair) => pair,
                Err((host, failure)) => {
                    for i in sent_index {
                        results[i] = Some(failure.clone());
                    }
                    return AttemptResult {
                        host,
                        results: results.into_iter().flatten().collect(),
                    };
                }
            },
        };

        let delivery = session.send_message(&envelope, message).await;
        for (i, (_, outcome)) in sent_index.into_iter().zip(delivery.per_recipient) {
            results[i] = Some(rcpt_result(&hop, outcome));
        }
        if session.is_usable() {
            self.put_pooled(&dest.key, session, hop.clone());
        }
        AttemptResult {
            host: Some(hop.name),
            results: results.into_iter().flatten().collect(),
        }
    }

    async fn permits(
        &self,
        key: &str,
    ) -> (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>) {
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
        let all = self.overall.clone().acquire_owned().await.ok();
        (per, all)
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
    async fn open(
        &self,
        dest: &Destination,
    ) -> Result<(Session<TcpStream>, Hop), (Option<String>, RcptResult)> {
        let hops = match route::hops(&self.cfg, self.resolver.as_ref(), dest).await {
            Ok(h) => h,
            Err(f) => {
                let r = if f.permanent {
                    RcptResult::Failed(f.reply)
                } else {
                    RcptResult::Deferred(f.reply)
                };
                return Err((None, r));
            }
        };
        let opts = match self.connect_options(dest) {
            Ok(o) => o,
            Err(text) => return Err((None, RcptResult::Deferred(text))),
        };
        let mut last: Option<(String, RcptResult)> = None;
        let mut any_temporary = false;
        for hop in hops {
            match connect(hop.addr, &hop.name, &opts).await {
                Ok(session) => return Ok((session, hop)),
                Err(e) => {
                    tracing::info!(host = %hop.name, addr = %hop.addr, error = %e, "relay: connection failed");
                    let result = session_failure(&hop, e);
                    any_temporary |= !matches!(result, RcptResult::Failed(_));
                    last = Some((hop.name.clone(), result));
                }
            }
        }
        match last {
            // RFC 5321 5.1: a 5xx from one MX does not stop the others; only when every host
            // refused permanently is the recipient failed.
            Some((host, RcptResult::Failed(text))) if any_temporary => {
                Err((Some(host), RcptResult::Deferred(text)))
            }
            Some((host, r)) => Err((Some(host), r)),
            None => Err((
                None,
                RcptResult::Deferred("451 4.4.4 no host to deliver to".into()),
            )),
        }
    }

    fn connect_options(&self, dest: &Destination) -> Result<ConnectOptions, String> {
        let o = &self.cfg.outbound;
        let mut session = SessionOptions::new(o.helo_name.clone());
        session.timeouts = Timeouts {
            connect: o.connect_timeout,
            banner: o.command_timeout,
            ehlo: o.command_timeout,
            mail: o.command_timeout,
            rcpt: o.command_timeout,
            data: o.command_timeout,
            data_block: o.command_timeout,
            data_end: o.data_timeout,
            command: o.command_timeout,
        };
        let mut opts = ConnectOptions::new(session);
        // RFC 7435: between MTAs, encryption without authentication beats no encryption; only a
        // route that demands TLS also demands a certificate we can verify.
        (opts.tls, opts.verify_tls) = match dest.tls {
            TlsPolicy::None => (TlsMode::None, false),
            TlsPolicy::Opportunistic => (TlsMode::Opportunistic, false),
            TlsPolicy::Required => (TlsMode::Required, true),
        };
        if let Some(path) = &dest.ca_file {
            opts.extra_roots = load_ca_file(path)
                .map_err(|e| format!("451 4.7.5 {}", e.describe("the route's ca_file")))?;
        }
        if let Some(auth) = &dest.auth {
            let password = auth.read_password().map_err(|e| {
                format!(
                    "451 4.3.5 cannot read the route's password_file {}: {e}",
                    auth.password_file.display()
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn quit_in_background(session: Session<TcpStream>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), session.quit()).await;
    });
}

/// A connection that could not be set up. Trouble with the route's own AUTH settings (wrong
/// password, no TLS to send it over, no common mechanism) is the operator's to fix, not the
/// recipient's fault: defer, as Postfix does, instead of bouncing every message meanwhile.
fn session_failure(hop: &Hop, e: ClientError) -> RcptResult {
    let at = format!("host {}[{}]", hop.name, hop.addr.ip());
    match &e {
        ClientError::PlaintextAuth => RcptResult::Deferred(format!(
            "451 4.7.9 {at}: {e} (the route has user/password_file: use tls = \"required\")"
        )),
        ClientError::AuthUnavailable => RcptResult::Deferred(format!("451 4.7.9 {at}: {e}")),
        ClientError::Rejected {
            stage: Stage::Auth,
            reply,
        } => RcptResult::Deferred(format!(
            "451 4.7.8 {at}: authentication failed, check the route's user and password_file (server said: {reply})"
        )),
        _ => rcpt_result(hop, Outcome::from_error(e)),
    }
}

/// The stored text for one recipient's outcome: the remote reply as given, with where it came
/// from; or tern's own code for failures that are not replies (connection, timeout, garbage).
fn rcpt_result(hop: &Hop, outcome: Outcome) -> RcptResult {
    let at = format!("host {}[{}]", hop.name, hop.addr.ip());
    match outcome {
        Outcome::Accepted(reply) => RcptResult::Delivered(format!("{reply} ({at})")),
        Outcome::TemporaryFailure(f) => RcptResult::Deferred(failure_text(&at, &f, false)),
        Outcome::PermanentFailure(f) => RcptResult::Failed(failure_text(&at, &f, true)),
    }
}

fn failure_text(at: &str, failure: &Failure, permanent: bool) -> String {
    match failure {
        Failure::Reply { stage, reply } => with_code(
            reply.code(),
            &format!("{reply} ({at}, in reply to {stage})"),
            permanent,
        ),
        Failure::Error(e) => {
            if let Some(reply) = e.reply() {
                return with_code(reply.code(), &format!("{reply} ({at}: {e})"), permanent);
            }
            let code = match e {
                ClientError::Timeout { .. } => "451 4.4.2",
                ClientError::Io { .. } | ClientError::Closed { .. } => "451 4.4.1",
                ClientError::Protocol { .. } => "451 4.5.0",
                ClientError::Tls(_) | ClientError::TlsUnavailable => "451 4.7.5",
                ClientError::TooBig { .. } => "552 5.3.4",
                ClientError::Needs8BitMime => "554 5.6.3",
                ClientError::NeedsSmtpUtf8 => "553 5.6.7",
                ClientError::PlaintextAuth | ClientError::AuthUnavailable => "451 4.7.9",
                _ if permanent => "554 5.0.0",
                _ => "451 4.0.0",
            };
            format!("{code} {at}: {e}")
        }
    }
}

/// Keeps a stored status honest about its class: a reply outside 4xx/5xx that ended a
/// recipient's attempt (a stray 3xx, say) is recorded under tern's own code.
fn with_code(code: u16, text: &str, permanent: bool) -> String {
    match (code / 100, permanent) {
        (4, false) | (5, true) => text.to_string(),
        (_, true) => format!("554 5.5.0 unexpected reply: {text}"),
        (_, false) => format!("451 4.5.0 unexpected reply: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{EnhancedCode, Reply};

    fn hop() -> Hop {
        Hop {
            name: "mx.remote.test".into(),
            addr: "127.0.0.1:25".parse().unwrap(),
        }
    }

    #[test]
    fn remote_replies_are_kept_with_their_origin() {
        let r = Reply::new(
            550,
            EnhancedCode::parse_prefix("5.1.1 x").map(|(e, _)| e),
            "no such user",
        );
        let out = rcpt_result(&hop(), Outcome::from_reply(Stage::Rcpt, r));
        assert_eq!(
            out,
            RcptResult::Failed(
                "550 5.1.1 no such user (host mx.remote.test[127.0.0.1], in reply to RCPT TO)"
                    .into()
            )
        );
    }

    #[test]
    fn network_failures_get_tern_codes() {
        let e = ClientError::Timeout {
            stage: Stage::Banner,
            after: Duration::from_secs(2),
        };
        match rcpt_result(&hop(), Outcome::from_error(e)) {
            RcptResult::Deferred(t) => {
                assert!(t.starts_with("451 4.4.2 host mx.remote.test"), "{t}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn route_auth_trouble_is_deferred_not_bounced() {
        for e in [
            ClientError::PlaintextAuth,
            ClientError::Rejected {
                stage: Stage::Auth,
                reply: Reply::new(535, None, "bad credentials"),
            },
        ] {
            match session_failure(&hop(), e) {
                RcptResult::Deferred(t) => assert!(t.starts_with("451 4.7."), "{t}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_stray_3xx_is_recorded_as_temporary() {
        let r = Reply::new(354, None, "go ahead");
        match rcpt_result(&hop(), Outcome::from_reply(Stage::DataEnd, r)) {
            RcptResult::Deferred(t) => {
                assert!(t.starts_with("451 4.5.0 unexpected reply: 354"), "{t}")
            }
            other => panic!("{other:?}"),
        }
    }
}
