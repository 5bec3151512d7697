//! Sending one report: `_smtp._tls.<domain>` names where (RFC 8460 3); `mailto:` gets a message
//! made durable the way tern's own notifications are (crates/delivery/src/notify.rs: the
//! router decides, local mailboxes get it in their Maildir, remote addresses through the
//! queue), `https:` gets a POST (RFC 8460 5.4) over verified TLS, bounded in time and size.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use tern_config::Config;
use tern_delivery::router::{self, RcptDecision, Target};
use tern_delivery::LocalDelivery;
use tern_dns::{DnsError, Resolver};
use tern_proto::{Address, ForwardPath};
use tern_queue::{Envelope, QueueId, QueueStore, Recipient, RecipientStatus};

use super::record::{self, Rua};
use super::report::{self, Period, Submitter};
use super::store::DomainData;

/// The `_smtp._tls` TXT lookup.
const TXT_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole POST (address lookup, connect, TLS, request, answer).
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// Of the answer to a POST, only this much is read.
const MAX_ANSWER: usize = 16 * 1024;

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Queued, delivered or posted to at least one `rua`.
    Sent,
    /// The domain publishes no (usable) TLSRPT record: nobody wants it; dropped.
    NotWanted,
    /// Try again at the next period's end (DNS trouble, every `rua` failed).
    Retry,
}

pub struct Sender {
    cfg: Arc<Config>,
    queue: Arc<dyn QueueStore>,
    resolver: Arc<dyn Resolver>,
}

impl Sender {
    pub fn new(cfg: Arc<Config>, queue: Arc<dyn QueueStore>) -> Self {
        let setup = tern_dns::setup_resolver(&cfg.dns.nameservers, crate::scheduler::DNS_TIMEOUT);
        Self {
            cfg,
            queue,
            resolver: setup.resolver,
        }
    }

    #[cfg(test)]
    pub fn with_resolver(
        cfg: Arc<Config>,
        queue: Arc<dyn QueueStore>,
        resolver: Arc<dyn Resolver>,
    ) -> Self {
        Self {
            cfg,
            queue,
            resolver,
        }
    }

