//! Free disk space (issue 10): a monitor measures the filesystems of the spool
//! (`<data_dir>/queue`) and of the mailboxes (`<data_dir>/mailboxes`, which may be another
//! volume) about once a second with statvfs(2), and publishes one flag, [`LowSpace`], that every
//! session reads for free. While it is set a new MAIL is answered `452 4.3.1` (RFC 5321 4.2.2
//! "insufficient system storage", RFC 3463 X.3.1 "mail system full"); transactions already past
//! MAIL, the relay and the bounces carry on, since they are what frees the space again.
//!
//! The check is an early refusal, not the guarantee: a write that still hits ENOSPC is answered
//! `452 4.3.1` by the store and leaves nothing behind (docs/reliability.md).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_config::{Config, MinFreeSpace};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the monitor measures: often enough that a disk filling at load is caught within a
/// second, rarely enough to cost nothing (two statvfs calls).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The inodes that must stay free: 1 % of the filesystem's, at most 10 000. Every Maildir
/// message and queue entry is a file, so running out of inodes is ENOSPC as surely as running
/// out of blocks.
const MIN_FREE_INODES_PERCENT: u64 = 1;
const MIN_FREE_INODES: u64 = 10_000;

/// Whether free space is low, shared by every session: reading it is one relaxed atomic load.
/// The default flag is never set (no monitor: tests, tools).
#[derive(Debug, Clone, Default)]
pub struct LowSpace(Arc<AtomicBool>);

impl LowSpace {
    pub fn is_low(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, low: bool) -> bool {
        self.0.swap(low, Ordering::Relaxed)
    }
}

/// What statvfs(2) said about one filesystem, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged process may still write (`f_bavail`: without the blocks reserved
    /// for root, which tern must not count on).
    pub available: u64,
    pub total: u64,
    /// Inodes an unprivileged process may still use; `total_inodes` 0 = no inode limit (btrfs).
    pub available_inodes: u64,
    pub total_inodes: u64,
}

impl Space {
    pub fn of(path: &Path) -> io::Result<Space> {
        let s = rustix::fs::statvfs(path).map_err(io::Error::from)?;
        // f_frsize is the unit of the block counts (statvfs(3)); some filesystems leave it 0.
        let unit = if s.f_frsize > 0 {
            s.f_frsize
        } else {
            s.f_bsize
        };
        Ok(Space {
            available: s.f_bavail.saturating_mul(unit),
            total: s.f_blocks.saturating_mul(unit),
            available_inodes: s.f_favail,
            total_inodes: s.f_files,
        })
    }

    /// Why this filesystem is too full for new mail under `min`, if it is.
    pub fn shortage(&self, min: MinFreeSpace) -> Option<Shortage> {
        if min == MinFreeSpace::Off {
            return None;
        }
        let threshold = min.threshold(self.total);
        if self.available < threshold {
            return Some(Shortage::Bytes { threshold });
        }
        if self.total_inodes > 0 {
            let threshold =
                (self.total_inodes * MIN_FREE_INODES_PERCENT / 100).min(MIN_FREE_INODES);
            if self.available_inodes < threshold {
                return Some(Shortage::Inodes { threshold });
            }
        }
        None
    }
}

/// What is short on a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    Bytes { threshold: u64 },
    Inodes { threshold: u64 },
}

/// Measures the data directory's filesystems and sets the [`LowSpace`] flag.
pub struct DiskMonitor {
    paths: Vec<PathBuf>,
    min: MinFreeSpace,
    flag: LowSpace,
    /// The paths whose statvfs failed last time, so that a failure is logged once, not every
    /// second.
    failing: Mutex<Vec<PathBuf>>,
}

impl DiskMonitor {
    /// Watches `<data_dir>/queue` and `<data_dir>/mailboxes` (created by the spool and the
    /// Maildir staging area before the server starts). Measures once right away, so the first
    /// session already sees the right flag and a disk that is full at startup is logged.
    pub fn new(cfg: &Config) -> Self {
        let paths = vec![cfg.data_dir.join("queue"), cfg.data_dir.join("mailboxes")];
        Self::watching(paths, cfg.limits.min_free_space)
    }

    /// A monitor of these paths with this threshold (see [`DiskMonitor::new`]).
    pub fn watching(paths: Vec<PathBuf>, min: MinFreeSpace) -> Self {
        let monitor = Self {
            paths,
            min,
            flag: LowSpace::default(),
            failing: Mutex::new(Vec::new()),
        };
        if min != MinFreeSpace::Off {
            monitor.check();
        }
        monitor
    }

    /// The flag the sessions read.
    pub fn flag(&self) -> LowSpace {
        self.flag.clone()
    }

