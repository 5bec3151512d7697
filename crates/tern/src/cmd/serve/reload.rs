//! Reloading the whole config while the server runs (SIGHUP, `POST /api/reload`).
//!
//! The file the server started with is read again and validated exactly as at start-up (every
//! key, the DKIM keys, the ARC key, the TLS certificate, the verifier); on any problem the
//! running config stays and every problem is logged (and returned to the API). Otherwise the
//! new config is swapped in at once for new SMTP sessions (a session keeps the config it
//! started with), new delivery rounds and the admin API; listeners are added and removed as
//! the `listen` keys say. A few settings sized at start-up need a restart; the log says which
//! ([`tern_config::diff`]). The running config's text is kept in `<data_dir>/run/config.toml`
//! so that `tern check-config --diff` can show what a reload would change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};

use tern_config::{Config, LiveConfig, LogFormat};
use tern_delivery::Intake;
use tern_queue::QueueStore;
use tern_relay::Workers;
use tern_server::{Generation, Server};

use super::build_parts;

/// Where the running config's text is kept, under `data_dir`.
pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("config.toml")
}

pub struct Reloader {
    live: LiveConfig,
    queue: Arc<dyn QueueStore>,
    server: Arc<Server<Intake>>,
    workers: Arc<Workers>,
    /// `--log-format` given on the command line wins over the file, at reload too.
    log_format: Option<LogFormat>,
    /// The text of the config in force ("" for the built-in defaults); one reload at a time.
    running: Mutex<String>,
}

impl Reloader {
    pub fn new(
        live: LiveConfig,
        queue: Arc<dyn QueueStore>,
        server: Arc<Server<Intake>>,
        workers: Arc<Workers>,
        log_format: Option<LogFormat>,
    ) -> Self {
        let text = live
            .current()
            .source
            .as_ref()
            .and_then(|p| {
                tern_config::files::read_bounded_string(p, tern_config::files::MAX_CONFIG_FILE).ok()
            })
            .unwrap_or_default();
        Self {
            live,
            queue,
            server,
            workers,
            log_format,
            running: Mutex::new(text),
        }
    }

    /// Writes the running config's text where `tern check-config --diff` reads it. Best
    /// effort: a read-only data_dir only loses the diff.
    pub fn write_snapshot(&self) {
        let cfg = self.live.current();
        let text = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let path = snapshot_path(&cfg.data_dir);
        let write = || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(&cfg.data_dir);
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(".config.toml.tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                // The config holds password hashes: readable by tern's user only.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                writeln!(
                    f,
                    "# The config tern serve is running (from {}); written by tern, read by `tern check-config --diff`.",
                    cfg.source.as_ref().map_or_else(|| "the built-in defaults".to_string(), |p| p.display().to_string())
                )?;
                f.write_all(text.as_bytes())?;
            }
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            warn!(path = %path.display(), error = %e, "cannot write the running config snapshot (tern check-config --diff will not see it)");
        }
    }

    /// Re-reads, validates and applies the config: the changes applied, or every problem.
    pub fn reload(&self, trigger: &str) -> Result<Vec<String>, Vec<String>> {
        let result = self.try_reload();
        match &result {
            Ok(changes) => {
                metrics::counter!(tern_metrics::CONFIG_RELOADS, "outcome" => "ok").increment(1);
                info!(trigger, changes = changes.len(), "config reloaded");
                for c in changes {
                    info!(trigger, change = %c, "config change");
                }
            }
            Err(problems) => {
                metrics::counter!(tern_metrics::CONFIG_RELOADS, "outcome" => "failed").increment(1);
                error!(
                    trigger,
                    problems = problems.len(),
                    "config reload failed, keeping the running config"
                );
                for p in problems {
                    error!(trigger, problem = %p, "config problem");
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Vec<String>, Vec<String>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.current();
        let Some(path) = old.source.clone() else {
            return Err(vec![
                "tern is running on the built-in defaults (no config file), so there is nothing to re-read; start it with `tern serve -c FILE`".into(),
            ]);
        };
        let text =
            tern_config::files::read_bounded_string(&path, tern_config::files::MAX_CONFIG_FILE)
                .map_err(|e| {
                    vec![format!(
                        "{}: cannot read the config file: {e}",
                        path.display()
                    )]
                })?;
        let mut cfg = Config::from_toml_str(&text, &path).map_err(|e| match e.issues() {
            [] => vec![e.to_string()],
            issues => issues.iter().map(ToString::to_string).collect(),
        })?;
        if let Some(f) = self.log_format {
            cfg.log.format = f;
        }
        let cfg = Arc::new(cfg);
        let parts = build_parts(&cfg, &self.queue).map_err(|e| vec![format!("{e:#}")])?;
        let changes = tern_config::diff::diff(&running, &text).unwrap_or_default();
        self.server
            .reload(Generation {
                cfg: cfg.clone(),
                store: parts.store,
                tls: parts.tls,
                verifier: parts.verifier,
            })
            .map_err(|e| vec![e.to_string()])?;
        self.live.replace(cfg.clone());
        self.workers.reconfigure(cfg);
        *running = text;
        drop(running);
        self.write_snapshot();
        Ok(changes.iter().map(ToString::to_string).collect())
    }
}
