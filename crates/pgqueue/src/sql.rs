//! The statements, in one place so the schema (schema.rs) and its use can be read together.
//! Each change to an entry is one statement (an implicit transaction: one round trip), with
//! its NOTIFY inside so that other nodes hear of it exactly when it commits.

/// $1 id, $2 received_at, $3 sender, $4 next_due, $5 held, $6 size, $7 accepted_by,
/// $8 envelope, $9 body, $10.. recipients (idx, address, domain, state, attempts,
/// next_attempt), $16 notify payload.
pub const INSERT: &str = "
WITH q AS (
    INSERT INTO tern_queue (id, received_at, sender, next_due, held, size, accepted_by, envelope)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING id
), b AS (
    INSERT INTO tern_bodies (id, body) SELECT id, $9 FROM q
), r AS (
    INSERT INTO tern_recipients (id, idx, address, domain, state, attempts, next_attempt)
    SELECT q.id, t.idx, t.address, t.domain, t.state, t.attempts, t.next_attempt
    FROM q, unnest($10::integer[], $11::text[], $12::text[], $13::text[], $14::integer[],
                   $15::timestamptz[]) AS t (idx, address, domain, state, attempts, next_attempt)
)
SELECT pg_notify('tern_queue', $16) FROM q";

/// $1 id, $2 envelope, $3 next_due, $4 held, $5 lease token, $6.. recipients, $12 payload.
/// No row back: the lease is not ours any more.
pub const UPDATE: &str = "
WITH q AS (
    UPDATE tern_queue SET envelope = $2, next_due = $3, held = $4
    WHERE id = $1 AND lease_token = $5
    RETURNING id
), r AS (
    INSERT INTO tern_recipients (id, idx, address, domain, state, attempts, next_attempt)
    SELECT q.id, t.idx, t.address, t.domain, t.state, t.attempts, t.next_attempt
    FROM q, unnest($6::integer[], $7::text[], $8::text[], $9::text[], $10::integer[],
                   $11::timestamptz[]) AS t (idx, address, domain, state, attempts, next_attempt)
    ON CONFLICT (id, idx) DO UPDATE SET address = excluded.address, domain = excluded.domain,
        state = excluded.state, attempts = excluded.attempts, next_attempt = excluded.next_attempt
)
SELECT pg_notify('tern_queue', $12) FROM q";

/// $1 id, $2 lease token, $3 payload. The body and recipients go with it (ON DELETE CASCADE).
pub const REMOVE: &str = "
WITH q AS (DELETE FROM tern_queue WHERE id = $1 AND lease_token = $2 RETURNING id)
SELECT pg_notify('tern_queue', $3) FROM q";

/// Whether an entry exists (told apart from one locked by another node).
pub const EXISTS: &str = "SELECT 1 FROM tern_queue WHERE id = $1";

/// $1 id, $2 holder, $3 lease seconds: the lease's token, or no row when someone holds it.
pub const LOCK: &str = "
UPDATE tern_queue
SET leased_by = $2, lease_token = nextval('tern_lease_token'),
    lease_until = now() + make_interval(secs => $3)
WHERE id = $1 AND (lease_until IS NULL OR lease_until < now())
RETURNING lease_token";

