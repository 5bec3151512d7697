//! A full disk during intake (issue 10): every write path answers `StoreError::StorageFull`
//! (the session's `452 4.3.1`) and leaves no partial file in any mailbox `new/` or `cur/`, no
//! temp file, and no half queue entry. The queue side uses the spool's fault injection; the
//! Maildir side a real tmpfs that is too small, when the test runs as root (as in CI).

// Test code: a failed unwrap is a failed test (the helpers are not `#[test]` functions).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tern_config::Config;
use tern_delivery::router::Target;
use tern_delivery::{Accepted, AcceptedRecipient, Intake, LocalDelivery};
use tern_queue::{FailAt, FaultPoint, FsStore, QueueStore, StoreError};

/// ENOSPC on Linux.
const ENOSPC: i32 = 28;

fn config(data_dir: &Path) -> Config {
    let text = format!(
        "hostname = \"mx.tern.test\"\ndata_dir = {:?}\n[local]\ndomains = [\"tern.test\"]\n",
        data_dir.display().to_string()
    );
    Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
}

fn accepted(targets: Vec<Target>) -> Accepted {
    Accepted {
        dsn: Default::default(),
        requiretls: false,
        id: tern_queue::QueueId::generate().to_string(),
        sender: Some("alice@example.test".into()),
        recipients: vec![AcceptedRecipient {
            dsn: Default::default(),
            address: "rcpt@tern.test".into(),
            targets,
        }],
        received: "Received: by mx.tern.test (tern) id 1;\r\n\tdate\r\n".into(),
        smtputf8: false,
        eight_bit: false,
        helo: "client.test".into(),
        client_ip: "127.0.0.1".parse().unwrap(),
        sign: false,
        inbound: tern_delivery::Inbound::Skip,
        via: Default::default(),
    }
}

/// Every regular file below `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_full_spool_takes_back_the_local_copies_and_answers_storage_full() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    for point in FaultPoint::ALL {
        let fault = Arc::new(FailAt::os_error(point, ENOSPC));
        let queue = Arc::new(FsStore::open_with_faults(d.path(), fault.clone()).unwrap());
        let intake = Intake::new(queue.clone(), LocalDelivery::unstaged(&cfg));
        let acc = accepted(vec![
            Target::Local("dave@tern.test".into()),
            Target::Remote("bob@remote.test".into()),
        ]);
        let e = intake
            .store_blocking(&acc, mem(b"Subject: x\r\n\r\nbody\r\n"))
            .unwrap_err();
        assert!(fault.fired(), "{point:?}");
        assert!(matches!(e, StoreError::StorageFull(_)), "{point:?}: {e:?}");
        // The local copy was written first and taken back; the spool holds nothing.
        let mailboxes = files_under(&d.path().join("mailboxes"));
        assert!(mailboxes.is_empty(), "{point:?}: {mailboxes:?}");
        assert!(queue.list().unwrap().is_empty(), "{point:?}");
        let spool: Vec<PathBuf> = files_under(&d.path().join("queue"))
            .into_iter()
            .filter(|p| !p.ends_with(tern_queue::fs_store::SOCKET_NAME))
            .collect();
        assert!(spool.is_empty(), "{point:?}: {spool:?}");
    }
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_mailbox_filesystem_leaves_no_partial_message() {
    if !running_as_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("data");
    fs::create_dir(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "1m");
    let cfg = config(&mnt);
    let queue = Arc::new(FsStore::open(&mnt).unwrap());
    // The server's way: temp files in the staging area, renamed into new/.
    let intake = Intake::new(queue.clone(), LocalDelivery::open_staged(&cfg).unwrap());
    let small = b"Subject: small\r\n\r\nfits\r\n".to_vec();
    let two = vec![
        Target::Local("a@tern.test".into()),
        Target::Local("b@tern.test".into()),
    ];
    intake
        .store_blocking(&accepted(two.clone()), mem(&small))
        .unwrap();

    // Two copies of 400 KB do not both fit in what is left of 1 MiB: the second one fails
    // (ENOSPC on write) and the first is taken back.
    let big: Vec<u8> = b"Subject: big\r\n\r\n"
        .iter()
        .copied()
        .chain(b"0123456789abcdef\r\n".repeat(400_000 / 18))
        .collect();
    let mut many = two.clone();
    many.push(Target::Local("c@tern.test".into()));
    let e = intake
        .store_blocking(&accepted(many), mem(&big))
        .unwrap_err();
    assert!(matches!(e, StoreError::StorageFull(_)), "{e:?}");
    // A relayed copy that does not fit fails the same way and leaves no half entry.
    let e = intake
        .store_blocking(
            &accepted(vec![Target::Remote("x@remote.test".into())]),
            mem(&[big.as_slice(), big.as_slice(), big.as_slice()].concat()),
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::StorageFull(_)), "{e:?}");
    assert!(queue.list().unwrap().is_empty());

    // Only the small message is in the mailboxes, complete; nothing in tmp/ or staging.
    let files = files_under(&mnt.join("mailboxes"));
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        assert!(f.parent().unwrap().ends_with("new"), "{}", f.display());
        assert!(fs::read(f).unwrap().ends_with(b"Subject: small\n\nfits\n"));
    }
    let spool: Vec<PathBuf> = files_under(&mnt.join("queue"))
        .into_iter()
        .filter(|p| !p.ends_with(tern_queue::fs_store::SOCKET_NAME))
        .collect();
    assert!(spool.is_empty(), "{spool:?}");

    // Service resumes: the small message fits again.
    intake.store_blocking(&accepted(two), mem(&small)).unwrap();
    assert_eq!(files_under(&mnt.join("mailboxes")).len(), 4);
}

fn mem(bytes: &[u8]) -> tern_queue::MessageBody {
    tern_queue::MessageBody::Memory(bytes.to_vec())
}
