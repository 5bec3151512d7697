//! Throughput mode: N concurrent sessions share a budget of M messages; one TCP connection per
//! message (like smtp-source) unless `reuse` keeps each session's connection open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinSet;

use crate::message;
use crate::smtp::{expect, Client};
use crate::stats::Summary;

/// What to send and where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub server: String,
    pub sessions: u64,
    pub messages: u64,
    pub size: usize,
    pub rcpts: u64,
    pub domain: String,
    pub from: String,
    pub helo: String,
    pub reuse: bool,
    /// Bound on every single connect/read/write.
    pub timeout: Duration,
    /// Bound on the whole run: sessions stop taking messages after it.
    pub deadline: Duration,
}

impl Plan {
    /// Recipients of every message: `user0@D` .. `user{R-1}@D`.
    pub fn recipients(&self) -> Vec<String> {
        (0..self.rcpts)
            .map(|i| format!("user{i}@{}", self.domain))
            .collect()
    }
}

struct Shared {
    plan: Plan,
    next: AtomicU64,
    body: Vec<u8>,
    rcpts: Vec<String>,
    start: Instant,
}

/// Runs the plan and returns the summary; a message counts as accepted only on a 250 to its final dot.
pub async fn run(plan: Plan) -> Result<Summary> {
    let shared = Arc::new(Shared {
        body: message::body(plan.size),
        rcpts: plan.recipients(),
        next: AtomicU64::new(0),
        start: Instant::now(),
        plan,
    });
    let mut set = JoinSet::new();
    for _ in 0..shared.plan.sessions.max(1) {
        let s = Arc::clone(&shared);
        set.spawn(async move { session(s).await });
    }
    let mut latencies = Vec::with_capacity(shared.plan.messages as usize);
    let mut failed = 0u64;
    while let Some(res) = set.join_next().await {
        let (lat, fail) = res?;
        latencies.extend(lat);
        failed += fail;
    }
    let elapsed = shared.start.elapsed();
    // Messages never attempted (deadline hit) count as failures too.
    let attempted = latencies.len() as u64 + failed;
    failed += shared.plan.messages.saturating_sub(attempted);
    Ok(Summary::new(latencies, failed, elapsed))
}

/// Takes the next message number, or `None` when the budget or the deadline is used up.
fn ticket(s: &Shared) -> Option<u64> {
    if s.start.elapsed() > s.plan.deadline {
        return None;
    }
    let n = s.next.fetch_add(1, Ordering::Relaxed);
    (n < s.plan.messages).then_some(n)
}

async fn open(s: &Shared) -> Result<Client> {
    let (mut c, code) = Client::connect(&s.plan.server, s.plan.timeout).await?;
    expect(code, 220, "greeting")?;
    expect(
        c.command(&format!("EHLO {}", s.plan.helo)).await?,
        250,
        "EHLO",
    )?;
    Ok(c)
}

/// One session's loop; returns its latencies and its failed-message count.
async fn session(s: Arc<Shared>) -> (Vec<Duration>, u64) {
    let mut lat = Vec::new();
    let mut failed = 0u64;
    let mut conn: Option<Client> = None;
    let first_rcpt = s
        .rcpts
        .first()
        .map(String::as_str)
        .unwrap_or("nobody@invalid");
    while let Some(seq) = ticket(&s) {
        let client = match conn.take() {
            Some(c) => Ok(c),
            None => open(&s).await,
        };
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                report(seq, &e);
                failed += 1;
                continue;
            }
        };
        let headers = message::headers(&s.plan.from, first_rcpt, seq);
        match client
            .transaction(&s.plan.from, &s.rcpts, &[&headers, &s.body])
            .await
        {
            Ok(d) => {
                lat.push(d);
                if s.plan.reuse {
                    conn = Some(client);
                } else {
                    client.quit().await;
                }
            }
            Err(e) => {
                // The connection state is unknown after an error: drop it, the next message reconnects.
                report(seq, &e);
                failed += 1;
            }
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
    (lat, failed)
}

/// Errors go to stderr (first few only would hide patterns; they are rare when things work).
fn report(seq: u64, e: &anyhow::Error) {
    eprintln!("message {seq}: {e:#}");
}
