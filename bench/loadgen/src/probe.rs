//! Machine limits the benchmark is judged against: fsync rate of a directory's disk and loopback
//! TCP bandwidth. Plain threads and blocking I/O, so the numbers are the machine's, not a runtime's.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const BLOCK: usize = 4096;

/// Appends 4 KiB + fsync in a loop for `secs` on each of `threads` threads (one file each);
/// returns fsyncs per second over all threads.
pub fn append_fsync(dir: &Path, threads: usize, secs: f64) -> Result<f64> {
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let path = dir.join(format!("fsync-append-{i}"));
            thread::spawn(move || -> Result<u64> {
                // A fresh file written sequentially: every write is an append.
                let mut f = File::create(&path)?;
                let block = [b'x'; BLOCK];
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    f.write_all(&block)?;
                    f.sync_all()?;
                    n += 1;
                }
                fs::remove_file(&path)?;
                Ok(n)
            })
        })
        .collect();
    let total = join_sum(handles)?;
    Ok(total as f64 / secs)
}

/// Creates a new file, writes 4 KiB, fsyncs it, in a loop for `secs`; returns files per second.
pub fn create_fsync(dir: &Path, secs: f64) -> Result<f64> {
    let sub = dir.join("fsync-create");
    fs::create_dir_all(&sub)?;
    let block = [b'y'; BLOCK];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut f = File::create(sub.join(n.to_string()))?;
        f.write_all(&block)?;
        f.sync_all()?;
        n += 1;
    }
    fs::remove_dir_all(&sub)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Writes 10 MiB files, each fsynced, for `secs`; returns MB/s (10^6 bytes) of durable writes.
pub fn sequential_fsync(dir: &Path, secs: f64) -> Result<f64> {
    let path: PathBuf = dir.join("fsync-seq");
    let chunk = vec![b'z'; 1 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    // At least one file, so a slow disk still gives a number.
    while bytes == 0 || start.elapsed().as_secs_f64() < secs {
        let mut f = File::create(&path)?;
        for _ in 0..10 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        bytes += 10 << 20;
    }
    let rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    fs::remove_file(&path)?;
    Ok(rate)
}

/// One TCP stream over 127.0.0.1 for `secs`: a writer thread and a reader; returns Gbit/s.
pub fn loopback_bandwidth(secs: f64) -> Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = thread::spawn(move || -> Result<(u64, Duration)> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        let start = Instant::now();
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok((total, start.elapsed()));
            }
            total += n as u64;
        }
    });
    let mut w = TcpStream::connect(addr).context("connect to own listener")?;
    let chunk = vec![b'b'; 1 << 20];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        w.write_all(&chunk)?;
    }
    drop(w);
    let (total, took) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(total as f64 * 8.0 / took.as_secs_f64() / 1e9)
}

fn join_sum(handles: Vec<thread::JoinHandle<Result<u64>>>) -> Result<u64> {
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    }
    Ok(total)
}

/// All probes, as `LIMITS key=value ...` for bench/run.sh.
pub fn all(dir: &Path, secs: f64) -> Result<String> {
    fs::create_dir_all(dir)?;
    let one = append_fsync(dir, 1, secs)?;
    let eight = append_fsync(dir, 8, secs)?;
    let create = create_fsync(dir, secs)?;
    let seq = sequential_fsync(dir, secs)?;
    let bw = loopback_bandwidth(secs)?;
    Ok(format!(
        "LIMITS fsync_append_1t={one:.0} fsync_append_8t={eight:.0} create_fsync={create:.0} \
         seq_fsync_mb_s={seq:.0} loopback_gbit_s={bw:.1}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_measure_something_and_clean_up() {
        let dir = std::env::temp_dir().join(format!("loadgen-probe-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(append_fsync(&dir, 2, 0.05).unwrap() > 0.0);
        assert!(create_fsync(&dir, 0.05).unwrap() > 0.0);
        assert!(sequential_fsync(&dir, 0.01).unwrap() > 0.0);
        assert!(loopback_bandwidth(0.05).unwrap() > 0.0);
        // Nothing left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir(&dir).unwrap();
    }
}
