//! Queue ids: UUID v7 in simple form (32 lower-case hex digits). Time-ordered, so a directory
//! listing sorts oldest first; unique across processes and nodes; safe as a file name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A queue entry's id. Only ever holds exactly 32 characters of `[0-9a-f]`, so it can be used
/// as a file name without any escaping (no `/`, no `.`, no NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

/// A string that is not a queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {0:?}: expected 32 lower-case hex digits")]
pub struct InvalidQueueId(pub String);

impl QueueId {
    /// A fresh id. Ids made by one process sort in creation order (uuid's v7 counter keeps
    /// order within the same millisecond).
    pub fn generate() -> Self {
        QueueId(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(s: &str) -> bool {
        s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for QueueId {
    type Err = InvalidQueueId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if Self::is_valid(s) {
            Ok(QueueId(s.to_owned()))
        } else {
            Err(InvalidQueueId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for QueueId {
    type Error = InvalidQueueId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if Self::is_valid(&s) {
            Ok(QueueId(s))
        } else {
            Err(InvalidQueueId(s))
        }
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.0
    }
}

impl AsRef<str> for QueueId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_and_round_trip() {
        let id = QueueId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.to_string().parse::<QueueId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<QueueId> = (0..2000).map(|_| QueueId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn ids_made_later_sort_later() {
        let a = QueueId::generate();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = QueueId::generate();
        assert!(a < b);
    }

    #[test]
    fn anything_unsafe_as_a_file_name_is_rejected() {
        let bad = [
            "",
            "..",
            "../../../../etc/passwd",
            "0123456789abcdef0123456789abcde",   // 31
            "0123456789abcdef0123456789abcdef0", // 33
            "0123456789ABCDEF0123456789abcdef",  // upper case
            "0123456789abcdef0123456789abcd/f",
            "0123456789abcdef0123456789abcd.f",
            "0123456789abcdef0123456789abcd\0f",
        ];
        for s in bad {
            assert!(s.parse::<QueueId>().is_err(), "{s:?}");
            assert!(
                serde_json::from_str::<QueueId>(&format!("{s:?}")).is_err(),
                "{s:?}"
            );
        }
        assert!("0123456789abcdef0123456789abcdef"
            .parse::<QueueId>()
            .is_ok());
    }
}
