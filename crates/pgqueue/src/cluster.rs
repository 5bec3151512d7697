//! The shared side of the store ([`Cluster`]): claiming due entries with leases, and the
//! limits counted across nodes (connection slots per destination host, messages per client
//! per minute).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_postgres::types::{Json, ToSql};

use tern_queue::{Cluster, Envelope, HostSlot, QueueLock};

use crate::lease::{Lease, Slot};
use crate::{error, parse_id, sql, Inner};

/// How often a slot request is retried when two nodes picked the same free slot at once.
const SLOT_TRIES: usize = 3;

pub(crate) struct Shared(pub(crate) Arc<Inner>);

impl Cluster for Shared {
    fn node_id(&self) -> &str {
        &self.0.node_id
    }

    fn claim_due(&self, max: usize) -> io::Result<Vec<(QueueLock, Envelope)>> {
        let inner = &self.0;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        const WHAT: &str = "claiming due entries";
        let params: [&(dyn ToSql + Sync); 3] = [&limit, &inner.holder, &inner.lease_secs()];
        let rows = inner.run(WHAT, inner.rows(WHAT, sql::CLAIM, &params))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = parse_id(row.get(0))?;
            let token: i64 = row.get(1);
            // Registered at once, so a bad envelope below still releases its lease on drop.
            let lock = Lease::held(inner, id, token);
            let Json(env): Json<Envelope> = row
                .try_get(2)
                .map_err(|e| error::corrupt("reading an envelope", e))?;
            out.push((lock, env));
        }
        Ok(out)
    }

    fn next_wake(&self) -> io::Result<Option<SystemTime>> {
        let inner = &self.0;
        const WHAT: &str = "reading the next due time";
        let row = inner.run(WHAT, inner.row(WHAT, sql::NEXT_WAKE, &[]))?;
        Ok(row.and_then(|r| r.get::<_, Option<SystemTime>>(0)))
    }

    fn try_host_slot(&self, host: &str, limit: usize) -> io::Result<Option<HostSlot>> {
        let inner = &self.0;
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let taken = inner.run("taking a host slot", async {
            let client = inner.client().await?;
            let take = client
                .prepare_cached(sql::TAKE_SLOT)
                .await
                .map_err(|e| error::db("taking a host slot", e))?;
            let count = client
                .prepare_cached(sql::SLOTS_IN_USE)
                .await
                .map_err(|e| error::db("counting host slots", e))?;
            for _ in 0..SLOT_TRIES {
                let row = client
                    .query_opt(&take, &[&host, &inner.holder, &limit, &inner.lease_secs()])
                    .await
                    .map_err(|e| error::db("taking a host slot", e))?;
                if let Some(row) = row {
                    return Ok(Some((row.get::<_, i32>(0), row.get::<_, i64>(1))));
                }
                let in_use: i64 = client
                    .query_one(&count, &[&host])
                    .await
                    .map_err(|e| error::db("counting host slots", e))?
                    .get(0);
                if in_use >= i64::from(limit) {
                    return Ok(None);
                }
            }
            Ok(None)
        })?;
        Ok(taken.map(|(slot, token)| {
            let guard = Slot {
                inner: inner.clone(),
                host: host.to_string(),
                slot,
                token,
            };
            guard.register();
            HostSlot::new(guard)
        }))
    }

    fn exchange_rate_counts(
        &self,
        minute: u64,
        ours: &HashMap<String, u32>,
    ) -> io::Result<HashMap<String, u32>> {
        let inner = &self.0;
        let minute = i64::try_from(minute).unwrap_or(i64::MAX);
        let (clients, counts): (Vec<&str>, Vec<i32>) = ours
            .iter()
            .map(|(c, n)| (c.as_str(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .unzip();
        let rows = inner.run("sharing rate counts", async {
            if !clients.is_empty() {
                let params: [&(dyn ToSql + Sync); 4] = [&minute, &inner.holder, &clients, &counts];
                inner
                    .rows("sharing rate counts", sql::ADD_RATE, &params)
                    .await?;
            }
            // Minutes before the last two are of no use to anyone.
            inner
                .rows("expiring rate counts", sql::EXPIRE_RATE, &[&(minute - 120)])
                .await?;
            inner
                .rows(
                    "reading rate counts",
                    sql::OTHERS_RATE,
                    &[&minute, &inner.holder],
                )
                .await
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let n: i64 = r.get(1);
                (r.get::<_, String>(0), u32::try_from(n).unwrap_or(u32::MAX))
            })
            .collect())
    }
}
