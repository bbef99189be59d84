//! Every query spool sends, as a named constant, so that the database surface
//! can be read in one place.

/// Serializes schema migrations across spools starting at once ("spool" in ASCII).
pub const MIGRATION_LOCK_KEY: i64 = 0x73_70_6f_6f_6c;

pub const CREATE_MIGRATIONS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS spool_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

pub const APPLIED_MIGRATIONS: &str = "SELECT version FROM spool_schema_migrations";

pub const RECORD_MIGRATION: &str =
    "INSERT INTO spool_schema_migrations (version, name) VALUES ($1, $2)";

/// Stores one batch of writes in a single statement (one round trip).
///
/// `input` is the batch, one array element per write. An Idempotency-Key is
/// claimed first; a write whose key is already held (and not past retention)
/// is not stored, and the final SELECT reports the holder so that the caller
/// can answer a replay or a conflict. A key claimed by a transaction that
/// committed after this statement's snapshot yields neither: the caller
/// tries that write again in a later batch.
pub const INSERT_BATCH: &str = "
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::bytea[], $8::text[], $9::bytea[], $10::text[], $11::text[], $12::text[])
        AS i (id, route, method, path, query, headers, body, idempotency_key,
              request_hash, ordering_key, traceparent, tracestate)
),
claimed AS (
    INSERT INTO spool_idempotency AS k (route, key, message_id, request_hash)
    SELECT route, idempotency_key, id, request_hash FROM input
    WHERE idempotency_key IS NOT NULL
    ON CONFLICT (route, key) DO UPDATE
        SET message_id = excluded.message_id,
            request_hash = excluded.request_hash,
            created_at = now()
        WHERE k.created_at < now() - make_interval(secs => $15)
    RETURNING message_id
),
accepted AS (
    SELECT * FROM input
    WHERE idempotency_key IS NULL OR id IN (SELECT message_id FROM claimed)
),
messages AS (
    INSERT INTO spool_message (id, format_version, route, method, path, query, headers, body,
                               idempotency_key, ordering_key, traceparent, tracestate)
    SELECT id, $16, route, method, path, query, headers::jsonb, body,
           idempotency_key, ordering_key, traceparent, tracestate
    FROM accepted
    RETURNING id, route, seq, ordering_key
),
deliveries AS (
    INSERT INTO spool_delivery (message_id, route, target, ordering_key, seq)
    SELECT m.id, m.route, d.target, m.ordering_key, m.seq
    FROM unnest($13::uuid[], $14::text[]) AS d (message_id, target)
    JOIN messages m ON m.id = d.message_id
)
SELECT i.id,
       a.id IS NOT NULL AS accepted,
       k.message_id AS holder_id,
       k.request_hash = i.request_hash AS same_request
FROM input i
LEFT JOIN accepted a ON a.id = i.id
LEFT JOIN spool_idempotency k
       ON a.id IS NULL AND k.route = i.route AND k.key = i.idempotency_key";

/// Proves the outbox is writable: a real write, committed.
pub const HEARTBEAT: &str = "
INSERT INTO spool_heartbeat (owner, beat_at) VALUES ($1, now())
ON CONFLICT (owner) DO UPDATE SET beat_at = excluded.beat_at";

/// Claims up to $3 due deliveries of one target for owner $4, for $5
/// seconds, in one statement: `FOR UPDATE SKIP LOCKED` so that spools
/// sharing the database never claim the same row, and the claimed rows
/// become 'leased', which takes them out of the due index. A delivery with
/// an ordering key is claimable only while no earlier delivery of that key
/// and target is pending or leased: one at a time, in acceptance order, and
/// a failing head holds back its own key only. Attempts are counted when
/// their outcome is recorded (`attempts` here is how many went before), so
/// deliveries claimed ahead of sending and given back unsent are not
/// charged one; an attempt cut short by a crash is not counted either.
/// `$after` narrows the scan to rows past a position in the claim order.
macro_rules! claim_due {
    ($after:literal) => {
        concat!(
            "
WITH due AS (
    SELECT d.ctid
    FROM spool_delivery d
    WHERE d.route = $1 AND d.target = $2 AND d.state = 'pending'
      AND d.next_attempt_at <= now()",
            $after,
            "
      AND (d.ordering_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM spool_delivery h
            WHERE h.route = d.route AND h.target = d.target
              AND h.ordering_key = d.ordering_key
              AND h.state IN ('pending', 'leased') AND h.seq < d.seq))
    ORDER BY d.next_attempt_at, d.seq
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE spool_delivery d
    SET state = 'leased',
        lease_owner = $4,
        lease_expires_at = now() + make_interval(secs => $5)
    -- By row address: a plan that does not depend on the table's size.
    WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM due))
    RETURNING d.message_id, d.attempts, d.next_attempt_at, d.seq,
              d.ordering_key IS NOT NULL AS keyed
)
SELECT c.message_id, c.attempts, m.method, m.path, m.query, m.headers::text, m.body,
       m.idempotency_key, m.traceparent, m.tracestate,
       EXTRACT(EPOCH FROM (now() - m.accepted_at))::float8 AS age_s,
       c.next_attempt_at, c.seq, c.keyed
