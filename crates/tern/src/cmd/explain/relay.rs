//! The outbound half of `tern explain`: for a remote recipient, the relay's own decisions,
//! `tern_relay::route::destination` (a `[routes]` entry, the `*` smarthost, or MX) and
//! `tern_relay::route::hops` (RFC 5321 5.1 through `tern_dns`, with the relay's address policy),
//! asked of the same resolver setup the relay uses (`[dns] nameservers`). The MX hosts and their
//! addresses are looked up once more with `tern_dns::mx_hosts` / `resolve_host` only to show
//! them; which addresses would be tried, and what happens when none can be, is `hops`' answer.
//! Every lookup is under a timeout, and a DNS failure is reported as the relay would act on it
//! (defer or bounce, with its reply), never as an error of explain.

use std::time::Duration;

use serde_json::{json, Value};
use tern_config::{Config, TlsPolicy};
use tern_dns::{mx_hosts, resolve_host, Resolver};
use tern_queue::RcptClass;
use tern_relay::route::{self, DestinationKind};

/// `hops` has its own 30 s deadline for the DNS work; this one only guards explain itself.
const HOPS_TIMEOUT: Duration = Duration::from_secs(35);
/// For the lookups made only to show the MX hosts and their addresses.
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay would do with mail for `domain` (lower case), as a JSON object.
pub async fn explain(cfg: &Config, resolver: &dyn Resolver, domain: &str) -> Value {
    let dest = route::destination(cfg, domain);
    let mut out = json!({
        "domain": domain,
        "tls": {
            "policy": dest.tls.as_str(),
            "meaning": tls_meaning(dest.tls),
            "from": tls_source(cfg, domain),
        },
    });
    match &dest.kind {
        DestinationKind::Route { host, port } => {
            let entry = if cfg.routes.contains_key(domain) {
                domain.to_string()
            } else {
                "*".to_string()
            };
            out["kind"] = json!("route");
            out["route"] = json!({
                "entry": format!("[routes] \"{entry}\""),
                "host": host,
                "port": port,
                "auth_user": dest.auth.as_ref().map(|a| a.user.clone()),
                "ca_file": dest.ca_file.as_ref().map(|p| p.display().to_string()),
            });
        }
        DestinationKind::Mx { .. } => {
            out["kind"] = json!("mx");
            out["mx_port"] = json!(cfg.outbound.mx_port);
        }
        DestinationKind::Lmtp { target } => {
            // A local domain under `[local] delivery = "lmtp"`: queued, then LMTP; no DNS.
            out["kind"] = json!("lmtp");
            out["lmtp"] = json!(target.to_string());
            out["hops"] = json!([]);
            out["outcome"] = json!({
                "action": "deliver",
                "text": format!("the relay would deliver over LMTP (RFC 2033) to {target}"),
            });
            return out;
        }
    }
    // The lookups for showing the MX hosts run alongside the relay's own, so a DNS server that
    // does not answer costs one timeout, not two.
    let show = async {
        match &dest.kind {
            DestinationKind::Mx { domain } => Some(show_mx(resolver, domain).await),
            DestinationKind::Route { .. } | DestinationKind::Lmtp { .. } => None,
        }
    };
    let found = tokio::time::timeout(HOPS_TIMEOUT, route::hops(cfg, resolver, &dest));
    let (shown, found) = tokio::join!(show, found);
    if let Some(mx) = shown {
        out["mx"] = mx;
    }
    match found {
        Ok(Ok(hops)) => {
            out["hops"] = hops
                .iter()
                .map(|h| json!({"host": h.name, "address": h.addr.to_string()}))
                .collect();
            out["outcome"] = json!({
                "action": "deliver",
                "text": format!("the relay would try {} address(es) in this order", hops.len()),
            });
        }
        Ok(Err(failure)) => {
            let (action, why) = match failure.class {
                RcptClass::Failed => ("bounce", "a permanent failure: the sender gets a bounce (RFC 3464)"),
                _ => (
                    "defer",
                    "a temporary failure: the message stays queued and is retried on the queue.retry_schedule",
                ),
            };
            out["hops"] = json!([]);
            out["outcome"] = json!({
                "action": action,
                "reply": failure.reply.to_string(),
                "text": why,
            });
        }
        Err(_) => {
            out["hops"] = json!([]);
            out["outcome"] = json!({
                "action": "defer",
                "reply": "451 4.4.3 DNS lookups did not finish in time",
                "text": format!("the lookups took longer than {}s; the relay would defer and retry", HOPS_TIMEOUT.as_secs()),
            });
        }
    }
    out
}

/// The MX hosts in the relay's order (RFC 5321 5.1: by preference; equal ones shuffled), each
/// with its addresses, or the implicit MX, or the DNS answer that stands in for them.
async fn show_mx(resolver: &dyn Resolver, domain: &str) -> Value {
    let found = match tokio::time::timeout(SHOW_TIMEOUT, mx_hosts(resolver, domain)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            return json!({"hosts": [], "implicit": false, "error": e.to_string(),
                          "temporary": e.is_temporary()})
        }
        Err(_) => {
            return json!({"hosts": [], "implicit": false, "temporary": true,
                          "error": format!("no MX answer within {}s", SHOW_TIMEOUT.as_secs())})
        }
    };
    let mut hosts = Vec::new();
    for h in &found.hosts {
        let (addresses, error) =
            match tokio::time::timeout(SHOW_TIMEOUT, resolve_host(resolver, &h.name)).await {
                Ok(Ok(ips)) => (ips.iter().map(ToString::to_string).collect(), None),
                Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                Err(_) => (
                    Vec::new(),
                    Some(format!("no answer within {}s", SHOW_TIMEOUT.as_secs())),
                ),
            };
        hosts.push(json!({
            "host": h.name,
            "preference": h.preference,
            "addresses": addresses,
            "error": error,
        }));
    }
    json!({"hosts": hosts, "implicit": found.implicit})
}

fn tls_meaning(p: TlsPolicy) -> &'static str {
    match p {
        TlsPolicy::None => "plaintext: STARTTLS is never used",
        TlsPolicy::Opportunistic => {
            "STARTTLS when offered, certificate not verified; plaintext when not offered"
        }
        TlsPolicy::Required => {
            "STARTTLS must be offered and the certificate must verify; otherwise the attempt \
             fails temporarily (never plaintext)"
        }
    }
}

fn tls_source(cfg: &Config, domain: &str) -> String {
    if cfg.routes.contains_key(domain) {
        format!("[routes] \"{domain}\" tls")
    } else if cfg.routes.contains_key("*") {
        "[routes] \"*\" tls".to_string()
    } else {
        "outbound.tls".to_string()
    }
}
