//! The PostgreSQL store against a real PostgreSQL: a private cluster (initdb + pg_ctl on a
//! free loopback port, as `nobody` when run as root) started once for these tests, one fresh
//! database per test. Without PostgreSQL the tests are skipped, except under CI (`CI` set),
//! where .ci/run installed it and a skip would hide a broken setup.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tern_pgqueue::{schema, PgSettings, PgStore, Role};
use tern_queue::{Envelope, QueueId, QueueStore, Recipient, RecipientStatus, StoreEvent};

struct Cluster {
    root: PathBuf,
    port: u16,
    bin: PathBuf,
    as_nobody: bool,
}

impl Cluster {
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn start() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())?;
        let root = std::env::temp_dir().join(format!("tern-pgq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).ok()?;
        let as_nobody = rustix_is_root();
        if as_nobody {
            let status = Command::new("chown")
                .args(["nobody", &root.display().to_string()])
                .status()
                .ok()?;
            assert!(status.success());
        }
        let port = free_port();
        let mut c = Cluster {
            root,
            port,
            bin,
            as_nobody,
        };
        let data = c.root.join("data");
        let out = c
            .command("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "tern",
                "-A",
                "trust",
                "--no-sync",
            ])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 200\n",
            c.root.display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).expect("conf");
        let log = c.root.join("pg.log");
        let out = c
            .command("pg_ctl")
            .args([
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-w",
                "start",
            ])
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        c.port = port;
        c.stop_when_this_process_ends();
        Some(c)
    }

    /// A static is never dropped: a watchdog stops the cluster when this test binary exits.
    fn stop_when_this_process_ends(&self) {
        let stop = format!(
            "{}{} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
            if self.as_nobody {
                "runuser -u nobody -- "
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.root.join("data").display(),
            self.root.display()
        );
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.2; done; {stop}",
            std::process::id()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    fn fresh_db(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", N.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-d",
                &self.url("postgres"),
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://tern@127.0.0.1:{}/{db}", self.port)
    }

    fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-d", url, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The cluster for this test binary, or `None` (skip) where PostgreSQL is not installed.
fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    let c = CLUSTER.get_or_init(Cluster::start).as_ref();
    if c.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL (initdb, pg_ctl) is not installed, and CI is set"
        );
        eprintln!("skipping: PostgreSQL is not installed");
    }
    c
}

fn store(url: &str, node: &str, lease: Duration, spool: &Path) -> PgStore {
    PgStore::open(&PgSettings {
        url: url.to_string(),
        node_id: node.to_string(),
        lease_time: lease,
        spool_dir: spool.to_path_buf(),
        role: Role::Server,
    })
    .expect("open")
}

fn env(n: u8, rcpts: &[&str]) -> Envelope {
    let id: QueueId = format!("{:032x}", u128::from(n) + 0xabc0_0000)
        .parse()
        .unwrap();
    let mut e = Envelope::new(
        id,
        Some("alice@example.org".into()),
        rcpts
            .iter()
            .map(|r| Recipient {
                dsn: Default::default(),
                address: r.to_string(),
                original: None,
                status: RecipientStatus::Pending,
            })
            .collect(),
        SystemTime::now() - Duration::from_secs(u64::from(200 - n)),
        10,
    );
    e.prefix = "Received: by test\r\n".into();
    e
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn commit_load_read_and_remove_round_trip() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    assert_eq!(PgStore::migrate(&url).unwrap(), (0, schema::LATEST));
    assert_eq!(
        PgStore::migrate(&url).unwrap(),
        (schema::LATEST, schema::LATEST)
    );
    let dir = tempfile::tempdir().unwrap();
    let s = store(&url, "n1", Duration::from_secs(60), dir.path());
    let e = env(1, &["bob@example.net", "carol@Example.COM"]);
    s.commit_parts(&e, &[b"Subject: hi\r\n", b"\r\nbody\r\n"])
        .unwrap();
    assert_eq!(s.list().unwrap(), vec![e.id.clone()]);
    assert_eq!(s.load(&e.id).unwrap(), e);
    let all = s.load_all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.as_ref().unwrap(), &e);
    assert_eq!(
        s.read_message(&e.id).unwrap(),
        b"Received: by test\r\nSubject: hi\r\n\r\nbody\r\n"
    );
    assert_eq!(s.read_prefix(&e.id, 10).unwrap(), b"Received: ");
    // Per-recipient rows for operators' queries.
    assert_eq!(
        c.psql(
            &url,
            "SELECT string_agg(domain || ':' || state, ',' ORDER BY idx) FROM tern_recipients"
        ),
        "example.net:pending,example.com:pending"
    );
    // A second commit of the same id is refused, and leaves the first alone.
    assert!(s.commit(&e, b"other").is_err());
    let lock = s.lock(&e.id).unwrap().expect("free");
    s.remove(lock).unwrap();
    assert!(s.list().unwrap().is_empty());
    assert_eq!(
        s.load(&e.id).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(c.psql(&url, "SELECT count(*) FROM tern_bodies"), "0");
    assert_eq!(c.psql(&url, "SELECT count(*) FROM tern_recipients"), "0");
}