    fn submitter(&self) -> Submitter<'_> {
        Submitter {
            organization: &self.cfg.tls_rpt.organization,
            contact: &self.cfg.tls_rpt.contact,
            domain: &self.cfg.outbound.helo_name,
        }
    }

    /// Looks up where `domain` wants its reports and sends the one about `period`.
    pub async fn send(&self, domain: &str, period: Period, data: &DomainData) -> Outcome {
        let name = format!("_smtp._tls.{domain}");
        let records = match tokio::time::timeout(TXT_TIMEOUT, self.resolver.txt(&name)).await {
            Ok(Ok(r)) => r,
            Ok(Err(DnsError::Temporary { reason, .. })) => {
                tracing::warn!(domain = %domain, error = %reason,
                    "tls-rpt: cannot look up the TLSRPT record; the report is kept for later");
                return Outcome::Retry;
            }
            Ok(Err(e)) => {
                tracing::debug!(domain = %domain, error = %e, "tls-rpt: no TLSRPT record; no report");
                return Outcome::NotWanted;
            }
            Err(_) => {
                tracing::warn!(domain = %domain,
                    "tls-rpt: the TLSRPT record lookup timed out; the report is kept for later");
                return Outcome::Retry;
            }
        };
        let rua = match record::parse_records(&records) {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(domain = %domain, reason = %why, "tls-rpt: no usable TLSRPT record; no report");
                return Outcome::NotWanted;
            }
        };
        let sub = self.submitter();
        let json = report::json(&sub, domain, period, data);
        let gz = match report::gzip(&json) {
            Ok(gz) => gz,
            Err(e) => {
                tracing::warn!(domain = %domain, error = %e, "tls-rpt: cannot compress the report");
                return Outcome::Retry;
            }
        };
        let id = report::report_id(&sub, domain, period);
        let mut sent = false;
        for r in &rua {
            let result = match r {
                Rua::Mailto(to) => self.mail(to, domain, period, &gz).await,
                Rua::Https(url) => self.post(url, domain, period, &gz).await,
            };
            match result {
                Ok(how) => {
                    sent = true;
                    tracing::info!(domain = %domain, rua = %r, report_id = %id, how = %how,
                        start = %report::rfc3339(period.start), "tls-rpt: report sent");
                }
                Err(e) => tracing::warn!(domain = %domain, rua = %r, report_id = %id, error = %e,
                    "tls-rpt: cannot send the report"),
            }
        }
        if sent {
            Outcome::Sent
        } else {
            Outcome::Retry
        }
    }

    /// The report as mail to `to`, durable when this returns Ok: in the Maildir(s) of a local
    /// recipient, or committed to the queue for a remote one.
    async fn mail(
        &self,
        to: &str,
        domain: &str,
        period: Period,
        gz: &[u8],
    ) -> Result<String, String> {
        let addr = Address::parse(to).map_err(|e| format!("invalid address {to:?}: {e}"))?;
        let now = SystemTime::now();
        let id = QueueId::generate();
        let from = self.cfg.tls_rpt.from.clone();
        let bytes = report::message(
            &self.submitter(),
            &from,
            to,
            domain,
            period,
            gz,
            now,
            id.as_ref(),
        );
        let received = format!(
            "Received: by {} (tern) id {id};\r\n\t{}\r\n",
            self.cfg.hostname,
            tern_proto::message::rfc5322_date(now)
        );
        let (cfg, queue, to) = (self.cfg.clone(), self.queue.clone(), to.to_string());
        let task = tokio::task::spawn_blocking(move || {
            let decision = if router::is_local_domain(&cfg, addr.domain()) {
                router::decide_recipient(&cfg, &ForwardPath::Mailbox(addr), true)
            } else {
                RcptDecision::Accept(vec![Target::Remote(to.clone())])
            };
            let targets = match decision {
                RcptDecision::Accept(t) => t,
                other => return Err(format!("{to}: {other:?}")),
            };
            let (mut local, mut remote) = (Vec::new(), Vec::new());
            for t in targets {
                match t {
                    Target::Local(k) => local.push(k),
                    Target::Remote(a) => remote.push(a),
                }
            }
            local.sort();
            local.dedup();
            remote.sort();
            remote.dedup();
            let delivered = LocalDelivery::unstaged(&cfg)
                .deliver(
                    local.iter().map(String::as_str),
                    Some(&from),
                    &received,
                    &bytes,
                )
                .map_err(|e| format!("delivering the report locally: {e}"))?;
            if !remote.is_empty() {
                let recipients = remote
                    .iter()
                    .map(|address| Recipient {
                        dsn: Default::default(),
                        address: address.clone(),
                        original: None,
                        status: RecipientStatus::Pending,
                    })
                    .collect();
                let entry = Envelope {
                    smtputf8: !remote.iter().all(|a| a.is_ascii()) || !from.is_ascii(),
                    ..Envelope::new(
                        id.clone(),
                        Some(from.clone()),
                        recipients,
                        now,
                        bytes.len() as u64,
                    )
                };
                queue
                    .commit(&entry, &bytes)
                    .map_err(|e| format!("queueing the report: {e}"))?;
            }
            delivered.keep();
            Ok(format!(
                "queued as {id} (local {}, remote {})",
                local.len(),
                remote.len()
            ))
        });
        task.await
            .map_err(|e| format!("the task queueing the report failed: {e}"))?
    }

    /// RFC 8460 5.4: POST the gzip'd report with `Content-Type: application/tlsrpt+gzip`; any
    /// 2xx is success.
    async fn post(
        &self,
        url: &str,
        domain: &str,
        period: Period,
        gz: &[u8],
    ) -> Result<String, String> {
        match tokio::time::timeout(POST_TIMEOUT, self.post_inner(url, domain, period, gz)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the POST took longer than {}s",
                POST_TIMEOUT.as_secs()
            )),
        }
    }

    async fn post_inner(
        &self,
        url: &str,
        domain: &str,
        period: Period,
        gz: &[u8],
    ) -> Result<String, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("no host in {url:?}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self
                .resolver
                .ips(&host)
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?,
        };
        let usable: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| self.cfg.outbound.refusal(*ip).is_none())
            .collect();
        if usable.is_empty() {
            return Err(format!("{host} has no address tern may connect to (outbound.deny_networks / allow_networks)"));
        }
        let tls = crate::mta_sts::https_client_config(&self.cfg)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| format!("{host} is not a valid server name"))?;
        let mut last = String::new();
        for ip in usable {
            let addr = SocketAddr::new(ip, port);
            let tcp = match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("cannot connect to {host}[{addr}]: {e}");
                    continue;
                }
            };
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS with {host}[{addr}] failed: {e}"))?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
                .await
                .map_err(|e| format!("HTTP with {host} failed: {e}"))?;
            let driver = tokio::spawn(conn);
            let authority = if port == 443 {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            let req = hyper::Request::builder()
                .method(hyper::Method::POST)
                .uri(path.as_str())
                .header(hyper::header::HOST, authority)
                .header(hyper::header::USER_AGENT, "tern")
                .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
                .header(hyper::header::CONNECTION, "close")
                .header(
                    "Content-Disposition",
                    format!(
                        "attachment; filename=\"{}\"",
                        report::file_name(&self.submitter(), domain, period)
                    ),
                )
                .body(Full::new(Bytes::copy_from_slice(gz)))
                .map_err(|e| format!("cannot build the request: {e}"));
            let result = match req {
                Ok(req) => match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        // Read (a bounded part of) the answer so the server sees a clean end.
                        let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
                        if status.is_success() {
                            Ok(format!("POST {url}: HTTP {}", status.as_u16()))
                        } else {
                            Err(format!("POST {url} answered HTTP {}", status.as_u16()))
                        }
                    }
                    Err(e) => Err(format!("HTTP request to {host} failed: {e}")),
                },
                Err(e) => Err(e),
            };
            driver.abort();
            return result;
        }
        Err(last)
    }
}
