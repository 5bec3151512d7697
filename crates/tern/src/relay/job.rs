//! One delivery round for one queued message: lock it, try every due recipient (grouped by
//! destination, the groups in parallel), record each outcome, send the bounce or delay notice,
//! then update or remove the entry. The entry stays locked throughout, so `tern queue` and a
//! second scheduler never touch it mid-delivery.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tern_config::Config;
use tern_queue::{Attempt, Envelope, FsStore, QueueId, QueueLock, QueueStore, RecipientStatus};

use super::backoff;
use super::deliver::{Connector, RcptResult};
use super::route;
use crate::bounce::{self, DsnKind};

/// How soon to retry when the bounce itself could not be stored (disk full, say): the failed
/// recipients go back to deferred so the failure is reported later instead of lost.
const BOUNCE_RETRY: Duration = Duration::from_secs(60);

pub struct Context {
    pub cfg: Arc<Config>,
    pub queue: Arc<FsStore>,
    pub connector: Connector,
}

/// Runs one round for `id`. Returns nothing: every outcome is in the spool or the log.
pub async fn run(ctx: Arc<Context>, id: QueueId) {
    let queue = ctx.queue.clone();
    let load_id = id.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&queue, &load_id)).await;
    let (lock, mut env, message) = match loaded {
        Ok(Ok(Some(entry))) => entry,
        // Busy (a `tern queue` command holds it) or already gone: the next scan looks again.
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(id = %id, error = %e, "relay: cannot load queue entry");
            return;
        }
        Err(e) => {
            tracing::error!(id = %id, error = %e, "relay: load task failed");
            return;
        }
    };
    if env.held {
        return;
    }
    let now = SystemTime::now();
    let due: Vec<usize> = env
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| is_due(&r.status, now))
        .map(|(i, _)| i)
        .collect();
    if due.is_empty() {
        return;
    }

    let mut results: Vec<(usize, Option<String>, RcptResult)> = Vec::with_capacity(due.len());
    let received = tern_server::received::count_in_header(&message);
    if received > ctx.cfg.queue.max_received_headers {
        // RFC 5321 6.3: a message that has passed this many hosts is looping.
        let text = format!(
            "554 5.4.6 mail loop: the message has {received} Received headers (limit {})",
            ctx.cfg.queue.max_received_headers
        );
        results.extend(
            due.iter()
                .map(|&i| (i, None, RcptResult::Failed(text.clone()))),
        );
    } else {
        let mut groups: BTreeMap<String, (route::Destination, Vec<usize>)> = BTreeMap::new();
        for &i in &due {
            let address = &env.recipients[i].address;
            let domain = address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            let dest = route::destination(&ctx.cfg, &domain);
            groups
                .entry(dest.key.clone())
                .or_insert_with(|| (dest, Vec::new()))
                .1
                .push(i);
        }
        let sender = env.sender.as_deref();
        let attempts = groups.into_values().map(|(dest, idx)| {
            let ctx = &ctx;
            let message = &message;
            let env = &env;
            async move {
                let addrs: Vec<String> = idx
                    .iter()
                    .map(|&i| env.recipients[i].address.clone())
                    .collect();
                let r = ctx.connector.deliver(&dest, sender, &addrs, message).await;
                (idx, r)
            }
        });
        for (idx, attempt) in futures_join_all(attempts).await {
            for (i, r) in idx.into_iter().zip(attempt.results) {
                results.push((i, attempt.host.clone(), r));
            }
        }
    }

    let now = SystemTime::now();
    let expires = env.received_at + ctx.cfg.queue.max_age;
    let mut failed_now: Vec<String> = Vec::new();
    for (i, host, result) in results {
        let rcpt = &mut env.recipients[i];
        let (status, text) = match result {
            RcptResult::Delivered(t) => (
                RecipientStatus::Delivered {
                    at: now,
                    reply: t.clone(),
                },
                t,
            ),
            RcptResult::Failed(t) => {
                failed_now.push(rcpt.address.clone());
                (
                    RecipientStatus::Failed {
                        at: now,
                        reply: t.clone(),
                    },
                    t,
                )
            }
            RcptResult::Deferred(t) if now >= expires => {
                failed_now.push(rcpt.address.clone());
                let age = humantime::format_duration(ctx.cfg.queue.max_age);
                let reply = format!(
                    "451 4.4.7 gave up after {age} in the queue (queue.max_age); last error: {t}"
                );
                (RecipientStatus::Failed { at: now, reply }, t)
            }
            RcptResult::Deferred(t) => {
                let attempts = match &rcpt.status {
                    RecipientStatus::Deferred { attempts, .. } => attempts + 1,
                    _ => 1,
                };
                let next = backoff::next_attempt(
                    now,
                    expires,
                    &ctx.cfg.queue.retry_schedule,
                    attempts,
                    &mut rand::rng(),
                );
                let status = RecipientStatus::Deferred {
                    attempts,
                    last_reply: t.clone(),
                    next_attempt: next,
                };
                (status, t)
            }
        };
        tracing::info!(
            id = %env.id,
            to = %rcpt.address,
            relay = host.as_deref().unwrap_or("none"),
            status = status.name(),
            reply = %text,
            "relay: delivery attempt"
        );
        rcpt.status = status;
        let recipient = rcpt.address.clone();
        env.log_attempt(Attempt {
            at: now,
            recipient,
            host,
            reply: text,
        });
    }

    let warn_delay = ctx.cfg.queue.delay_warning.is_some_and(|after| {
        !env.delay_warned
            && now >= env.received_at + after
            && env
                .recipients
                .iter()
                .any(|r| matches!(r.status, RecipientStatus::Deferred { .. }))
    });

    let ctx2 = ctx.clone();
    let done = tokio::task::spawn_blocking(move || {
        finish(&ctx2, lock, env, failed_now, warn_delay, &message)
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(id = %id, error = %e, "relay: cannot record delivery results")
        }
        Err(e) => tracing::error!(id = %id, error = %e, "relay: record task failed"),
    }
}

