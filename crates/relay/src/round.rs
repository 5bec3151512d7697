//! One delivery round for one queued message, in three steps: **group** the due recipients by
//! destination, **attempt** every group (in parallel, each one SMTP transaction through the
//! connector), **record** each outcome (the bounce or delay notice first, then the envelope
//! updated or removed). The entry stays locked throughout, so `tern queue` and a second
//! scheduler never touch it mid-delivery.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tern_client::DsnRequest;
use tern_config::Config;
use tern_metrics as names;
use tern_proto::{Notify, Orcpt, RcptParams, Ret};
use tern_queue::{
    Attempt, DsnRet, Envelope, Notice, QueueId, QueueLock, QueueStore, RcptClass, RcptOutcome,
    Recipient, RecipientStatus, StoredReply, TlsOutcome,
};
use tracing::Instrument;

use crate::backoff;
use crate::connector::Connector;
use crate::connector::{Extras, SuccessNotice};
use crate::message::QueuedMessage;
use crate::notify::{DsnKind, Notifier};
use crate::route;
use crate::status;

/// How soon to retry when the bounce itself could not be stored (disk full, say): the failed
/// recipients go back to deferred so the failure is reported later instead of lost.
const BOUNCE_RETRY: Duration = Duration::from_secs(60);

/// How soon an entry is looked at again when it was busy (a `tern queue` command held its
/// lock) or could not be read or recorded.
const BUSY_RETRY: Duration = Duration::from_secs(2);
const TROUBLE_RETRY: Duration = Duration::from_secs(60);
/// After a store error that says the storage is away for now (a shared queue's database
/// restarting, [`is_transient`]).
const TRANSIENT_RETRY: Duration = Duration::from_secs(2);

/// A connection-level error: the store's database unreachable or restarting.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut
    )
}

pub struct Context {
    pub cfg: Arc<Config>,
    pub queue: Arc<dyn QueueStore>,
    pub connector: Connector,
    pub notifier: Notifier,
    /// Recipient domains as bounded metric labels (`[admin] metrics_domains`).
    pub domains: names::DomainClasses,
}

/// What the scheduler should do with the entry after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Gone (every recipient final, or removed meanwhile), or held: nothing to schedule.
    Nothing,
    /// Look at it again at this time.
    At(SystemTime),
}

impl After {
    fn of(env: &Envelope) -> After {
        env.next_due().map_or(After::Nothing, After::At)
    }

    fn soon(d: Duration) -> After {
        After::At(SystemTime::now() + d)
    }
}

/// Runs one round for `id`; every outcome is in the queue or the log. Returns when the entry
/// wants the next one.
pub async fn run(ctx: Arc<Context>, id: QueueId) -> After {
    // One span per round: every line it logs carries the queue id.
    let span = tracing::info_span!("delivery", queue_id = %id);
    run_round(ctx, id).instrument(span).await
}

async fn run_round(ctx: Arc<Context>, id: QueueId) -> After {
    let queue = ctx.queue.clone();
    let load_id = id.clone();
    let head_max = head_max(&ctx.cfg);
    let loaded = tokio::task::spawn_blocking(move || load(queue, &load_id, head_max)).await;
    let (lock, env, message) = match loaded {
        Ok(Ok(Loaded::Entry(lock, env, message))) => (lock, *env, message),
        Ok(Ok(Loaded::Busy)) => return After::soon(BUSY_RETRY),
        Ok(Ok(Loaded::Gone)) => return After::Nothing,
        Ok(Err(e)) => {
            tracing::warn!(id = %id, error = %e, "relay: cannot load queue entry");
            return After::soon(TROUBLE_RETRY);
        }
        Err(e) => {
            tracing::error!(id = %id, error = %e, "relay: load task failed");
            return After::soon(TROUBLE_RETRY);
        }
    };
    deliver(ctx, id, lock, env, message).await
}

