//! Fault-injection seam for the durable-write steps: a test makes one chosen step fail with an
//! `io::Error` (full disk, I/O error) or stop dead there, as a kill -9 or a power cut would.
//!
//! The seam is an injected trait object, never a global, so tests running in parallel cannot
//! leak faults into each other.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The steps of a durable write where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// The temp file exists (empty); nothing written yet. Stands for a failing `write` (ENOSPC).
    BeforeWrite,
    /// All bytes written, not yet fsync'd. Stands for a failing `fsync` (EIO).
    AfterWrite,
    /// File fsync'd, not yet under its final name. Stands for a failing `rename`.
    AfterFsync,
    /// The file is under its final name; its directory is not yet fsync'd. Stands for a failing
    /// directory fsync.
    AfterRename,
}

impl FaultPoint {
    /// Every point, in the order a write passes them.
    pub const ALL: [FaultPoint; 4] = [
        FaultPoint::BeforeWrite,
        FaultPoint::AfterWrite,
        FaultPoint::AfterFsync,
        FaultPoint::AfterRename,
    ];
}

/// Decides, at each step of a durable write, whether that step fails.
pub trait Faults: Send + Sync {
    /// Called when a write reaches `point` for the file `path`. An `Err` is returned by the write
    /// as if that step had failed. An error made by [`crash_error`] means "the process died here":
    /// the writer then skips all clean-up, leaving the disk exactly as a crash would.
    fn check(&self, point: FaultPoint, path: &Path) -> io::Result<()>;
}

/// Production: no step ever fails on purpose.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl Faults for NoFaults {
    #[inline]
    fn check(&self, _point: FaultPoint, _path: &Path) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct InjectedCrash(FaultPoint);

impl fmt::Display for InjectedCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected crash at {:?}", self.0)
    }
}

impl std::error::Error for InjectedCrash {}

/// The error a [`Faults`] returns to simulate a crash at `point`.
pub fn crash_error(point: FaultPoint) -> io::Error {
    io::Error::other(InjectedCrash(point))
}

/// True when `e` is a simulated crash: writers must then leave everything as it is.
pub fn is_injected_crash(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<InjectedCrash>())
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Os(i32),
    Crash,
}

/// Fails once, the `nth` time (0-based) a write reaches `point`, then never again.
#[derive(Debug)]
pub struct FailAt {
    point: FaultPoint,
    nth: usize,
    action: Action,
    hits: AtomicUsize,
    fired: AtomicBool,
}

impl FailAt {
    /// Make the step fail with the OS error `errno` (e.g. `libc::ENOSPC`, 28 on Linux).
    pub fn os_error(point: FaultPoint, errno: i32) -> Self {
        Self::new(point, Action::Os(errno))
    }

    /// Simulate a crash (kill -9, power loss) at the step: no clean-up happens.
    pub fn crash(point: FaultPoint) -> Self {
        Self::new(point, Action::Crash)
    }

    fn new(point: FaultPoint, action: Action) -> Self {
        Self {
            point,
            nth: 0,
            action,
            hits: AtomicUsize::new(0),
            fired: AtomicBool::new(false),
        }
    }

    /// Fire on the `n`th time the point is reached (0 = first), e.g. 1 = the envelope of a
    /// queue commit rather than its message.
    pub fn nth(mut self, n: usize) -> Self {
        self.nth = n;
        self
    }

    /// Whether the fault has fired: a test that injects a fault must see it used.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Faults for FailAt {
    fn check(&self, point: FaultPoint, _path: &Path) -> io::Result<()> {
        if point != self.point {
            return Ok(());
        }
        if self.hits.fetch_add(1, Ordering::SeqCst) != self.nth {
            return Ok(());
        }
        self.fired.store(true, Ordering::SeqCst);
        Err(match self.action {
            Action::Os(errno) => io::Error::from_raw_os_error(errno),
            Action::Crash => crash_error(point),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_at_the_nth_hit_of_its_point_only() {
        let f = FailAt::os_error(FaultPoint::AfterWrite, 28).nth(1);
        let p = Path::new("x");
        assert!(f.check(FaultPoint::BeforeWrite, p).is_ok());
        assert!(f.check(FaultPoint::AfterWrite, p).is_ok());
        assert!(!f.fired());
        let e = f.check(FaultPoint::AfterWrite, p).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        assert!(!is_injected_crash(&e));
        assert!(f.fired());
        assert!(f.check(FaultPoint::AfterWrite, p).is_ok());
    }

    #[test]
    fn crash_errors_are_recognised() {
        let f = FailAt::crash(FaultPoint::AfterRename);
        let e = f
            .check(FaultPoint::AfterRename, Path::new("x"))
            .unwrap_err();
        assert!(is_injected_crash(&e));
        assert!(!is_injected_crash(&io::Error::other("plain")));
        assert!(e.to_string().contains("AfterRename"));
    }
}
