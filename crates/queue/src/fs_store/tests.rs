//! FsStore tests: round trips, the crash matrix over every step of commit/update/remove, locking.

use super::*;
use crate::envelope::tests::sample;
use crate::envelope::RecipientStatus;
use crate::fault::FailAt;
use crate::outcome::StoredReply;
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::UNIX_EPOCH;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn names(dir: &Path) -> Vec<String> {
    let mut v = file_names(dir).unwrap();
    v.sort();
    v
}

fn message() -> Vec<Vec<u8>> {
    vec![
        b"Received: from client.example.org\r\n".to_vec(),
        b"Subject: hi\r\n\r\nbody line\r\n".repeat(200),
    ]
}

fn parts(m: &[Vec<u8>]) -> Vec<&[u8]> {
    m.iter().map(Vec::as_slice).collect()
}

/// The spool holds exactly these ids, each complete, and no debris.
fn assert_clean_with(store: &FsStore, ids: &[&QueueId], msg: &[u8]) {
    let want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(names(&store.env), want, "env/");
    assert_eq!(names(&store.msg), want, "msg/");
    assert!(
        names(&store.tmp).is_empty(),
        "tmp/: {:?}",
        names(&store.tmp)
    );
    for id in ids {
        assert_eq!(store.load(id).unwrap().id, **id);
        assert_eq!(store.read_message(id).unwrap(), msg);
    }
}

#[test]
fn commit_load_update_remove_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    for sub in ["queue", "queue/tmp", "queue/msg", "queue/env"] {
        let mode = fs::metadata(d.path().join(sub))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{sub}");
    }
    let m = message();
    let mut env = sample(QueueId::generate());
    store.commit_parts(&env, &parts(&m)).unwrap();
    assert_eq!(store.list().unwrap(), vec![env.id.clone()]);
    assert_eq!(store.load(&env.id).unwrap(), env);
    assert_eq!(store.read_message(&env.id).unwrap(), m.concat());
    assert_clean_with(&store, &[&env.id], &m.concat());
    let mode = fs::metadata(store.message_path(&env.id))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let lock = store.lock(&env.id).unwrap().unwrap();
    env.recipients[0].status = RecipientStatus::Delivered {
        at: UNIX_EPOCH,
        reply: StoredReply::from_legacy("250 ok"),
    };
    env.held = true;
    store.update(&lock, &env).unwrap();
    assert_eq!(store.load(&env.id).unwrap(), env);
    assert!(names(&store.tmp).is_empty());

    store.remove(lock).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(names(&store.env).is_empty());
    // The message file stays only as an emptied, temp-named file for reuse.
    for name in names(&store.msg) {
        assert!(is_temp_name(&name), "{name}");
        assert_eq!(fs::metadata(store.msg.join(&name)).unwrap().len(), 0);
    }
    assert_eq!(
        store.load(&env.id).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        store.lock(&env.id).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn commit_never_overwrites_an_existing_entry() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let env = sample(QueueId::generate());
    store.commit(&env, b"first").unwrap();
    let e = store.commit(&env, b"second").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert_clean_with(&store, &[&env.id], b"first");
}

#[test]
fn reopening_sees_the_committed_entries() {
    let d = tempfile::tempdir().unwrap();
    let env = sample(QueueId::generate());
    FsStore::open(d.path()).unwrap().commit(&env, b"m").unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let report = store.recover().unwrap();
    assert_eq!(
        report,
        RecoveryReport {
            entries: 1,
            ..Default::default()
        }
    );
    assert_eq!(store.load(&env.id).unwrap(), env);
}

#[test]
fn list_is_oldest_first_whatever_the_commit_order() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let ids: Vec<QueueId> = (0..30).map(|_| QueueId::generate()).collect();
    for id in ids.iter().rev() {
        store.commit(&sample(id.clone()), b"x").unwrap();
    }
    assert_eq!(store.list().unwrap(), ids);
}

#[test]
fn an_error_at_any_step_of_a_commit_leaves_nothing_behind() {
    // nth 0 = the message file, nth 1 = the envelope (AfterRename 0/1 = fsync of msg/ / env/).
    for point in FaultPoint::ALL {
        for nth in 0..2 {
            let d = tempfile::tempdir().unwrap();
            let fault = Arc::new(FailAt::os_error(point, ENOSPC).nth(nth));
            let store = FsStore::open_with_faults(d.path(), fault.clone()).unwrap();
            let env = sample(QueueId::generate());
            let e = store.commit(&env, b"message").unwrap_err();
            assert!(fault.fired(), "{point:?}/{nth}");
            assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{point:?}/{nth}: {e}");
            assert_clean_with(&store, &[], b"");
        }
    }
}

