//! Checks of single values that every section's builder shares: where a value is in the file,
//! domain names, durations, and the fix for a file that cannot be read. Kept apart from
//! `build` so the section modules (`srs`, `milters`, `admin`) use them without depending on
//! the builder that calls them.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::error::Issues;
use crate::values::{is_domain, normalize_domain, parse_duration};

type Text = Option<Spanned<String>>;

/// Where `value` is in the file, for the issue that names it.
pub(crate) fn at<T>(value: &Spanned<T>) -> Option<Range<usize>> {
    Some(value.span())
}

/// A domain name, normalized (lower-case, no trailing dot); `None` (and an issue) when invalid.
pub(crate) fn domain_name(v: &mut Issues, value: &Spanned<String>, key: &str) -> Option<String> {
    let name = normalize_domain(value.get_ref().trim());
    if is_domain(&name) {
        return Some(name);
    }
    v.add(
        at(value),
        key,
        format!("\"{}\" is not a valid domain name", value.get_ref()),
        "use a name such as \"mx.example.test\": letters, digits and hyphens in dot-separated labels",
    );
    None
}

pub(crate) fn file_fix(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            "correct the path or create the file (relative paths are relative to the current directory)"
        }
        std::io::ErrorKind::PermissionDenied => "make the file readable by the user tern runs as",
        _ => "check that the path names a readable file",
    }
}

/// A duration in `0..=max` (`1ns..=max` unless `zero_allowed`); `default` when absent or
/// invalid (with an issue). `max` comes from [`crate::caps`].
pub(crate) fn duration(
    v: &mut Issues,
    value: &Text,
    key: &str,
    default: Duration,
    zero_allowed: bool,
    max: Duration,
) -> Duration {
    let Some(value) = value else { return default };
    let text = value.get_ref();
    match parse_duration(text) {
        Err(_) => {
            v.add(
                at(value),
                key,
                format!("invalid duration \"{text}\" (expected e.g. \"5m\", \"30s\", \"1h\")"),
                "use a humantime duration",
            );
            default
        }
        Ok(d) if d.is_zero() && !zero_allowed => {
            v.add(
                at(value),
                key,
                format!("duration \"{text}\" is zero"),
                format!(
                    "use a duration longer than zero, e.g. \"{}\" (the default)",
                    humantime::format_duration(default)
                ),
            );
            default
        }
        Ok(d) if d > max => {
            v.add(
                at(value),
                key,
                format!(
                    "duration \"{text}\" is longer than the maximum of {} for this key",
                    humantime::format_duration(max)
                ),
                format!(
                    "use at most \"{}\" (the caps are listed in docs/configuration.md)",
                    humantime::format_duration(max)
                ),
            );
            default
        }
        Ok(d) => d,
    }
}