FROM claimed c
JOIN spool_message m ON m.id = c.message_id"
        )
    };
}

/// The claim from the head of the target's due deliveries.
pub const CLAIM_DUE: &str = claim_due!("");

/// The claim after position ($6, $7): the scan starts there instead of at
/// the head, where the index entries of delivered rows linger until
/// vacuum and every claim would walk past them.
pub const CLAIM_DUE_AFTER: &str = claim_due!(
    "
      AND (d.next_attempt_at, d.seq) > ($6, $7)"
);

/// Puts deliveries whose lease ran out (their spool died or lost the
/// database mid-attempt) back to pending, a bounded number at a time, and
/// names the routes touched so that their dispatchers wake.
pub const SWEEP_EXPIRED_LEASES: &str = "
UPDATE spool_delivery d
SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL
WHERE d.ctid = ANY (ARRAY(
    SELECT ctid FROM spool_delivery
    WHERE state = 'leased' AND lease_expires_at <= now()
    LIMIT $1
    FOR UPDATE SKIP LOCKED))
  AND d.state = 'leased'
RETURNING d.route";

/// Locks the messages whose deliveries are being completed, in id order,
/// so that two targets finishing one message at once cannot both miss
/// that it has no delivery left.
pub const LOCK_MESSAGES: &str =
    "SELECT id FROM spool_message WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Removes delivered rows still leased by owner $3.
pub const DELETE_DELIVERED: &str = "
DELETE FROM spool_delivery d
USING unnest($1::uuid[], $2::text[]) AS r (message_id, target)
WHERE d.message_id = r.message_id AND d.target = r.target AND d.lease_owner = $3";

/// Removes delivered rows still leased by owner $3, of targets that are
/// their route's only one, and their messages in the same statement. The
/// check for another delivery (a route that had more targets when the
/// message was accepted) sees the rows as they were before this statement,
/// so it looks for other targets only.
pub const DELETE_DELIVERED_SOLE: &str = "
WITH gone AS (
    DELETE FROM spool_delivery d
    USING unnest($1::uuid[], $2::text[]) AS r (message_id, target)
    WHERE d.message_id = r.message_id AND d.target = r.target AND d.lease_owner = $3
    RETURNING d.message_id, d.target
)
DELETE FROM spool_message m
USING gone
WHERE m.id = gone.message_id
  AND NOT EXISTS (SELECT 1 FROM spool_delivery o
                  WHERE o.message_id = m.id AND o.target <> gone.target)";

/// Removes messages none of whose deliveries is left (delivered or deleted).
pub const DELETE_FINISHED_MESSAGES: &str = "
DELETE FROM spool_message m
WHERE m.id = ANY($1)
  AND NOT EXISTS (SELECT 1 FROM spool_delivery d WHERE d.message_id = m.id)";

/// Frees the leases of claimed deliveries that were never sent (shutdown,
/// an open breaker, a paused target), so that any spool may take them now
/// rather than when the lease runs out.
pub const RELEASE_LEASES: &str = "
UPDATE spool_delivery d
SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::uuid[], $2::text[]) AS r (message_id, target)
WHERE d.message_id = r.message_id AND d.target = r.target AND d.lease_owner = $3";

/// Schedules the next attempt `delay_s` from now, counts the attempt made
/// and frees the lease.
pub const SCHEDULE_RETRY: &str = "
UPDATE spool_delivery d
SET state = 'pending', next_attempt_at = now() + make_interval(secs => r.delay_s),
    attempts = r.attempt, last_status = r.status, last_error = r.error,
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::float8[], $5::int2[], $6::text[])
    AS r (message_id, target, attempt, delay_s, status, error)