/// A round for an entry already locked with its envelope (claimed from a shared store by
/// [`crate::claimer`]): the message is scanned, then delivered as by [`run`].
pub async fn run_claimed(ctx: Arc<Context>, lock: QueueLock, env: Envelope) -> After {
    let id = env.id.clone();
    let span = tracing::info_span!("delivery", queue_id = %id);
    async move {
        let queue = ctx.queue.clone();
        let head_max = head_max(&ctx.cfg);
        let (scan_env, scan_id) = (env.clone(), id.clone());
        let scanned =
            tokio::task::spawn_blocking(move || QueuedMessage::scan(queue, &scan_env, head_max))
                .await;
        let (trouble, hold) = match scanned {
            Ok(Ok(message)) => return deliver(ctx, id, lock, env, message).await,
            // The database away for a moment (a restart): soon worth another try.
            Ok(Err(e)) if is_transient(&e) => (e.to_string(), TRANSIENT_RETRY),
            Ok(Err(e)) => (e.to_string(), TROUBLE_RETRY),
            Err(e) => (e.to_string(), TROUBLE_RETRY),
        };
        tracing::warn!(id = %scan_id, error = %trouble, retry_in_s = hold.as_secs(),
            "relay: cannot read queued message");
        // Still due, so released now it would be claimed again at once: the lease is kept
        // (and renewed) for a while, by no round, so no node retries it before then.
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            drop(lock);
        });
        After::soon(hold)
    }
    .instrument(span)
    .await
}

