//! Finding and reading the configuration: --config, $TERN_CONFIG, /etc/tern/tern.toml, embedded defaults.

use std::ffi::OsString;
use std::path::Path;

use crate::build::build;
use crate::error::{parse_issue, ConfigError};
use crate::raw::RawConfig;
use crate::types::Config;

/// Environment variable naming the config file when no --config is given.
pub const ENV_VAR: &str = "TERN_CONFIG";
/// The file used when neither --config nor $TERN_CONFIG is given, if it exists.
pub const SYSTEM_PATH: &str = "/etc/tern/tern.toml";

impl Config {
    /// The embedded defaults, as if an empty file had been loaded (but with `source: None`).
    pub fn defaults() -> Config {
        crate::defaults::config()
    }

    /// Parses and validates TOML `text`; `origin` names it in errors and becomes `source`.
    /// Syntax and schema errors stop at the first; validation errors are all collected.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(parse_issue(&e, text, origin)))?;
        build(raw, text, origin).map_err(ConfigError::Invalid)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        load_via(path, "given path")
    }

    /// --config FILE if given; else $TERN_CONFIG (when set and non-empty); else /etc/tern/tern.toml if it
    /// exists; else the embedded defaults. A file that was named but cannot be read is an error, never
    /// a silent fallback to defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        discover_in(explicit, std::env::var_os(ENV_VAR), Path::new(SYSTEM_PATH))
    }
}

fn load_via(path: &Path, via: &'static str) -> Result<Config, ConfigError> {
    let text = crate::files::read_bounded_string(path, crate::files::MAX_CONFIG_FILE).map_err(
        |source| ConfigError::Read {
            path: path.to_path_buf(),
            via,
            source,
        },
    )?;
    Config::from_toml_str(&text, path)
}

/// `discover` with its inputs made explicit, so tests need not touch the process environment.
pub(crate) fn discover_in(
    explicit: Option<&Path>,
    env: Option<OsString>,
    system: &Path,
) -> Result<Config, ConfigError> {
    if let Some(path) = explicit {
        return load_via(path, "--config");
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return load_via(Path::new(&path), "$TERN_CONFIG");
    }
    match system.try_exists() {
        Ok(true) => load_via(system, "default location"),
        Ok(false) => Ok(Config::defaults()),
        Err(source) => Err(ConfigError::Read {
            path: system.to_path_buf(),
            via: "default location",
            source,
        }),
    }
}
