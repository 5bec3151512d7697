//! Fetching a policy (RFC 8461 3.3): one HTTPS GET of
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`, the certificate verified for
//! `mta-sts.<domain>`, no redirects, `text/plain`, at most 64 KiB, all within 10 s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use tern_config::Config;
use tern_dns::Resolver;

use super::policy::{parse_policy, Policy};

/// The whole policy fetch (address lookup, connect, TLS, request, body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 8461 3.3: a policy body is at most 64 KiB.
const MAX_BODY: usize = 64 * 1024;

/// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt` (on
/// `outbound.mta_sts_port`), within [`FETCH_TIMEOUT`].
pub async fn fetch(cfg: &Config, resolver: &dyn Resolver, domain: &str) -> Result<Policy, String> {
    match tokio::time::timeout(FETCH_TIMEOUT, fetch_body(cfg, resolver, domain)).await {
        Ok(Ok(body)) => parse_policy(&body),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "fetching the policy took longer than {}s",
            FETCH_TIMEOUT.as_secs()
        )),
    }
}

async fn fetch_body(cfg: &Config, resolver: &dyn Resolver, domain: &str) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let ips = resolver
        .ips(&host)
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    // The same address policy as MX hosts: DNS must not point tern at internal networks.
    let (usable, refused): (Vec<IpAddr>, Vec<IpAddr>) = ips
        .into_iter()
        .partition(|ip| cfg.outbound.refusal(*ip).is_none());
    if usable.is_empty() {
        return Err(match refused.first() {
            Some(ip) => format!(
                "every address of {host} is refused ({ip}: {})",
                cfg.outbound
                    .refusal(*ip)
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ),
            None => format!("{host} has no address"),
        });
    }
    let tls = tls_config(cfg)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| format!("{host} is not a valid server name"))?;
    let mut last = String::new();
    for ip in usable {
        let addr = SocketAddr::new(ip, cfg.outbound.mta_sts_port);
        let tcp = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("cannot connect to {host}[{addr}]: {e}");
                continue;
            }
        };
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = connector
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {host}[{addr}] failed: {e}"))?;
        // One connection, one request.
        return request(&host, stream).await;
    }
    Err(last)
}

pub(crate) fn tls_config(cfg: &Config) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &cfg.outbound.mta_sts_ca_file {
        let certs =
            tern_client::load_ca_file(path).map_err(|e| e.describe("outbound.mta_sts_ca_file"))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate in outbound.mta_sts_ca_file: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn request<S>(host: &str, stream: S) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP with {host} failed: {e}"))?;
    let driver = AbortOnDrop(tokio::spawn(conn));
    let req = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "tern")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP request to {host} failed: {e}"))?;
    // RFC 8461 3.3: no redirects; only 200 is a policy.
    if resp.status() != hyper::StatusCode::OK {
        return Err(format!(
            "https://{host}/.well-known/mta-sts.txt answered HTTP {} (only 200 counts; redirects are not followed)",
            resp.status().as_u16()
        ));
    }
    let content_type = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("text/plain") {
        return Err(format!(
            "the policy's Content-Type is {content_type:?}, not text/plain"
        ));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            format!("reading the policy from {host} failed (at most {MAX_BODY} bytes): {e}")
        })?
        .to_bytes();
    drop(driver);
    String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".to_string())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