/// Groups, attempts and records one round for the locked entry.
async fn deliver(
    ctx: Arc<Context>,
    id: QueueId,
    lock: QueueLock,
    mut env: Envelope,
    message: QueuedMessage,
) -> After {
    if env.held {
        return After::Nothing;
    }
    let now = SystemTime::now();
    let due: Vec<usize> = env
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status.is_due(now))
        .map(|(i, _)| i)
        .collect();
    if due.is_empty() {
        return After::of(&env);
    }

    // (recipient index, host talked to, TLS outcome of the session, outcome, who owes a
    // NOTIFY=SUCCESS notification)
    type RoundRow = (
        usize,
        Option<String>,
        Option<TlsOutcome>,
        RcptOutcome,
        SuccessNotice,
    );
    let mut results: Vec<RoundRow> = Vec::with_capacity(due.len());
    let received = tern_proto::message::HeaderSection::find(&message.head).received_count();
    if received > ctx.cfg.queue.max_received_headers {
        // RFC 5321 6.3: a message that has passed this many hosts is looping.
        let reply = status::received_loop(received, ctx.cfg.queue.max_received_headers);
        results.extend(due.iter().map(|&i| {
            (
                i,
                None,
                None,
                RcptOutcome::failed(reply.clone()),
                SuccessNotice::Relayed,
            )
        }));
    } else {
        let mut groups: BTreeMap<String, (route::Destination, Vec<usize>)> = BTreeMap::new();
        for &i in &due {
            let address = &env.recipients[i].address;
            let domain = address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            let mut dest = route::destination(&ctx.cfg, &domain);
            if env.requiretls {
                dest = dest.requiring_tls();
            }
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
                // One span per attempt: the destination, and the host once connected.
                let domain = addrs
                    .first()
                    .and_then(|a| a.rsplit_once('@'))
                    .map_or("", |(_, d)| d);
                let span = tracing::info_span!("attempt", domain = %domain,
                    host = tracing::field::Empty);
                let extras = Extras {
                    dsn: DsnRequest {
                        ret: env.dsn.ret.map(|r| match r {
                            DsnRet::Full => Ret::Full,
                            DsnRet::Hdrs => Ret::Hdrs,
                        }),
                        envid: env.dsn.envid.clone(),
                        rcpts: idx
                            .iter()
                            .map(|&i| rcpt_params(&env.recipients[i]))
                            .collect(),
                    },
                    requiretls: env.requiretls,
                };
                let r = ctx
                    .connector
                    .deliver(&dest, sender, &addrs, message, &extras)
                    .instrument(span.clone())
                    .await;
                if let Some(h) = &r.host {
                    span.record("host", h.as_str());
                }
                (idx, r)
            }
        });
        for (idx, attempt) in futures_join_all(attempts).await {
            for (i, r) in idx.into_iter().zip(attempt.results) {
                results.push((
                    i,
                    attempt.host.clone(),
                    attempt.tls.clone(),
                    r,
                    attempt.success_notice,
                ));
            }
        }
    }

    let now = SystemTime::now();
    let expires = env.received_at + ctx.cfg.queue.max_age;
    // Recipients that asked for NOTIFY=SUCCESS and succeeded where tern owes the notice:
    // "relayed" to a hop without DSN (RFC 3461 5.2.2), "delivered" to the mailbox server
    // (LMTP, RFC 3461 6.2); a hop with DSN does it (or not) itself.
    let mut relayed_now: Vec<String> = Vec::new();
    let mut delivered_now: Vec<String> = Vec::new();
    // (address, reply) of the recipients that failed in this round: marked failed by the
    // notifier together with their bounce.
    let mut failed_now: Vec<(String, StoredReply)> = Vec::new();
    for (i, host, tls, outcome, notice) in results {
        let rcpt = &mut env.recipients[i];
        let reply = outcome.reply;
        let status = match outcome.class {
            RcptClass::Delivered => {
                if rcpt.dsn.wants(Notice::Success) {
                    match notice {
                        SuccessNotice::Relayed => relayed_now.push(rcpt.address.clone()),
                        SuccessNotice::Delivered => delivered_now.push(rcpt.address.clone()),
                        SuccessNotice::NextHop => {}
                    }
                }
                RecipientStatus::Delivered {
                    at: now,
                    reply: reply.clone(),
                }
            }
            RcptClass::Failed => {
                failed_now.push((rcpt.address.clone(), reply.clone()));
                RecipientStatus::Failed {
                    at: now,
                    reply: reply.clone(),
                }
            }
            RcptClass::Deferred if now >= expires => {
                let gave_up = status::gave_up(ctx.cfg.queue.max_age, &reply);
                failed_now.push((rcpt.address.clone(), gave_up.clone()));
                RecipientStatus::Failed {
                    at: now,
                    reply: gave_up,
                }
            }
            RcptClass::Deferred => {
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
                RecipientStatus::Deferred {
                    attempts,
                    last_reply: reply.clone(),
                    next_attempt: next,
                }
            }
        };
        let domain = rcpt.address.rsplit_once('@').map_or("", |(_, d)| d);
        metrics::counter!(names::DELIVERY_ATTEMPTS, "outcome" => status.name(),
            "domain_class" => ctx.domains.class(domain))
        .increment(1);
        if status.is_final() {
            metrics::histogram!(names::DELIVERY_LATENCY).record(names::secs(
                now.duration_since(env.received_at).unwrap_or_default(),
            ));
        }
        // The attempt's own span (as around the connector's lines while it ran), so this
        // line carries the destination and host like every other line of the attempt.
        let _attempt = tracing::info_span!("attempt", domain = %domain,
            host = host.as_deref().unwrap_or("none"))
        .entered();
        tracing::info!(
            id = %env.id,
            to = %rcpt.address,
            relay = host.as_deref().unwrap_or("none"),
            tls = %tls.as_ref().map_or_else(|| "none".to_string(), ToString::to_string),
            status = status.name(),
            reply = %reply,
            "relay: delivery attempt"
        );
        // A failure is recorded by the notifier, together with its bounce.
        if !matches!(status, RecipientStatus::Failed { .. }) {
            rcpt.status = status;
        }
        let recipient = rcpt.address.clone();
        env.log_attempt(Attempt {
            at: now,
            recipient,
            host,
            reply,
            tls,
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
        record(
            &ctx2,
            lock,
            env,
            &failed_now,
            &[
                (DsnKind::Relayed, relayed_now),
                (DsnKind::Delivered, delivered_now),
            ],
            warn_delay,
            &message.head,
        )
    })
    .await;
    match done {
        Ok(Ok(after)) => after,
        Ok(Err(e)) => {
            tracing::error!(id = %id, error = %e, "relay: cannot record delivery results");
            After::soon(TROUBLE_RETRY)
        }
        Err(e) => {
            tracing::error!(id = %id, error = %e, "relay: record task failed");
            After::soon(TROUBLE_RETRY)
        }
    }
}