#[test]
fn a_crash_at_any_step_of_a_commit_recovers_to_all_or_nothing() {
    let m = message();
    for point in FaultPoint::ALL {
        for nth in 0..2 {
            let d = tempfile::tempdir().unwrap();
            let env = sample(QueueId::generate());
            {
                let fault = Arc::new(FailAt::crash(point).nth(nth));
                let store = FsStore::open_with_faults(d.path(), fault.clone()).unwrap();
                store.commit_parts(&env, &parts(&m)).unwrap_err();
                assert!(fault.fired(), "{point:?}/{nth}");
            }
            // Restart.
            let store = FsStore::open(d.path()).unwrap();
            let report = store.recover().unwrap();
            assert!(report.quarantined.is_empty() && report.unknown_files.is_empty());
            // Only a crash after the envelope's rename leaves a committed entry.
            if point == FaultPoint::AfterRename && nth == 1 {
                assert_clean_with(&store, &[&env.id], &m.concat());
                assert_eq!(store.load(&env.id).unwrap(), env);
            } else {
                assert_clean_with(&store, &[], b"");
                assert_eq!(
                    store.lock(&env.id).unwrap_err().kind(),
                    io::ErrorKind::NotFound
                );
            }
        }
    }
}

#[test]
fn a_failed_or_crashed_update_leaves_the_old_or_the_new_envelope_whole() {
    for point in FaultPoint::ALL {
        for crash in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let old = sample(QueueId::generate());
            let mut new = old.clone();
            new.held = true;
            new.recipients.truncate(1);
            {
                let fault = Arc::new(if crash {
                    FailAt::crash(point).nth(2) // after the commit's two passes
                } else {
                    FailAt::os_error(point, EIO).nth(2)
                });
                let store = FsStore::open_with_faults(d.path(), fault.clone()).unwrap();
                store.commit(&old, b"m").unwrap();
                let lock = store.lock(&old.id).unwrap().unwrap();
                store.update(&lock, &new).unwrap_err();
                assert!(fault.fired(), "{point:?} crash={crash}");
            }
            let store = FsStore::open(d.path()).unwrap();
            store.recover().unwrap();
            let got = store.load(&old.id).unwrap();
            let want = if point == FaultPoint::AfterRename {
                &new
            } else {
                &old
            };
            assert_eq!(&got, want, "{point:?} crash={crash}");
            assert_clean_with(&store, &[&old.id], b"m");
        }
    }
}

#[test]
fn a_removal_cut_short_leaves_an_orphan_message_that_recovery_removes() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let gone = sample(QueueId::generate());
    let kept = sample(QueueId::generate());
    store.commit(&gone, b"a").unwrap();
    store.commit(&kept, b"b").unwrap();
    // remove() unlinks the envelope first; a crash right after leaves this state.
    fs::remove_file(store.envelope_path(&gone.id)).unwrap();
    assert_eq!(store.list().unwrap(), vec![kept.id.clone()]);
    let report = store.recover().unwrap();
    assert_eq!(report.orphan_messages_removed, 1);
    assert_eq!(report.entries, 1);
    assert_clean_with(&store, &[&kept.id], b"b");
}

#[test]
fn recovery_quarantines_an_envelope_without_message_and_leaves_foreign_files() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let env = sample(QueueId::generate());
    store.commit(&env, b"a").unwrap();
    fs::remove_file(store.message_path(&env.id)).unwrap();
    fs::write(store.env.join("README"), b"not ours").unwrap();
    let report = store.recover().unwrap();
    assert_eq!(report.quarantined, vec![env.id.clone()]);
    assert_eq!(report.unknown_files, vec!["env/README".to_string()]);
    assert_eq!(report.entries, 0);
    assert!(store.list().unwrap().is_empty());
    assert!(store
        .root()
        .join("corrupt")
        .join(format!("{}.env", env.id))
        .exists());
    assert!(store.env.join("README").exists());
}

#[test]
fn online_recovery_spares_a_commit_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let id = QueueId::generate();
    // A message written a moment ago whose envelope is not there yet.
    fs::write(store.message_path(&id), b"in flight").unwrap();
    fs::write(store.tmp.join(".tmp.x.1.2.3"), b"partial").unwrap();
    let report = store.recover_older_than(Duration::from_secs(600)).unwrap();
    assert_eq!(
        report.orphan_messages_removed + report.temp_files_removed,
        0
    );
    assert!(store.message_path(&id).exists());
    let report = store.recover().unwrap();
    assert_eq!(
        (report.orphan_messages_removed, report.temp_files_removed),
        (1, 1)
    );
}

