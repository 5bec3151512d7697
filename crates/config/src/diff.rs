//! What a config change changes, key by key: `tern check-config --diff` and every reload
//! print it. Compared are the two files as written (`limits.max_recipients: 100 -> 2`; a key
//! left out is `(default)`), so the lines name the keys the operator edits. Values of secret
//! keys are never printed, only that they changed.
//!
//! Each change says whether a reload applies it ([`Change::needs_restart`]): a few settings
//! size things built once at start-up (the data directory, the admin listener, the log
//! subscriber, server-wide pools and trackers); docs/operations.md lists them.

use std::collections::BTreeMap;
use std::fmt;

use toml::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The dotted key, with `[n]` for an entry of an array of tables (`users[0].password`).
    pub key: String,
    /// `None`: not set (the default applies).
    pub old: Option<String>,
    pub new: Option<String>,
    pub needs_restart: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(default)".into());
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.old),
            show(&self.new)
        )?;
        if self.needs_restart {
            f.write_str(" (needs a restart)")?;
        }
        Ok(())
    }
}

/// Keys a reload cannot apply: they are read once when the server starts.
const RESTART_KEYS: &[&str] = &[
    "data_dir",
    "queue.backend",
    "queue.postgres_url_file",
    "queue.node_id",
    "queue.lease_time",
    "admin.listen",
    "log.",
    "limits.max_data_memory",
    "limits.max_auth_checks",
    "limits.min_free_space",
    "limits.max_auth_failures",
    "limits.max_auth_failures_per_user",
    "limits.stress_threshold",
    "tls_rpt.",
];

/// Keys whose values are never printed.
fn is_secret(key: &str) -> bool {
    key.ends_with("password") || key.contains("secret") || key.ends_with("token")
}

/// The changes from the config text `old` to `new`; an error names which one does not parse.
pub fn diff(old: &str, new: &str) -> Result<Vec<Change>, String> {
    let parse = |what: &str, text: &str| -> Result<BTreeMap<String, String>, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format!("the {what} config: {}", e.message()))?;
        let mut flat = BTreeMap::new();
        flatten("", &Value::Table(table), &mut flat);
        Ok(flat)
    };
    let (a, b) = (parse("running", old)?, parse("new", new)?);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let (o, n) = (a.get(key), b.get(key));
        if o == n {
            continue;
        }
        let hide = |v: Option<&String>| {
            v.map(|v| {
                if is_secret(key) {
                    "(hidden)".to_string()
                } else {
                    v.clone()
                }
            })
        };
        out.push(Change {
            key: key.clone(),
            old: hide(o),
            new: hide(n),
            needs_restart: RESTART_KEYS.iter().any(|k| match k.strip_suffix('.') {
                Some(section) => key.starts_with(k) || key == section,
                None => key == k,
            }),
        });
    }
    Ok(out)
}

/// Leaves as `key = value` (TOML's own spelling of the value); tables recurse, arrays of
/// tables get an index, other arrays are one value.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_keys() {
        let old = "hostname = \"a.test\"\n[limits]\nmax_recipients = 100\n[[users]]\nname = \"u\"\npassword = \"$argon2id$x\"\n";
        let new = "hostname = \"a.test\"\ndata_dir = \"/srv\"\n[limits]\nmax_recipients = 2\n[[users]]\nname = \"u\"\npassword = \"$argon2id$y\"\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\n";
        let lines: Vec<String> = diff(old, new)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "data_dir: (default) -> \"/srv\" (needs a restart)",
                "limits.max_recipients: 100 -> 2",
                "smtp.listen: (default) -> [\"127.0.0.1:2525\"]",
                "users[0].password: (hidden) -> (hidden)",
            ]
        );
        assert!(diff(old, old).unwrap().is_empty());
        assert!(diff(old, "[limits").unwrap_err().contains("new config"));
    }

    #[test]
    fn restart_keys_match_whole_sections_and_keys_only() {
        let d = diff(
            "",
            "[log]\nlevel = \"debug\"\n[limits]\nmax_data_memory_x = 1\n",
        )
        .unwrap();
        assert!(d[0].key == "limits.max_data_memory_x" && !d[0].needs_restart);
        assert!(d[1].key == "log.level" && d[1].needs_restart);
    }
}