/// The record step: bounce first (durable), then the envelope, so a crash in between sends a
/// bounce twice, never zero times.
fn record(
    ctx: &Context,
    lock: QueueLock,
    mut env: Envelope,
    failed_now: &[(String, StoredReply)],
    succeeded: &[(DsnKind, Vec<String>)],
    warn_delay: bool,
    message: &[u8],
) -> io::Result<After> {
    for (kind, recipients) in succeeded.iter().filter(|(_, r)| !r.is_empty()) {
        // Like a bounce, before the entry is updated: a crash in between sends it twice.
        // The mail itself is delivered, so a notification that cannot be stored is logged,
        // not retried (the delivery would be repeated with it).
        match ctx.notifier.emit(&env, recipients, *kind, message) {
            Ok(Some(dsn_id)) => env.events.push(tern_queue::Event::Notified {
                at: SystemTime::now(),
                kind: tern_queue::NoticeKind::Success,
                recipients: recipients.clone(),
                dsn_id: dsn_id.to_string(),
            }),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(id = %env.id, error = %e, "relay: cannot store the success notification (NOTIFY=SUCCESS)")
            }
        }
    }
    if let Err(e) = ctx.notifier.fail(&mut env, failed_now, message) {
        tracing::error!(id = %env.id, error = %e, "relay: cannot store the bounce; will retry");
        let retry = SystemTime::now() + BOUNCE_RETRY;
        for (address, reply) in failed_now {
            if let Some(r) = env.recipients.iter_mut().find(|r| r.address == *address) {
                // The status before this round (the failure was never applied): one more attempt.
                let attempts = match &r.status {
                    RecipientStatus::Deferred { attempts, .. } => attempts + 1,
                    _ => 1,
                };
                r.status = RecipientStatus::Deferred {
                    attempts,
                    last_reply: reply.clone(),
                    next_attempt: retry,
                };
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
            match ctx
                .notifier
                .emit(&env, &deferred, DsnKind::Delayed, message)
            {
                Ok(sent) => {
                    env.delay_warned = true;
                    if let Some(dsn_id) = sent {
                        env.events.push(tern_queue::Event::Notified {
                            at: SystemTime::now(),
                            kind: tern_queue::NoticeKind::Delay,
                            recipients: deferred.clone(),
                            dsn_id: dsn_id.to_string(),
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(id = %env.id, error = %e, "relay: cannot store the delay notice")
                }
            }
        } else {
            env.delay_warned = true;
        }
    }
    if env.is_finished() {
        ctx.queue.remove(lock)?;
        Ok(After::Nothing)
    } else {
        ctx.queue.update(&lock, &env)?;
        Ok(After::of(&env))
    }
}

/// The RCPT parameters a recipient is passed on with (RFC 3461 5.2): its NOTIFY, and its
/// ORCPT, or the address the client gave when an alias rewrote it (RFC 3461 4.2: the
/// original recipient is worth keeping once the address changed).
fn rcpt_params(r: &Recipient) -> RcptParams {
    let orcpt = match (&r.dsn.orcpt, &r.original) {
        (Some(o), _) => o.split_once(';').map(|(t, a)| Orcpt {
            addr_type: t.to_string(),
            address: a.to_string(),
        }),
        (None, Some(original)) => Some(Orcpt {
            addr_type: if original.is_ascii() {
                "rfc822"
            } else {
                "utf-8"
            }
            .to_string(),
            address: original.clone(),
        }),
        (None, None) => None,
    };
    RcptParams {
        notify: r.dsn.notify.map(|n| Notify {
            success: n.success,
            failure: n.failure,
            delay: n.delay,
        }),
        orcpt,
    }
}

enum Loaded {
    Entry(QueueLock, Box<Envelope>, QueuedMessage),
    /// Locked by someone else (a `tern queue` command).
    Busy,
    /// Removed meanwhile.
    Gone,
}

/// How much of the message a round keeps: enough for any header section the server accepts
/// (the loop check and the bounce read it), never the body of a large message.
fn head_max(cfg: &Config) -> usize {
    usize::try_from(cfg.limits.max_header_size)
        .unwrap_or(usize::MAX)
        .saturating_add(4096)
}

fn load(queue: Arc<dyn QueueStore>, id: &QueueId, head_max: usize) -> io::Result<Loaded> {
    let lock = match queue.lock(id) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(Loaded::Busy),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Gone),
        Err(e) => return Err(e),
    };
    // Loaded after locking: an envelope read before could be stale (a flush, a finished round).
    let env = queue.load(id)?;
    let message = QueuedMessage::scan(queue.clone(), &env, head_max)?;
    Ok(Loaded::Entry(lock, Box::new(env), message))
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
        let is_due = |s: &RecipientStatus, t| s.is_due(t);
        assert!(is_due(&RecipientStatus::Pending, now));
        let deferred = |t| RecipientStatus::Deferred {
            attempts: 1,
            last_reply: StoredReply::from_legacy("451 4.0.0 x"),
            next_attempt: t,
        };
        assert!(is_due(&deferred(now), now));
        assert!(!is_due(&deferred(later), now));
        assert!(!is_due(
            &RecipientStatus::Failed {
                at: now,
                reply: StoredReply::from_legacy("550 5.0.0 x")
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