#[test]
fn commit_many_commits_each_entry_independently() {
    let d = tempfile::tempdir().unwrap();
    // The second message's write fails: only that entry is lost.
    let fault = Arc::new(FailAt::os_error(FaultPoint::BeforeWrite, ENOSPC).nth(1));
    let store = FsStore::open_with_faults(d.path(), fault.clone()).unwrap();
    let envs: Vec<Envelope> = (0..3).map(|_| sample(QueueId::generate())).collect();
    let body: &[&[u8]] = &[b"same ", b"body"];
    let batch: Vec<(&Envelope, &[&[u8]])> = envs.iter().map(|e| (e, body)).collect();
    let results = store.commit_many(&batch);
    assert!(fault.fired());
    assert!(
        results[0].is_ok() && results[1].is_err() && results[2].is_ok(),
        "{results:?}"
    );
    assert_clean_with(&store, &[&envs[0].id, &envs[2].id], b"same body");
}

#[test]
fn commit_many_with_a_failed_directory_fsync_fails_and_undoes_every_entry() {
    let d = tempfile::tempdir().unwrap();
    let fault = Arc::new(FailAt::os_error(FaultPoint::AfterRename, EIO).nth(1));
    let store = FsStore::open_with_faults(d.path(), fault).unwrap();
    let envs: Vec<Envelope> = (0..3).map(|_| sample(QueueId::generate())).collect();
    let body: &[&[u8]] = &[b"x"];
    let batch: Vec<(&Envelope, &[&[u8]])> = envs.iter().map(|e| (e, body)).collect();
    let results = store.commit_many(&batch);
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert_clean_with(&store, &[], b"");
}

#[test]
fn the_lock_is_exclusive_across_threads_and_released_on_drop() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(d.path()).unwrap());
    let env = sample(QueueId::generate());
    store.commit(&env, b"m").unwrap();

    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let store = store.clone();
        let id = env.id.clone();
        std::thread::spawn(move || {
            let lock = store.lock(&id).unwrap().expect("first lock is free");
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(lock);
        })
    };
    locked_rx.recv().unwrap();
    let contender = {
        let store = store.clone();
        let id = env.id.clone();
        std::thread::spawn(move || store.lock(&id).unwrap().is_none())
    };
    assert!(
        contender.join().unwrap(),
        "a second locker must be refused while the first holds it"
    );
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let again = store.lock(&env.id).unwrap();
    assert!(again.is_some(), "released when the holder dropped it");
}

#[test]
fn update_needs_the_lock_of_the_same_entry() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let a = sample(QueueId::generate());
    let b = sample(QueueId::generate());
    store.commit(&a, b"a").unwrap();
    store.commit(&b, b"b").unwrap();
    let lock_a = store.lock(&a.id).unwrap().unwrap();
    let mut b2 = b.clone();
    b2.held = true;
    assert_eq!(
        store.update(&lock_a, &b2).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(store.load(&b.id).unwrap(), b);
}

#[test]
fn concurrent_commits_from_many_threads_all_land() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(d.path()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let env = sample(QueueId::generate());
                    store.commit(&env, format!("{t}-{i}").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.list().unwrap().len(), 100);
    assert!(names(&store.tmp).is_empty());
    assert_eq!(store.recover().unwrap().entries, 100);
}

#[test]
fn a_corrupt_envelope_is_reported_as_invalid_data_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let env = sample(QueueId::generate());
    store.commit(&env, b"m").unwrap();
    fs::write(store.envelope_path(&env.id), b"{\"id\":").unwrap();
    let e = store.load(&env.id).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains(env.id.as_str()), "{e}");
}

#[test]
fn removed_entries_files_are_reused_with_exact_new_content_and_recovery_drops_leftovers() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let big = b"x".repeat(100_000);
    let first = sample(QueueId::generate());
    store.commit(&first, &big).unwrap();
    let msg_inode = fs::metadata(store.message_path(&first.id)).unwrap().ino();
    let env_inode = fs::metadata(store.envelope_path(&first.id)).unwrap().ino();
    store
        .remove(store.lock(&first.id).unwrap().unwrap())
        .unwrap();

    let second = sample(QueueId::generate());
    store.commit(&second, b"short").unwrap();
    assert_eq!(
        fs::metadata(store.message_path(&second.id)).unwrap().ino(),
        msg_inode
    );
    assert_eq!(
        fs::metadata(store.envelope_path(&second.id)).unwrap().ino(),
        env_inode
    );
    // Nothing of the longer first message survives in the reused file.
    assert_eq!(store.read_message(&second.id).unwrap(), b"short");
    assert_eq!(store.load(&second.id).unwrap(), second);
    assert_eq!(store.list().unwrap(), vec![second.id.clone()]);

    store
        .remove(store.lock(&second.id).unwrap().unwrap())
        .unwrap();
    drop(store);
    let reopened = FsStore::open(dir.path()).unwrap();
    reopened.recover().unwrap();
    assert!(names(&reopened.msg).is_empty() && names(&reopened.tmp).is_empty());
}

// ---------------------------------------------------------------- events and control notices

fn subscribed(store: &FsStore) -> mpsc::Receiver<StoreEvent> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    store.subscribe(Arc::new(move |e| {
        let _ = tx.lock().unwrap().send(e);
    }));
    rx
}

