//! `tern doctor [DOMAIN]`: checks this server's own setup against the live DNS and against
//! itself, the things that decide whether other servers accept and trust its mail: MX, A/AAAA,
//! PTR (forward-confirmed reverse DNS), SPF, DKIM, DMARC, the TLS certificate, the listeners,
//! and that it is not an open relay. One line per check, or `--json` for cron and monitoring.
//!
//! Exit codes: 0 every check ok (skips count as ok); 1 warnings only; 2 a check failed;
//! 78 (EX_CONFIG) the config does not load.
//!
//! The checks are split by what they talk to: [`dns`] (the records), [`cert`] (the `[tls]`
//! files), [`smtp`] (tern's own listeners). This module finds the inputs and prints the report.

mod cert;
mod dns;
mod smtp;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};
use tern_config::Config;
use tern_dns::{setup_resolver, HickoryResolver, Resolver};

/// Every DNS query gets this long (per query, one attempt) ...
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// ... and every lookup, retries and CNAME chains included, at most this long: a check that
/// cannot get an answer says so (warn) instead of hanging a cron job.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(8);

/// sysexits.h EX_CONFIG.
const EXIT_CONFIG: u8 = 78;

#[derive(Args)]
pub struct DoctorArgs {
    /// The mail domain to check (default: the first of [local] domains, else the parent of
    /// the hostname).
    domain: Option<String>,
    /// Config file (default: $TERN_CONFIG, else /etc/tern/tern.toml if present).
    #[arg(long, short = 'c', env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// A public address of this host (repeatable; default: the addresses the hostname resolves to).
    #[arg(long = "ip", value_name = "ADDR")]
    ips: Vec<IpAddr>,
}

/// A check's verdict. Skips count as ok for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result: a stable id, a status, one plain-English line, how to fix it, and
/// whatever was looked at (for `--json`).
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    pub fix: Option<String>,
    pub details: Value,
}

impl Check {
    pub fn new(id: &'static str, status: Status, message: impl Into<String>) -> Check {
        Check {
            id,
            status,
            message: message.into(),
            fix: None,
            details: Value::Null,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    pub fn details(mut self, details: Value) -> Check {
        self.details = details;
        self
    }
}

/// What every check needs: the config, the names and addresses to check, and the resolver.
pub(crate) struct Context {
    pub cfg: Config,
    pub domain: String,
    pub hostname: String,
    /// This host's public addresses, and where they came from (for the report).
    pub ips: Vec<IpAddr>,
    pub resolver: Arc<dyn Resolver>,
}

pub fn run(args: DoctorArgs) -> ExitCode {
    let cfg = match Config::discover(args.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tern doctor: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern doctor: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let (report, code) = runtime.block_on(doctor(cfg, args.domain, args.ips));
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    ExitCode::from(code)
}

struct Report {
    domain: String,
    hostname: String,
    notes: Vec<String>,
    checks: Vec<Check>,
}

impl Report {
    fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    fn exit_code(&self) -> u8 {
        match self.worst() {
            Status::Ok | Status::Skip => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }

    fn to_json(&self) -> Value {
        let mut summary = serde_json::Map::new();
        for s in [Status::Ok, Status::Warn, Status::Fail, Status::Skip] {
            let n = self.checks.iter().filter(|c| c.status == s).count();
            summary.insert(s.as_str().into(), json!(n));
        }
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "status": c.status.as_str(),
                    "message": c.message,
                    "fix": c.fix,
                    "details": c.details,
                })
            })
            .collect();
        json!({
            "domain": self.domain,
            "hostname": self.hostname,
            "notes": self.notes,
            "checks": checks,
            "summary": summary,
            "exit_code": self.exit_code(),
        })
    }

    fn to_table(&self) -> String {
        let mut out = format!(
            "tern doctor: domain {}, hostname {}\n",
            self.domain, self.hostname
        );
        for note in &self.notes {
            out.push_str(&format!("  ({note})\n"));
        }
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}\n",
                c.status.as_str().to_ascii_uppercase(),
                c.id,
                c.message
            ));
            if matches!(c.status, Status::Warn | Status::Fail) {
                if let Some(fix) = &c.fix {
                    for line in fix.lines() {
                        out.push_str(&format!("      {:<width$}  fix: {line}\n", ""));
                    }
                }
            }
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{} ok, {} warn, {} fail, {} skip\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        ));
        out
    }
}