#[test]
fn a_large_body_is_read_back_in_pieces_exactly() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    PgStore::migrate(&url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = store(&url, "n1", Duration::from_secs(60), dir.path());
    let body: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    let mut spool = s.spool().unwrap();
    spool.append(&body).unwrap();
    let spooled = spool.finish().unwrap();
    let e = env(2, &["bob@example.net"]);
    s.commit_spooled(&e, spooled).unwrap();
    // The spool file is gone once the database has the body.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let stored = s.load(&e.id).unwrap();
    let mut back = Vec::new();
    s.message_reader(&stored)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(&back[..e.prefix.len()], e.prefix.as_bytes());
    assert_eq!(&back[e.prefix.len()..], &body[..]);
}

#[test]
fn two_nodes_claim_disjoint_entries_and_a_dead_nodes_lease_runs_out() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    PgStore::migrate(&url).unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(&url, "a", Duration::from_secs(2), d1.path());
    let b = store(&url, "b", Duration::from_secs(2), d2.path());
    for n in 0..40 {
        a.commit(&env(10 + n, &["x@example.net"]), b"m").unwrap();
    }
    let (ca, cb) = (a.cluster().unwrap(), b.cluster().unwrap());
    let (ta, tb) = std::thread::scope(|sc| {
        let ta = sc.spawn(|| ca.claim_due(30).unwrap());
        let tb = sc.spawn(|| cb.claim_due(30).unwrap());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let ids_a: HashSet<_> = ta.iter().map(|(l, _)| l.id().clone()).collect();
    let ids_b: HashSet<_> = tb.iter().map(|(l, _)| l.id().clone()).collect();
    assert!(
        ids_a.is_disjoint(&ids_b),
        "both nodes claimed {:?}",
        ids_a.intersection(&ids_b)
    );
    assert_eq!(ids_a.len() + ids_b.len(), 40);
    // Claimed entries are not claimable, nor lockable, by anyone else.
    assert!(cb.claim_due(10).unwrap().is_empty());
    let one = ta[0].0.id().clone();
    assert!(b.lock(&one).unwrap().is_none());
    assert_eq!(
        c.psql(
            &url,
            &format!("SELECT leased_by FROM tern_queue WHERE id = '{one}'")
        ),
        "a"
    );
    // Node b gives its entries back (drop releases, asynchronously).
    drop(tb);
    wait_until("b's releases", Duration::from_secs(5), || {
        c.psql(
            &url,
            "SELECT count(*) FROM tern_queue WHERE leased_by IS NULL",
        ) != "0"
    });
    // Node a dies holding its leases: nothing renews or releases them.
    for (lock, _) in ta {
        std::mem::forget(lock);
    }
    drop(a);
    let died = Instant::now();
    // Renewed while a lived: a's leases outlast the 2 s lease by renewal only, so they run out
    // about 2 s after a's death, and then b takes every entry.
    let mut got = HashSet::new();
    wait_until("a's leases to run out", Duration::from_secs(10), || {
        for (lock, _) in cb.claim_due(64).unwrap() {
            got.insert(lock.id().clone());
            std::mem::forget(lock);
        }
        got.contains(&one)
    });
    assert!(
        died.elapsed() >= Duration::from_millis(500),
        "taken over too early"
    );
    // A wake time is known for leases still held (b's own, forgotten above).
    assert!(cb.next_wake().unwrap().is_some());
}

#[test]
fn an_update_under_a_lost_lease_is_refused() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    PgStore::migrate(&url).unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(&url, "a", Duration::from_secs(60), d1.path());
    let b = store(&url, "b", Duration::from_secs(60), d2.path());
    let mut e = env(3, &["x@example.net"]);
    a.commit(&e, b"m").unwrap();
    let lock_a = a.lock(&e.id).unwrap().unwrap();
    assert!(b.lock(&e.id).unwrap().is_none(), "a holds it");
    // a's lease is made to run out (as if a stalled past lease_time), and b takes it.
    c.psql(
        &url,
        "UPDATE tern_queue SET lease_until = now() - interval '1 second'",
    );
    let lock_b = b.lock(&e.id).unwrap().expect("expired lease");
    e.held = true;
    let err = a.update(&lock_a, &e).unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");
    b.update(&lock_b, &e).unwrap();
    assert!(b.load(&e.id).unwrap().held);
    assert_eq!(c.psql(&url, "SELECT next_due IS NULL FROM tern_queue"), "t");
    assert!(a.remove(lock_a).is_err());
    assert_eq!(
        b.lock(&QueueId::generate()).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

#[test]
fn other_nodes_hear_changes_through_notify() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    PgStore::migrate(&url).unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(&url, "a", Duration::from_secs(60), d1.path());
    let b = store(&url, "b", Duration::from_secs(60), d2.path());
    let heard_a = Arc::new(Mutex::new(Vec::new()));
    let heard_b = Arc::new(Mutex::new(Vec::new()));
    let (ha, hb) = (heard_a.clone(), heard_b.clone());
    a.subscribe(Arc::new(move |ev| ha.lock().unwrap().push(ev)));
    b.subscribe(Arc::new(move |ev| hb.lock().unwrap().push(ev)));
    a.listen();
    b.listen();
    // LISTEN is set up asynchronously: commit until b hears one.
    let mut n = 0u8;
    wait_until("b to hear a's commit", Duration::from_secs(10), || {
        n += 1;
        a.commit(&env(100 + n, &["x@example.net"]), b"m").unwrap();
        heard_b
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, StoreEvent::ChangedElsewhere { .. }))
    });
    // a hears its own commits directly, never again through NOTIFY.
    std::thread::sleep(Duration::from_millis(300));
    let own = heard_a.lock().unwrap().clone();
    assert!(
        own.iter()
            .all(|e| matches!(e, StoreEvent::Committed { .. })),
        "{own:?}"
    );
    assert_eq!(own.len(), usize::from(n));
}