#[test]
fn commit_update_and_remove_are_told_to_subscribers_with_the_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let events = subscribed(&store);
    let mut env = sample(QueueId::generate());
    let m = message();
    store.commit_parts(&env, &parts(&m)).unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        StoreEvent::Committed {
            id: env.id.clone(),
            due: env.next_due()
        }
    );
    assert_eq!(
        env.next_due(),
        Some(UNIX_EPOCH),
        "a pending recipient is due at once"
    );
    let lock = store.lock(&env.id).unwrap().unwrap();
    env.held = true;
    store.update(&lock, &env).unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        StoreEvent::Updated {
            id: env.id.clone(),
            due: None
        },
        "held: not due"
    );
    store.remove(lock).unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        StoreEvent::Removed { id: env.id.clone() }
    );
    assert!(events.try_recv().is_err());
}

#[test]
fn a_failed_commit_tells_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FailAt::os_error(FaultPoint::AfterRename, ENOSPC));
    let store = FsStore::open_with_faults(dir.path(), faults).unwrap();
    let events = subscribed(&store);
    let env = sample(QueueId::generate());
    let m = message();
    assert!(store.commit_parts(&env, &parts(&m)).is_err());
    assert!(events.try_recv().is_err());
}

#[test]
fn another_process_changes_reach_the_listening_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = FsStore::open(dir.path()).unwrap();
    server.listen_for_other_processes().unwrap();
    let events = subscribed(&server);
    // `tern queue` opens the same spool with a store of its own.
    let tool = FsStore::open(dir.path()).unwrap();
    let mut env = sample(QueueId::generate());
    let m = message();
    tool.commit_parts(&env, &parts(&m)).unwrap();
    let lock = tool.lock(&env.id).unwrap().unwrap();
    env.held = true;
    tool.update(&lock, &env).unwrap();
    for _ in 0..2 {
        let got = events
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("a notice from the other store");
        assert_eq!(got, StoreEvent::ChangedElsewhere { id: env.id.clone() });
    }
    // Garbage on the socket is ignored, not turned into an event.
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.send_to(
        b"../../etc/passwd",
        dir.path().join("queue").join(SOCKET_NAME),
    )
    .unwrap();
    tool.remove(lock).unwrap();
    assert_eq!(
        events
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap(),
        StoreEvent::ChangedElsewhere { id: env.id.clone() }
    );
}

/// A streamed body becomes the message file by a rename; the envelope's prefix is read in
/// front of it by every reader, and nothing is left in incoming/.
#[test]
fn a_spooled_body_is_committed_by_rename_with_its_prefix_in_the_envelope() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open(d.path()).unwrap();
    let body = b"Subject: big\r\n\r\n".to_vec();
    let mut file = store.spool().unwrap();
    file.append(&body).unwrap();
    file.append(&b"x".repeat(100_000)).unwrap();
    let spooled = file.finish().unwrap();
    let mut env = sample(QueueId::generate());
    env.prefix = "Received: by mx\r\n".into();
    store.commit_spooled(&env, spooled).unwrap();

    let whole = [
        b"Received: by mx\r\n".as_slice(),
        &body,
        &b"x".repeat(100_000),
    ]
    .concat();
    assert_eq!(store.read_message(&env.id).unwrap(), whole);
    assert_eq!(
        store.read_prefix(&env.id, 20).unwrap(),
        b"Received: by mx\r\nSub"
    );
    let mut streamed = Vec::new();
    store
        .message_reader(&store.load(&env.id).unwrap())
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, whole);
    // The file itself holds only the body: the prefix is not copied into it.
    assert_eq!(
        fs::read(store.message_path(&env.id)).unwrap().len(),
        body.len() + 100_000
    );
    assert!(names(&store.incoming).is_empty());
}

/// A failed commit of a spooled body leaves no entry, and a crash before the envelope leaves
/// only an orphan message that recovery removes; bodies never committed are cleared at start.
#[test]
fn a_spooled_commit_that_fails_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let faults = Arc::new(FailAt::os_error(FaultPoint::AfterRename, ENOSPC));
    let store = FsStore::open_with_faults(d.path(), faults).unwrap();
    let mut file = store.spool().unwrap();
    file.append(b"m").unwrap();
    let env = sample(QueueId::generate());
    assert!(store.commit_spooled(&env, file.finish().unwrap()).is_err());
    assert!(store.list().unwrap().is_empty());
    assert!(names(&store.incoming).is_empty());

    let store = FsStore::open(d.path()).unwrap();
    let left = store.spool().unwrap();
    std::mem::forget(left); // a kill -9 mid-DATA
    assert_eq!(store.clear_incoming().unwrap(), 1);
    assert!(names(&store.incoming).is_empty());
}