    /// Measures every path now and updates the flag; logs when free space becomes low and when
    /// it is back. A path that cannot be measured does not count as low: refusing all mail
    /// because statvfs failed would be worse than relying on the ENOSPC answer alone.
    pub fn check(&self) -> bool {
        let mut low = None;
        let mut failing = Vec::new();
        for path in &self.paths {
            match Space::of(path) {
                Ok(space) => {
                    if let Some(short) = space.shortage(self.min) {
                        low.get_or_insert((path, space, short));
                    }
                }
                Err(e) => {
                    if !self.was_failing(path) {
                        warn!(path = %path.display(), error = %e, "cannot measure free disk space");
                    }
                    failing.push(path.clone());
                }
            }
        }
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = failing;
        let was_low = self.flag.set(low.is_some());
        match (was_low, low) {
            (false, Some((path, space, short))) => {
                let (what, available, threshold) = match short {
                    Shortage::Bytes { threshold } => ("bytes", space.available, threshold),
                    Shortage::Inodes { threshold } => ("inodes", space.available_inodes, threshold),
                };
                warn!(
                    path = %path.display(),
                    short = what,
                    available,
                    threshold,
                    min_free_space = %self.min,
                    "disk space low: new mail is refused with 452 4.3.1 until space is freed"
                );
                true
            }
            (true, None) => {
                info!(min_free_space = %self.min, "disk space recovered: accepting mail again");
                false
            }
            (_, low) => low.is_some(),
        }
    }

    fn was_failing(&self, path: &Path) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|p| p == path)
    }

    /// Measures every [`CHECK_INTERVAL`] until `shutdown`, off the async threads (statvfs on a
    /// network filesystem can block). Does nothing when the check is off.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = Arc::new(self);
        tokio::spawn(async move {
            if this.min == MinFreeSpace::Off {
                return;
            }
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let monitor = this.clone();
                // A failed task (a panic in statvfs's wrapper) leaves the flag as it was.
                let _ = tokio::task::spawn_blocking(move || monitor.check()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn space(available: u64, total: u64) -> Space {
        Space {
            available,
            total,
            available_inodes: 1_000_000,
            total_inodes: 1_000_000,
        }
    }

    #[test]
    fn the_default_is_the_smaller_of_one_gib_and_five_percent() {
        let min = tern_config::defaults::MIN_FREE_SPACE;
        // 10 GiB disk: 5 % = 512 MiB.
        assert_eq!(space(GIB / 2 + 1, 10 * GIB).shortage(min), None);
        assert_eq!(
            space(GIB / 2 - 1, 10 * GIB).shortage(min),
            Some(Shortage::Bytes { threshold: GIB / 2 })
        );
        // 2 TB disk: 1 GiB, not 100 GB.
        assert_eq!(space(2 * GIB, 2000 * GIB).shortage(min), None);
        assert!(space(GIB - 1, 2000 * GIB).shortage(min).is_some());
    }

    #[test]
    fn inodes_count_too_and_off_is_off() {
        let mut s = space(100 * GIB, 200 * GIB);
        s.available_inodes = 9_999;
        assert_eq!(
            s.shortage(MinFreeSpace::Bytes(1)),
            Some(Shortage::Inodes { threshold: 10_000 })
        );
        assert_eq!(s.shortage(MinFreeSpace::Off), None);
        s.total_inodes = 0; // no inode limit (btrfs)
        s.available_inodes = 0;
        assert_eq!(s.shortage(MinFreeSpace::Bytes(1)), None);
        assert_eq!(space(0, 1).shortage(MinFreeSpace::Off), None);
    }

    #[test]
    fn a_real_filesystem_is_measured_and_the_flag_follows() {
        let dir = tempfile::tempdir().unwrap();
        let s = Space::of(dir.path()).unwrap();
        assert!(s.total > 0 && s.available <= s.total, "{s:?}");

        // More than the whole disk must stay free: low at once, from the first measure.
        let monitor = DiskMonitor::watching(
            vec![dir.path().to_path_buf()],
            MinFreeSpace::Bytes(s.total.saturating_add(1)),
        );
        let flag = monitor.flag();
        assert!(flag.is_low());
        assert!(monitor.check());

        let relaxed = DiskMonitor::watching(vec![dir.path().to_path_buf()], MinFreeSpace::Bytes(1));
        assert!(!relaxed.flag().is_low());
        // A path that cannot be measured does not make space low.
        let missing =
            DiskMonitor::watching(vec![dir.path().join("gone")], MinFreeSpace::Percent(50));
        assert!(!missing.check());
        assert!(!LowSpace::default().is_low());
    }
}
