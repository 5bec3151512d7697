//! The DATA decoder for one message, set up from the config: `limits.max_message_size` bounds
//! what it stores, `smtp.bare_line_endings` says what a bare CR or LF does (RFC 5321 2.3.8).

use tern_config::{BareLineEndings, Config};
use tern_proto::DataDecoder;

/// A decoder for the next message of a session under `cfg`.
pub fn decoder(cfg: &Config) -> DataDecoder {
    let max = usize::try_from(cfg.limits.max_message_size).unwrap_or(usize::MAX);
    DataDecoder::new(max, line_endings(cfg.smtp.bare_line_endings))
}

/// The config's policy as the decoder's mode (the config crate does not depend on proto).
pub fn line_endings(policy: BareLineEndings) -> tern_proto::BareLineEndings {
    match policy {
        BareLineEndings::Normalize => tern_proto::BareLineEndings::Normalize,
        BareLineEndings::Reject => tern_proto::BareLineEndings::Reject,
    }
}