#[test]
fn host_slots_and_rate_counts_are_shared() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    PgStore::migrate(&url).unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = store(&url, "a", Duration::from_secs(60), d1.path());
    let b = store(&url, "b", Duration::from_secs(60), d2.path());
    let (ca, cb) = (a.cluster().unwrap(), b.cluster().unwrap());
    let s1 = ca
        .try_host_slot("mx.example.net", 2)
        .unwrap()
        .expect("first");
    let _s2 = cb
        .try_host_slot("mx.example.net", 2)
        .unwrap()
        .expect("second");
    assert!(cb.try_host_slot("mx.example.net", 2).unwrap().is_none());
    assert!(
        ca.try_host_slot("mx.example.org", 2).unwrap().is_some(),
        "per host"
    );
    drop(s1);
    wait_until("the slot freed", Duration::from_secs(5), || {
        cb.try_host_slot("mx.example.net", 2)
            .unwrap()
            .map(std::mem::forget)
            .is_some()
    });

    let minute = 60 * 29_000_000;
    let ours: std::collections::HashMap<String, u32> =
        [("192.0.2.1".to_string(), 7), ("192.0.2.2".to_string(), 1)].into();
    assert!(ca.exchange_rate_counts(minute, &ours).unwrap().is_empty());
    let more: std::collections::HashMap<String, u32> = [("192.0.2.1".to_string(), 2)].into();
    let seen_by_b = cb
        .exchange_rate_counts(minute, &Default::default())
        .unwrap();
    assert_eq!(seen_by_b.get("192.0.2.1"), Some(&7));
    ca.exchange_rate_counts(minute, &more).unwrap();
    let seen_by_b = cb
        .exchange_rate_counts(minute, &Default::default())
        .unwrap();
    assert_eq!(seen_by_b.get("192.0.2.1"), Some(&9));
    // Its own counts are not the others'.
    assert!(ca
        .exchange_rate_counts(minute, &Default::default())
        .unwrap()
        .is_empty());
}

#[test]
fn a_schema_newer_than_this_tern_is_refused() {
    let Some(c) = cluster() else { return };
    let url = c.fresh_db();
    let dir = tempfile::tempdir().unwrap();
    let err = PgStore::open(&PgSettings {
        url: url.clone(),
        node_id: "n".into(),
        lease_time: Duration::from_secs(60),
        spool_dir: dir.path().to_path_buf(),
        role: Role::Cli,
    })
    .err()
    .expect("unmigrated");
    assert!(err.to_string().contains("tern queue migrate"), "{err}");
    PgStore::migrate(&url).unwrap();
    c.psql(&url, "INSERT INTO tern_schema (version) VALUES (99)");
    let err = PgStore::migrate(&url).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}