/// Bounce first, then record: a crash in between sends a bounce twice, never zero times.
fn finish(
    ctx: &Context,
    lock: QueueLock,
    mut env: Envelope,
    failed_now: Vec<String>,
    warn_delay: bool,
    message: &[u8],
) -> io::Result<()> {
    if !failed_now.is_empty() {
        if let Err(e) = bounce::emit(
            &ctx.cfg,
            &ctx.queue,
            &env,
            &failed_now,
            DsnKind::Failed,
            message,
        ) {
            tracing::error!(id = %env.id, error = %e, "relay: cannot store the bounce; will retry");
            let retry = SystemTime::now() + BOUNCE_RETRY;
            for r in env
                .recipients
                .iter_mut()
                .filter(|r| failed_now.contains(&r.address))
            {
                if let RecipientStatus::Failed { reply, .. } = &r.status {
                    r.status = RecipientStatus::Deferred {
                        attempts: 1,
                        last_reply: reply.clone(),
                        next_attempt: retry,
                    };
                }
            }
        }
    }
    if warn_delay {
        let deferred: Vec<String> = env
            .recipients
            .iter()
            .filter(|r| matches!(r.status, RecipientStatus::Deferred { .. }))
            .map(|r| r.address.clone())
            .collect();
        // A delay notice for a bounce would go to the postmaster; not worth their time.
        if env.sender.is_some() {
            match bounce::emit(
                &ctx.cfg,
                &ctx.queue,
                &env,
                &deferred,
                DsnKind::Delayed,
                message,
            ) {
                Ok(()) => env.delay_warned = true,
                Err(e) => {
                    tracing::warn!(id = %env.id, error = %e, "relay: cannot store the delay notice")
                }
            }
        } else {
            env.delay_warned = true;
        }
    }
    if env.is_finished() {
        ctx.queue.remove(lock)
    } else {
        ctx.queue.update(&lock, &env)
    }
}

fn load(queue: &FsStore, id: &QueueId) -> io::Result<Option<(QueueLock, Envelope, Vec<u8>)>> {
    let lock = match queue.lock(id) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Loaded after locking: an envelope read before could be stale (a flush, a finished round).
    let env = queue.load(id)?;
    let message = queue.read_message(id)?;
    Ok(Some((lock, env, message)))
}

/// A recipient the scheduler should try now.
pub fn is_due(status: &RecipientStatus, now: SystemTime) -> bool {
    match status {
        RecipientStatus::Pending => true,
        RecipientStatus::Deferred { next_attempt, .. } => *next_attempt <= now,
        _ => false,
    }
}

/// When the entry next needs the scheduler, if ever (None: held or nothing left to do).
pub fn next_due(env: &Envelope) -> Option<SystemTime> {
    if env.held {
        return None;
    }
    env.recipients
        .iter()
        .filter_map(|r| match &r.status {
            RecipientStatus::Pending => Some(SystemTime::UNIX_EPOCH),
            RecipientStatus::Deferred { next_attempt, .. } => Some(*next_attempt),
            _ => None,
        })
        .min()
}

/// Polls every future concurrently and returns their outputs in order. The groups of one
/// message are few and borrow the message, so a local join beats spawning tasks.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (fut, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_and_next_due() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        assert!(is_due(&RecipientStatus::Pending, now));
        let deferred = |t| RecipientStatus::Deferred {
            attempts: 1,
            last_reply: String::new(),
            next_attempt: t,
        };
        assert!(is_due(&deferred(now), now));
        assert!(!is_due(&deferred(later), now));
        assert!(!is_due(
            &RecipientStatus::Failed {
                at: now,
                reply: String::new()
            },
            now
        ));
    }

    #[test]
    fn join_keeps_order() {
        let out = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(futures_join_all([1u64, 3, 2].map(|n| async move {
                tokio::time::sleep(Duration::from_millis(n * 5)).await;
                n
            })));
        assert_eq!(out, [1, 3, 2]);
    }
}
