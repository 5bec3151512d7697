//! `tern serve`: load the config (or the embedded defaults), open storage, bind the listeners
//! and serve until SIGTERM/SIGINT; SIGHUP reloads the TLS certificate.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use tern_auth::verify::ResolverSettings;
use tern_auth::{ArcSealer, Signer, Verifier, VerifierError};
use tern_config::Config;
use tern_delivery::{Intake, LocalDelivery};
use tern_dns::FALLBACK_NAMESERVER;
use tern_queue::{FsStore, QueueStore};
use tern_server::disk::DiskMonitor;
use tern_server::{bind_all, Server, TlsProvider};

use crate::logging;

pub fn run(config: Option<&Path>) -> ExitCode {
    let cfg = match Config::discover(config) {
        Ok(cfg) => Arc::new(cfg),
        Err(e) => {
            eprintln!("tern serve: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    // Every [[dkim]] key loads now or tern does not start: a key that fails later would mean
    // mail leaving unsigned, which receivers reject under DMARC without telling anyone.
    let signer = match Signer::from_config(&cfg.dkim) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("tern serve: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    // The ARC sealer for forwarded mail: one of the keys just loaded (docs/authentication.md).
    let sealer = match ArcSealer::from_config(&cfg) {
        Ok(s) => s.map(Arc::new),
        Err(e) => {
            eprintln!("tern serve: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    logging::init(&cfg.log);
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
    match runtime.block_on(serve(cfg, signer, sealer)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("tern serve: {e:#}");
            ExitCode::from(75) // EX_TEMPFAIL: e.g. port in use, data dir not writable
        }
    }
}

async fn serve(
    cfg: Arc<Config>,
    signer: Arc<Signer>,
    sealer: Option<Arc<ArcSealer>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {} (set data_dir in the config to a writable directory)",
            cfg.data_dir.display()
        )
    })?;
    let queue = open_queue(&cfg).context("cannot open the spool")?;
    let local = LocalDelivery::open_staged(&cfg).context("cannot open the Maildir staging area")?;
    let verifier = inbound_verifier(&cfg)?;
    let mut intake = Intake::new(queue.clone(), local)
        .with_signer(signer)
        .with_srs(cfg.clone());
    if let Some(v) = &verifier {
        intake = intake.with_verifier(v.clone(), cfg.limits.max_message_size);
        if let Some(s) = &sealer {
            info!(domain = %s.domain(), selector = %s.selector(), "ARC-sealing forwarded mail");
        }
        intake = intake.with_arc_sealer(sealer);
    }
    let store = Arc::new(intake);
    if cfg.srs.is_none() && tern_delivery::router::forwards_off_host(&cfg) {
        warn!("aliases forward to remote addresses but [srs] has no secret_file: forwarded mail keeps its original sender, which fails SPF at the next hop (see docs/configuration.md, [srs])");
    }
    let tls = match &cfg.tls {
        Some(t) => Some(Arc::new(
            TlsProvider::load(&t.cert, &t.key).context("cannot load [tls] cert/key")?,
        )),
        None => None,
    };
    let listeners = bind_all(&cfg).await?;
    let origin = cfg.source.as_ref().map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    );
    for l in &listeners {
        let addr = l.local_addr()?;
        info!(addr = %addr, kind = ?l.kind, "listening");
    }
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| {
            l.local_addr()
                .ok()
                .map(|a| format!("{a} ({:?})", l.kind).to_lowercase())
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
    spawn_signal_handlers(shutdown.clone(), cfg.clone(), tls.clone())?;
    let workers = tern_relay::spawn(cfg.clone(), queue, shutdown.clone());
    // After the spool and the staging area exist: the monitor measures their filesystems.
    let disk = DiskMonitor::new(&cfg);
    let low_space = disk.flag();
    let monitor = disk.spawn(shutdown.clone());
    let mut server =
        Server::new(cfg.clone(), store, tls, shutdown.clone()).with_low_space(low_space);
    if let Some(v) = verifier {
        server = server.with_verifier(v);
    }
    server.run(listeners).await;
    let _ = monitor.await;
    workers.stop().await;
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

/// Opens the filesystem spool, cleans up after a crash (temp files, orphans, bodies still
/// arriving in `queue/incoming/`: only safe before
/// the listeners start, when nothing else writes it) and listens for `tern queue` changes.
fn open_queue(cfg: &Config) -> std::io::Result<Arc<dyn QueueStore>> {
    let queue = FsStore::open(&cfg.data_dir)?;
    let report = queue.recover()?;
    // Bodies of messages that were arriving when the last run stopped: none was acknowledged.
    let incoming = queue.clear_incoming()?;
    info!(
        entries = report.entries,
        temp_files_removed = report.temp_files_removed,
        unfinished_bodies_removed = incoming,
        orphans_removed = report.orphan_messages_removed,
        quarantined = report.quarantined.len(),
        "spool recovered"
    );
    queue.listen_for_other_processes()?;
    Ok(Arc::new(queue))
}

fn spawn_signal_handlers(
    shutdown: CancellationToken,
    cfg: Arc<Config>,
    tls: Option<Arc<TlsProvider>>,
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
                    if let (Some(tls), Some(files)) = (&tls, &cfg.tls) {
                        match tls.reload(&files.cert, &files.key) {
                            Ok(()) => info!("SIGHUP: TLS certificate reloaded"),
                            Err(e) => warn!(error = %e, "SIGHUP: TLS reload failed, keeping the previous certificate"),
                        }
                    }
                }
            }
        }
        shutdown.cancel();
    });
    Ok(())
}
