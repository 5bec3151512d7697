//! Idle mode: open N connections, read each greeting, hold them all, then close; reports how many
//! were greeted and how long that took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::smtp::Client;

/// Outcome of an idle run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IdleReport {
    pub wanted: u64,
    pub greeted: u64,
    pub refused: u64,
    pub timed_out: u64,
    /// From the start to the last greeting received.
    pub last_greeting: Duration,
}

impl IdleReport {
    pub fn result_line(&self) -> String {
        format!(
            "IDLE wanted={} greeted={} refused={} timed_out={} last_220_s={:.3}",
            self.wanted,
            self.greeted,
            self.refused,
            self.timed_out,
            self.last_greeting.as_secs_f64()
        )
    }
}

/// Opens `n` connections (at most `parallel` connecting at once), each must get its 220 within
/// `timeout` of the start; greeted ones are held until `hold` after the start.
pub async fn run(
    server: &str,
    n: u64,
    parallel: usize,
    timeout: Duration,
    hold: Duration,
) -> Result<IdleReport> {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let mut set = JoinSet::new();
    for _ in 0..n {
        let gate = Arc::clone(&gate);
        let tx = tx.clone();
        let server = server.to_string();
        set.spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let left = timeout.saturating_sub(start.elapsed());
            let outcome = match Client::connect(&server, left).await {
                Ok((c, 220)) => {
                    drop(permit);
                    let _ = tx.send(Outcome::Greeted(start.elapsed()));
                    // Hold the connection open, idle, until the end of the hold period.
                    tokio::time::sleep(hold.saturating_sub(start.elapsed())).await;
                    c.quit().await;
                    return;
                }
                Ok((_, _)) => Outcome::Refused,
                Err(e) if format!("{e:#}").contains("timed out") => Outcome::TimedOut,
                Err(_) => Outcome::Refused,
            };
            let _ = tx.send(outcome);
        });
    }
    drop(tx);
    let mut rep = IdleReport {
        wanted: n,
        ..Default::default()
    };
    let mut announced = false;
    // Every connection reports exactly once (or its task ends), so this loop ends after n messages.
    while let Some(o) = rx.recv().await {
        match o {
            Outcome::Greeted(t) => {
                rep.greeted += 1;
                rep.last_greeting = rep.last_greeting.max(t);
            }
            Outcome::Refused => rep.refused += 1,
            Outcome::TimedOut => rep.timed_out += 1,
        }
        if !announced && rep.greeted + rep.refused + rep.timed_out == n {
            announced = true;
            // bench/run.sh waits for this line to sample the server's memory while all are held.
            println!(
                "HOLDING greeted={} after {:.3}s",
                rep.greeted,
                start.elapsed().as_secs_f64()
            );
        }
    }
    while set.join_next().await.is_some() {}
    Ok(rep)
}

enum Outcome {
    Greeted(Duration),
    Refused,
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn counts_greetings_and_refusals() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        // Greets the first 3 connections, answers 554 to the rest (RFC 5321 3.1).
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..5 {
                let (mut s, _) = l.accept().await.unwrap();
                let greeting: &[u8] = if i < 3 { b"220 hi\r\n" } else { b"554 no\r\n" };
                s.write_all(greeting).await.unwrap();
                held.push(s);
            }
            held
        });
        let rep = run(
            &addr,
            5,
            2,
            Duration::from_secs(1),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert_eq!(rep.greeted, 3);
        assert_eq!(rep.refused, 2);
        assert_eq!(rep.timed_out, 0);
        drop(server.await.unwrap());
    }
}
