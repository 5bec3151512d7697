//! `tern serve`: load the config (or the embedded defaults), open storage, bind the listeners
//! and serve until SIGTERM/SIGINT; SIGHUP (or `POST /api/reload`) reloads the whole config
//! ([`reload`]).

mod reload;

pub use reload::snapshot_path;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tern_auth::verify::ResolverSettings;
use tern_auth::{ArcSealer, Signer, Verifier, VerifierError};
use tern_config::{Config, LiveConfig, LogFormat};
use tern_delivery::{Intake, LocalDelivery};
use tern_dns::FALLBACK_NAMESERVER;
use tern_queue::{FsStore, QueueStore};
use tern_server::disk::DiskMonitor;
use tern_server::{bind_all, Server, TlsProvider};

use crate::logging;
use reload::Reloader;

/// What the session side is built from, per config: made at start and again by each reload.
pub(crate) struct Parts {
    pub store: Arc<Intake>,
    pub tls: Option<Arc<TlsProvider>>,
    pub verifier: Option<Arc<Verifier>>,
}

pub fn run(config: Option<&Path>, log_format: Option<LogFormat>) -> ExitCode {
    let mut cfg = match Config::discover(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tern serve: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    if let Some(f) = log_format {
        cfg.log.format = f;
    }
    let cfg = Arc::new(cfg);
    // Every [[dkim]] key loads now or tern does not start: a key that fails later would mean
    // mail leaving unsigned, which receivers reject under DMARC without telling anyone.
    if let Err(e) = Signer::from_config(&cfg.dkim) {
        eprintln!("tern serve: {e}");
        return ExitCode::from(78); // EX_CONFIG
    }
    if let Err(e) = ArcSealer::from_config(&cfg) {
        eprintln!("tern serve: {e}");
        return ExitCode::from(78); // EX_CONFIG
    }
    logging::init(&cfg.log);
    // The recorder goes in before anything records, and only when someone can read it.
    let metrics = match &cfg.admin {
        Some(_) => match tern_admin::Metrics::install() {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("tern serve: {e}");
                return ExitCode::from(70); // EX_SOFTWARE
            }
        },
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern serve: cannot start the runtime: {e}");
            return ExitCode::from(71); // EX_OSERR
        }
    };
    match runtime.block_on(serve(cfg, metrics, log_format)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("tern serve: {e:#}");
            ExitCode::from(75) // EX_TEMPFAIL: e.g. port in use, data dir not writable
        }
    }
}

/// The session side of one config: intake with its signer, ARC sealer and verifier, and the
/// TLS certificate. Every failure names what to fix.
pub(crate) fn build_parts(cfg: &Arc<Config>, queue: &Arc<dyn QueueStore>) -> anyhow::Result<Parts> {
    let signer = Arc::new(Signer::from_config(&cfg.dkim)?);
    let sealer = ArcSealer::from_config(cfg)?.map(Arc::new);
    let local = LocalDelivery::open_staged(cfg).context("cannot open the Maildir staging area")?;
    let verifier = inbound_verifier(cfg)?;
    let mut intake = Intake::new(queue.clone(), local)
        .with_notices(cfg.clone())
        .with_signer(signer)
        .with_srs(cfg.clone());
    if let Some(v) = &verifier {
        intake = intake.with_verifier(v.clone(), cfg.limits.max_message_size);
        if let Some(s) = &sealer {
            info!(domain = %s.domain(), selector = %s.selector(), "ARC-sealing forwarded mail");
        }
        intake = intake.with_arc_sealer(sealer);
    }
    let tls = match &cfg.tls {
        Some(t) => Some(Arc::new(
            TlsProvider::load(&t.cert, &t.key).context("cannot load [tls] cert/key")?,
        )),
        None => None,
    };
    Ok(Parts {
        store: Arc::new(intake),
        tls,
        verifier,
    })
}

