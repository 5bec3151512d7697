//! The transcript hook behind `-v`: one call per protocol line, `C:` for what we send and `S:`
//! for what the server sends. Credentials never reach it (AUTH payloads are redacted by the caller).

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Client,
    Server,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Client => "C:",
            Direction::Server => "S:",
        })
    }
}

/// Receives each line without its CRLF. Shared (Arc) so a reconnect can keep logging to it.
pub type TranscriptHook = Arc<dyn Fn(Direction, &str) + Send + Sync>;
