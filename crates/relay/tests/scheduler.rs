//! The scheduler (`scheduler::spawn`) after a restart: its due index is rebuilt from a spool
//! written by an earlier process, and kept current by events, including changes another
//! process (`tern queue`) makes through its own store, long before the safety rescan.

// Test code: a failed unwrap is a failed test (the helpers are not `#[test]` functions).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use tern_queue::{FsStore, QueueId, QueueStore, RecipientStatus};
use tern_relay::scheduler::{self, DueIndex, SAFETY_RESCAN};

use support::{
    commit, config, deferred_until, envelope, message, queued, wait_for, Peer, EVENT_TIMEOUT,
};

/// What `tern queue release` / `tern queue flush` do: lock, change, update, unlock, through a
/// store of their own (which tells the listening server).
fn change_elsewhere(
    data_dir: &std::path::Path,
    id: &QueueId,
    change: impl FnOnce(&mut tern_queue::Envelope),
) {
    let store = FsStore::open(data_dir).unwrap();
    let lock = store.lock(id).unwrap().expect("entry not busy");
    let mut env = store.load(id).unwrap();
    change(&mut env);
    store.update(&lock, &env).unwrap();
}

#[tokio::test]
async fn after_a_restart_due_entries_go_and_queue_commands_take_effect_at_once() {
    // The waits below must end on events, not on the safety rescan.
    assert!(EVENT_TIMEOUT < SAFETY_RESCAN);

    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::accepting().await;
    let cfg = config(dir.path(), peer.port(), "");

    // Written by the process before the restart.
    let (pending_msg, deferred_msg, held_msg) = (
        message("pending", 0),
        message("deferred", 0),
        message("held", 0),
    );
    let (pending, deferred, held) = {
        let before = FsStore::open(dir.path()).unwrap();
        let pending = commit(
            &before,
            &envelope(Some("alice@tern.test"), &["bob@remote.test"], &pending_msg),
            &pending_msg,
        );
        let mut env = envelope(Some("alice@tern.test"), &["bob@remote.test"], &deferred_msg);
        env.recipients[0].status = deferred_until(SystemTime::now() + Duration::from_secs(3600));
        let deferred = commit(&before, &env, &deferred_msg);
        let mut env = envelope(Some("alice@tern.test"), &["bob@remote.test"], &held_msg);
        env.held = true;
        let held = commit(&before, &env, &held_msg);
        (pending, deferred, held)
    };

    // The restarted server: a fresh store over the same spool, listening as serve.rs does.
    let server = Arc::new(FsStore::open(dir.path()).unwrap());
    server.listen_for_other_processes().unwrap();
    let shutdown = CancellationToken::new();
    let workers = scheduler::spawn(cfg.clone(), server.clone(), shutdown.clone());

    wait_for("the pending entry to be delivered", || {
        (!queued(server.as_ref(), &pending) && peer.messages_so_far().len() == 1).then_some(())
    })
    .await;
    assert_eq!(peer.messages_so_far(), vec![pending_msg.clone()]);
    // The others were in the same rebuilt index and are not due: untouched.
    let env = server.load(&deferred).unwrap();
    assert!(
        matches!(
            env.recipients[0].status,
            RecipientStatus::Deferred { attempts: 1, .. }
        ),
        "{env:?}"
    );
    assert!(env.attempts_log.is_empty(), "not tried: {env:?}");
    let env = server.load(&held).unwrap();
    assert!(env.held && env.recipients[0].status == RecipientStatus::Pending);

    // `tern queue release` in another process.
    change_elsewhere(dir.path(), &held, |env| env.held = false);
    wait_for("the released entry to be delivered", || {
        (!queued(server.as_ref(), &held) && peer.messages_so_far().len() == 2).then_some(())
    })
    .await;
    assert!(
        queued(server.as_ref(), &deferred),
        "still waiting for its retry"
    );

    // `tern queue flush` in another process.
    change_elsewhere(dir.path(), &deferred, |env| {
        for r in &mut env.recipients {
            if let RecipientStatus::Deferred { next_attempt, .. } = &mut r.status {
                *next_attempt = SystemTime::now();
            }
        }
    });
    wait_for("the flushed entry to be delivered", || {
        (!queued(server.as_ref(), &deferred) && peer.messages_so_far().len() == 3).then_some(())
    })
    .await;

    shutdown.cancel();
    workers.stop().await;
    let rec = peer.finish().await;
    assert_eq!(rec.messages(), vec![pending_msg, held_msg, deferred_msg]);
    assert!(server.list().unwrap().is_empty());
    // Every connection the scheduler opened it also closed politely: the pool's sweep (idle,
    // or all at shutdown) ends each with QUIT.
    assert!(!rec.connections.is_empty());
    for c in &rec.connections {
        assert_eq!(c.lines.last().map(String::as_str), Some("QUIT"), "{c:?}");
    }
}

#[test]
fn the_due_index_keeps_one_time_per_entry() {
    // The public index on its own: moving an entry's time never leaves its old slot behind.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let a = QueueId::generate();
    let b = QueueId::generate();
    let mut ix = DueIndex::default();
    assert!(ix.is_empty() && ix.next().is_none());
    ix.set(a.clone(), Some(t0 + Duration::from_secs(60)));
    ix.set(b.clone(), Some(t0 + Duration::from_secs(30)));
    ix.set(a.clone(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(ix.len(), 2);
    assert_eq!(ix.next(), Some(t0 + Duration::from_secs(10)));
    assert!(ix.take_due(t0).is_empty());
    assert_eq!(
        ix.take_due(t0 + Duration::from_secs(59)),
        vec![a.clone(), b]
    );
    assert!(ix.take_due(t0 + Duration::from_secs(3600)).is_empty());
    assert!(ix.is_empty() && !ix.contains(&a));
}
