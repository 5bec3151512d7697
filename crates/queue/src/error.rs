//! Why storing failed, classified where the failure happens (RFC 3463 class and subject):
//! the session turns it into `452 4.3.1` (full), `451 4.3.0` (temporary) or `554 5.3.0`.

use std::io;

/// Why a message could not be stored, classified where the failure happened so that the
/// session can choose the reply (RFC 3463): a full disk is `452 4.3.1`, any other temporary
/// trouble `451 4.3.0`, and a message that can never be stored `554 5.3.0`. The text is for
/// the log, never for the client (it names paths).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A transient failure (I/O error, a task that died): the client should retry.
    #[error("{0}")]
    Temporary(String),
    /// No space (ENOSPC, EDQUOT): the client should retry later, ideally elsewhere.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// Retrying the same message cannot succeed (e.g. it is invalid for the storage).
    #[error("{0}")]
    Permanent(String),
}

impl StoreError {
    /// A temporary failure with this text (kept for callers that have no `io::Error`).
    pub fn new(message: impl Into<String>) -> Self {
        StoreError::Temporary(message.into())
    }

    /// Classifies an I/O error by its kind: `StorageFull` (ENOSPC, EDQUOT, EFBIG) and
    /// `QuotaExceeded` become [`StoreError::StorageFull`], everything else is temporary.
    pub fn from_io(context: &str, e: &io::Error) -> Self {
        let text = if context.is_empty() {
            e.to_string()
        } else {
            format!("{context}: {e}")
        };
        match e.kind() {
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => StoreError::StorageFull(text),
            _ => StoreError::Temporary(text),
        }
    }

    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::StorageFull(_))
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::from_io("", &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_are_classified() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(StoreError::from_io("writing", &full).is_storage_full());
        let quota = io::Error::from(io::ErrorKind::QuotaExceeded);
        assert!(StoreError::from(quota).is_storage_full());
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(matches!(
            StoreError::from_io("x", &other),
            StoreError::Temporary(t) if t.starts_with("x: ")
        ));
    }
}