/// $1 how many, $2 holder, $3 lease seconds. Due entries nobody holds, earliest first, walked
/// in the order of the `tern_queue_due` index; SKIP LOCKED lets nodes claiming at the same
/// moment take different entries instead of queueing behind each other's row locks.
pub const CLAIM: &str = "
WITH c AS (
    SELECT id FROM tern_queue
    WHERE next_due <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_due
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE tern_queue q
SET leased_by = $2, lease_token = nextval('tern_lease_token'),
    lease_until = now() + make_interval(secs => $3)
FROM c WHERE q.id = c.id
RETURNING q.id, q.lease_token, q.envelope";

/// When a claim next finds something: the earliest due entry nobody holds, or the earliest
/// lease to run out (a node that died).
pub const NEXT_WAKE: &str = "
SELECT least(
    (SELECT min(next_due) FROM tern_queue
     WHERE next_due IS NOT NULL AND (lease_until IS NULL OR lease_until < now())),
    (SELECT min(lease_until) FROM tern_queue
     WHERE lease_until IS NOT NULL AND next_due IS NOT NULL))";

/// $1 id, $2 token, $3 payload: gives the entry back; a row comes back (and other nodes hear
/// of it) when it is due, so that whoever is idle takes it now.
pub const RELEASE: &str = "
WITH r AS (
    UPDATE tern_queue SET leased_by = NULL, lease_token = NULL, lease_until = NULL
    WHERE id = $1 AND lease_token = $2
    RETURNING id, next_due
)
SELECT pg_notify('tern_queue', $3) FROM r WHERE r.next_due <= now()";

/// $1 holder: every lease of a node that restarted.
pub const RELEASE_NODE: &str = "
UPDATE tern_queue SET leased_by = NULL, lease_token = NULL, lease_until = NULL
WHERE leased_by = $1";

/// $1 tokens, $2 lease seconds.
pub const RENEW_ENTRIES: &str = "
UPDATE tern_queue SET lease_until = now() + make_interval(secs => $2)
WHERE lease_token = ANY($1)";
pub const RENEW_SLOTS: &str = "
UPDATE tern_host_slots SET lease_until = now() + make_interval(secs => $2)
WHERE token = ANY($1)";

pub const LIST: &str = "SELECT id FROM tern_queue ORDER BY received_at, id";
pub const LOAD_ALL: &str = "SELECT id, envelope FROM tern_queue ORDER BY received_at, id";
pub const LOAD: &str = "SELECT envelope FROM tern_queue WHERE id = $1";

/// $1 id, $2 offset (1-based), $3 length: one piece of a body.
pub const BODY_PIECE: &str = "SELECT substring(body FROM $2 FOR $3) FROM tern_bodies WHERE id = $1";

/// $1 host, $2 holder, $3 limit, $4 lease seconds: one free slot of `host`, picked at random
/// so that nodes asking at once rarely pick the same one.
pub const TAKE_SLOT: &str = "
INSERT INTO tern_host_slots (host, slot, node, token, lease_until)
SELECT $1, s, $2, nextval('tern_lease_token'), now() + make_interval(secs => $4)
FROM generate_series(0, $3::integer - 1) AS s
WHERE NOT EXISTS (SELECT 1 FROM tern_host_slots h
                  WHERE h.host = $1 AND h.slot = s AND h.lease_until > now())
ORDER BY random()
LIMIT 1
ON CONFLICT (host, slot) DO UPDATE
    SET node = excluded.node, token = excluded.token, lease_until = excluded.lease_until
    WHERE tern_host_slots.lease_until <= now()
RETURNING slot, token";
pub const SLOTS_IN_USE: &str =
    "SELECT count(*) FROM tern_host_slots WHERE host = $1 AND lease_until > now()";
pub const FREE_SLOT: &str =
    "DELETE FROM tern_host_slots WHERE host = $1 AND slot = $2 AND token = $3";

/// $1 minute, $2 node, $3 clients, $4 counts: this node's counts, added.
pub const ADD_RATE: &str = "
INSERT INTO tern_rate (minute, client, node, count)
SELECT $1, c, $2, n FROM unnest($3::text[], $4::integer[]) AS t (c, n)
ON CONFLICT (minute, client, node) DO UPDATE SET count = tern_rate.count + excluded.count";
/// $1 minute, $2 node: what the others counted, busiest clients first.
pub const OTHERS_RATE: &str = "
SELECT client, sum(count)::bigint FROM tern_rate
WHERE minute = $1 AND node <> $2
GROUP BY client ORDER BY 2 DESC LIMIT 10000";
pub const EXPIRE_RATE: &str = "DELETE FROM tern_rate WHERE minute < $1";