async fn doctor(cfg: Config, domain: Option<String>, given_ips: Vec<IpAddr>) -> (Report, u8) {
    let hostname = cfg.hostname.trim_end_matches('.').to_ascii_lowercase();
    let domain = pick_domain(&cfg, &hostname, domain);
    let mut notes = Vec::new();
    let resolver = match HickoryResolver::dns_only(&cfg.dns.nameservers, QUERY_TIMEOUT) {
        Ok(r) => Arc::new(r) as Arc<dyn Resolver>,
        Err(e) => {
            // What the relay would use then ([dns] nameservers, else the fallback nameserver).
            let setup = setup_resolver(&cfg.dns.nameservers, QUERY_TIMEOUT);
            notes.push(format!(
                "the DNS-only resolver could not be built ({e}); using the relay's, which may answer from /etc/hosts"
            ));
            if let Some(e) = &setup.fallback {
                notes.push(format!(
                    "the configured resolver could not be built either ({e}); asking {} instead",
                    tern_dns::FALLBACK_NAMESERVER
                ));
            }
            setup.resolver
        }
    };
    let ips = if given_ips.is_empty() {
        let found = dns::bounded(resolver.ips(&hostname), &hostname).await;
        match found {
            Ok(ips) if !ips.is_empty() => {
                notes.push(format!(
                    "this host's addresses are taken from the DNS for {hostname}: {}; give --ip ADDR to check others",
                    join(&ips)
                ));
                ips
            }
            Ok(_) | Err(_) => {
                notes.push(format!(
                    "{hostname} resolves to no address, so this host's addresses are unknown: give --ip ADDR"
                ));
                Vec::new()
            }
        }
    } else {
        given_ips
    };
    let ctx = Context {
        cfg,
        domain,
        hostname,
        ips,
        resolver,
    };
    let (mx, a, ptr, spf, dkim, dmarc, ports, relay) = tokio::join!(
        dns::mx(&ctx),
        dns::a(&ctx),
        dns::ptr(&ctx),
        dns::spf(&ctx),
        dns::dkim(&ctx),
        dns::dmarc(&ctx),
        smtp::ports(&ctx),
        smtp::open_relay(&ctx),
    );
    let tls = cert::tls(&ctx);
    let report = Report {
        domain: ctx.domain,
        hostname: ctx.hostname,
        notes,
        checks: vec![mx, a, ptr, spf, dkim, dmarc, tls, ports, relay],
    };
    let code = report.exit_code();
    (report, code)
}

/// DOMAIN, else the first real local domain, else the hostname's parent (mx.example.com ->
/// example.com), else the hostname itself.
fn pick_domain(cfg: &Config, hostname: &str, given: Option<String>) -> String {
    if let Some(d) = given {
        return d.trim().trim_end_matches('.').to_ascii_lowercase();
    }
    if let Some(d) = cfg
        .local
        .domains
        .iter()
        .find(|d| !d.eq_ignore_ascii_case("localhost"))
    {
        return d.trim_end_matches('.').to_ascii_lowercase();
    }
    match hostname.split_once('.') {
        Some((_, parent)) if parent.contains('.') => parent.to_string(),
        _ => hostname.to_string(),
    }
}

pub(crate) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        Report {
            domain: "example.test".into(),
            hostname: "mx.example.test".into(),
            notes: Vec::new(),
            checks: statuses
                .iter()
                .map(|s| Check::new("x", *s, "m").fix("do this"))
                .collect(),
        }
    }

    #[test]
    fn exit_codes_follow_the_worst_status() {
        assert_eq!(report(&[Status::Ok, Status::Skip]).exit_code(), 0);
        assert_eq!(
            report(&[Status::Ok, Status::Warn, Status::Skip]).exit_code(),
            1
        );
        assert_eq!(report(&[Status::Warn, Status::Fail]).exit_code(), 2);
    }

    #[test]
    fn the_table_shows_fixes_only_under_problems() {
        let t = report(&[Status::Ok, Status::Fail]).to_table();
        assert_eq!(t.matches("fix: do this").count(), 1, "{t}");
        assert!(t.contains("FAIL  x  m"), "{t}");
    }

    #[test]
    fn the_domain_defaults_to_a_local_domain_then_the_parent() {
        let mut cfg = Config::defaults();
        cfg.local.domains = vec!["localhost".into(), "Example.Test".into()];
        assert_eq!(pick_domain(&cfg, "mx.other.test", None), "example.test");
        cfg.local.domains = vec!["localhost".into()];
        assert_eq!(pick_domain(&cfg, "mx.other.test", None), "other.test");
        assert_eq!(pick_domain(&cfg, "other.test", None), "other.test");
        assert_eq!(
            pick_domain(&cfg, "mx.other.test", Some("given.test.".into())),
            "given.test"
        );
    }
}