WHERE d.message_id = r.message_id AND d.target = r.target AND d.lease_owner = $7";

/// Turns deliveries into dead letters, keeping the attempt count, the last
/// status and error.
pub const MARK_DEAD: &str = "
UPDATE spool_delivery d
SET state = 'dead', dead_at = now(),
    attempts = r.attempt, last_status = r.status, last_error = r.error,
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int2[], $5::text[])
    AS r (message_id, target, attempt, status, error)
WHERE d.message_id = r.message_id AND d.target = r.target AND d.lease_owner = $6";

/// Dead letters, newest first, filtered by route and target when given,
/// paged by (dead_at, message_id, target) of the last row seen.
pub const LIST_DEAD: &str = "
SELECT d.message_id, d.route, d.target, d.attempts, d.last_status, d.last_error,
       d.dead_at, m.method, m.path, m.query, m.accepted_at
FROM spool_delivery d
JOIN spool_message m ON m.id = d.message_id
WHERE d.state = 'dead'
  AND ($1::text IS NULL OR d.route = $1)
  AND ($2::text IS NULL OR d.target = $2)
  AND ($3::timestamptz IS NULL OR (d.dead_at, d.message_id, d.target) < ($3, $4, $5))
ORDER BY d.dead_at DESC, d.message_id DESC, d.target DESC
LIMIT $6";

/// Puts dead letters back to pending with their attempts reset: all of one
/// message ($1) or all matching route/target when $1 is null.
pub const REPLAY_DEAD: &str = "
UPDATE spool_delivery d
SET state = 'pending', attempts = 0, next_attempt_at = now(), dead_at = NULL,
    lease_owner = NULL, lease_expires_at = NULL
WHERE d.state = 'dead'
  AND ($1::uuid IS NULL OR d.message_id = $1)
  AND ($2::text IS NULL OR d.route = $2)
  AND ($3::text IS NULL OR d.target = $3)
RETURNING d.route";

/// Deletes the dead letters of one message (one target when $2 is set).
pub const DELETE_DEAD: &str = "
DELETE FROM spool_delivery d
WHERE d.state = 'dead' AND d.message_id = $1 AND ($2::text IS NULL OR d.target = $2)";

/// The backlog of every (route, target) with rows: deliveries not yet
/// delivered nor dead, the age of the oldest, and dead letters. One pass
/// over the table, so it is read every few seconds, not per scrape.
pub const BACKLOG_BY_TARGET: &str = "
SELECT route, target,
       count(*) FILTER (WHERE state <> 'dead') AS backlog,
       coalesce(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE state <> 'dead')),
                0)::float8 AS oldest_s,
       count(*) FILTER (WHERE state = 'dead') AS dead
FROM spool_delivery
GROUP BY route, target";

/// Every kept variant of one URL of a route, oldest first.
pub const LOAD_READ_CACHE: &str = "
SELECT variant, status, headers::text, body, stored_at, upstream_age
FROM spool_read_cache WHERE route = $1 AND key = $2
ORDER BY stored_at";

/// Keeps a read answer, unless a newer one of that variant is kept already.
pub const UPSERT_READ_CACHE: &str = "
INSERT INTO spool_read_cache (route, key, variant, status, headers, body, stored_at, upstream_age)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8)
ON CONFLICT (route, key, variant) DO UPDATE
SET status = excluded.status, headers = excluded.headers, body = excluded.body,
    stored_at = excluded.stored_at, upstream_age = excluded.upstream_age
WHERE spool_read_cache.stored_at < excluded.stored_at";

/// Wakes the dispatchers of routes $2 in every spool listening on $1.
pub const NOTIFY_ROUTES: &str = "SELECT pg_notify($1, r) FROM unnest($2::text[]) AS r";

/// Forgets Idempotency-Keys past their retention, a bounded number at a time.
pub const EXPIRE_IDEMPOTENCY_KEYS: &str = "
DELETE FROM spool_idempotency
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM spool_idempotency
    WHERE created_at < now() - make_interval(secs => $1)
    LIMIT $2))";

/// Forgets kept read answers older than any route may serve them.
pub const EXPIRE_READ_CACHE: &str = "
DELETE FROM spool_read_cache
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM spool_read_cache
    WHERE stored_at < now() - make_interval(secs => $1)
    LIMIT $2))";