async fn serve(
    cfg: Arc<Config>,
    metrics: Option<tern_admin::Metrics>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {} (set data_dir in the config to a writable directory)",
            cfg.data_dir.display()
        )
    })?;
    let queue = {
        let cfg = cfg.clone();
        // Blocking (the database store waits on its own runtime, which may not be entered
        // from this one's threads).
        tokio::task::spawn_blocking(move || open_queue(&cfg))
            .await
            .context("the task opening the queue failed")??
    };
    let parts = build_parts(&cfg, &queue)?;
    if cfg.srs.is_none() && tern_delivery::router::forwards_off_host(&cfg) {
        warn!("aliases forward to remote addresses but [srs] has no secret_file: forwarded mail keeps its original sender, which fails SPF at the next hop (see docs/configuration.md, [srs])");
    }
    let listeners = bind_all(&cfg).await?;
    let admin_listener = match &cfg.admin {
        Some(a) => Some(tern_admin::bind(a.listen).await?),
        None => None,
    };
    let origin = cfg.source.as_ref().map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    );
    for l in &listeners {
        let addr = l.local_addr()?;
        info!(addr = %addr, kind = l.kind.name(), "listening");
    }
    if let Some(l) = &admin_listener {
        info!(addr = %l.local_addr()?, kind = "admin", "listening");
    }
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| {
            l.local_addr()
                .ok()
                .map(|a| format!("{a} ({})", l.kind.name()))
        })
        .collect();
    info!(
        config = %origin,
        hostname = %cfg.hostname,
        data_dir = %cfg.data_dir.display(),
        local_domains = %cfg.local.domains.join(","),
        listen = %addrs.join(" "),
        "tern started"
    );

    let shutdown = CancellationToken::new();
    let live = LiveConfig::new(cfg.clone());
    // TLS-RPT (RFC 8460, `[tls_rpt]`): before the relay, so the saved counters are loaded
    // before the first delivery adds to them.
    let tls_rpt = tern_relay::tls_rpt::spawn(cfg.clone(), queue.clone());
    let workers = Arc::new(tern_relay::spawn(
        cfg.clone(),
        queue.clone(),
        shutdown.clone(),
    ));
    // After the spool and the staging area exist: the monitor measures their filesystems.
    let disk = DiskMonitor::new(&cfg);
    let low_space = disk.flag();
    let monitor = disk.spawn(shutdown.clone());
    let mut server = Server::new(cfg.clone(), parts.store, parts.tls, shutdown.clone())
        .with_low_space(low_space);
    if let Some(v) = parts.verifier {
        server = server.with_verifier(v);
    }
    if let Some(cluster) = queue.cluster() {
        // A shared queue: the per-client message rate counts every node's messages.
        server = server.with_cluster(cluster);
    }
    let server = Arc::new(server);
    let reloader = Arc::new(Reloader::new(
        live.clone(),
        queue.clone(),
        server.clone(),
        workers.clone(),
        log_format,
    ));
    reloader.write_snapshot();
    spawn_signal_handlers(shutdown.clone(), reloader.clone())?;
    let admin = admin_listener.map(|l| {
        let hook: tern_admin::ReloadHook = {
            let r = reloader.clone();
            Arc::new(move || r.reload("POST /api/reload"))
        };
        let state = tern_admin::AdminState::new(live.clone(), queue.clone(), metrics, Some(hook));
        tokio::spawn(tern_admin::serve(l, state, shutdown.clone()))
    });
    server.run(listeners).await;
    let _ = monitor.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    workers.stop().await;
    // After the relay: the last sessions are counted, then the counters are written.
    tls_rpt.stop().await;
    info!("tern stopped");
    Ok(())
}

/// The one verifier of inbound port-25 mail, shared by the sessions (SPF at MAIL FROM) and
/// intake (the end-of-DATA checks), so its DNS caches serve them all: `[dns] nameservers` (else
/// the system resolver), `hostname` as the authserv-id. `None` when every `[checks]` switch is
/// off: nothing is checked and no Authentication-Results is added.
fn inbound_verifier(cfg: &Config) -> anyhow::Result<Option<Arc<Verifier>>> {
    let c = cfg.checks;
    if !(c.spf || c.dkim || c.dmarc || c.arc) {
        return Ok(None);
    }
    let settings = ResolverSettings::new(cfg.dns.nameservers.clone());
    let verifier = match Verifier::new(&settings, c, &cfg.hostname) {
        Ok(v) => v,
        // As the relay does (tern_dns::setup_resolver): without /etc/resolv.conf, ask a local
        // caching resolver. If there is none, every lookup fails and the results are
        // `temperror` (451 only where the policy would refuse, never a 5xx).
        Err(e @ VerifierError::SystemConf(_)) => {
            error!(error = %e, fallback = %FALLBACK_NAMESERVER,
                "inbound verification: no system resolver configuration, asking the fallback nameserver");
            let fallback = ResolverSettings::new(vec![FALLBACK_NAMESERVER]);
            Verifier::new(&fallback, c, &cfg.hostname)
                .context("cannot set up inbound verification ([checks], [dns])")?
        }
        Err(e) => {
            return Err(e).context("cannot set up inbound verification ([checks], [dns])");
        }
    };
    Ok(Some(Arc::new(verifier)))
}

/// Opens the queue `[queue] backend` names and cleans up after a crash. The filesystem spool:
/// temp files, orphans, bodies still arriving in `queue/incoming/` (only safe before the
/// listeners start, when nothing else writes it), then listens for `tern queue` changes.
/// PostgreSQL: the schema is migrated, this node's leases from before a restart are released,
/// and the store listens for other nodes' changes.
fn open_queue(cfg: &Config) -> anyhow::Result<Arc<dyn QueueStore>> {
    if let Some(pg) = tern_ops::store::postgres(cfg) {
        let queue = tern_ops::store::open_postgres(cfg, pg, tern_ops::store::Opener::Server)
            .context("cannot open the queue in PostgreSQL (queue.postgres_url_file)")?;
        let report = queue
            .recover()
            .context("cannot recover the queue in PostgreSQL")?;
        info!(
            backend = "postgres",
            node_id = %queue.node_id(),
            entries = report.entries,
            unfinished_bodies_removed = report.temp_files_removed,
            "queue recovered"
        );
        queue.listen();
        return Ok(Arc::new(queue));
    }
    let queue = FsStore::open(&cfg.data_dir).context("cannot open the spool")?;
    let report = queue.recover().context("cannot open the spool")?;
    // Bodies of messages that were arriving when the last run stopped: none was acknowledged.
    let incoming = queue.clear_incoming().context("cannot open the spool")?;
    info!(
        entries = report.entries,
        temp_files_removed = report.temp_files_removed,
        unfinished_bodies_removed = incoming,
        orphans_removed = report.orphan_messages_removed,
        quarantined = report.quarantined.len(),
        "spool recovered"
    );
    queue
        .listen_for_other_processes()
        .context("cannot open the spool")?;
    Ok(Arc::new(queue))
}

fn spawn_signal_handlers(
    shutdown: CancellationToken,
    reloader: Arc<Reloader>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => {
                    let r = reloader.clone();
                    // Reading files and keys blocks: off the runtime's threads.
                    let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                }
            }
        }
        shutdown.cancel();
    });
    Ok(())
}
