//! Micro benchmark of the durable spool: commits per second with concurrent committers, as the
//! server does (one blocking commit per session). Run in release on the disk you care about:
//! `cargo run --release -p tern-queue --example spool_bench -- [threads] [per_thread] [bytes] [dir]`

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tern_queue::{Envelope, FsStore, QueueId, QueueStore, Recipient, RecipientStatus};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (threads, per_thread, bytes) = (num(0, 8), num(1, 250), num(2, 4096));
    let dir = match args.get(3) {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let store = Arc::new(FsStore::open(dir.path())?);
    let body = Arc::new(vec![b'x'; bytes]);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (store, body) = (store.clone(), body.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..per_thread {
                    let env = Envelope::new(
                        QueueId::generate(),
                        Some("bench@example.org".into()),
                        vec![Recipient {
                            dsn: Default::default(),
                            address: "rcpt@example.net".into(),
                            original: None,
                            status: RecipientStatus::Pending,
                        }],
                        SystemTime::now(),
                        body.len() as u64,
                    );
                    store.commit_parts(&env, &[b"Received: bench\r\n", &body])?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = threads * per_thread;
    println!(
        "{total} commits of {bytes} B by {threads} threads in {secs:.2}s: {:.0} commits/s (4 fsyncs each)",
        total as f64 / secs
    );
    Ok(())
}
