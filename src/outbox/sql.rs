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
       k.request_hash = i.request_hash AS same_request,
       pg_current_xact_id()::text AS xact
FROM input i
LEFT JOIN accepted a ON a.id = i.id
LEFT JOIN spool_idempotency k
       ON a.id IS NULL AND k.route = i.route AND k.key = i.idempotency_key";

/// Names the server's run since its last start or crash recovery: the
/// postmaster's start, and the checkpointer's, which is started again by a
/// crash recovery that keeps the postmaster. `unseen` where the role may
/// not see the checkpointer: then every lookup counts as after a restart.
/// Reading pg_stat_activity costs about 0.4 ms, so this is read once and
/// again only after a connection failed, never per batch.
macro_rules! server_incarnation {
    () => {
        "SELECT pg_postmaster_start_time()::text || ' ' || coalesce(
            (SELECT backend_start::text FROM pg_stat_activity
             WHERE backend_type = 'checkpointer' LIMIT 1), 'unseen')"
    };
}

pub const SERVER_INCARNATION: &str = server_incarnation!();

/// What became of transaction $1 (a `pg_current_xact_id()` as text):
/// committed, aborted, in progress, or NULL once it is too old to say.
/// Postgres keeps this for every recent transaction, so a client whose
/// COMMIT went unanswered can find out (PostgreSQL 13 and newer). With it,
/// the server's incarnation and how many of the messages $2 exist: after a
/// crash a transaction id can be handed out again (one whose records never
/// reached the disk), so "committed" then proves nothing by itself.
pub const TRANSACTION_STATUS: &str = concat!(
    "SELECT pg_xact_status($1::text::xid8), (",
    server_incarnation!(),
    "), (SELECT count(*) FROM spool_message WHERE id = ANY($2::uuid[]))"
);

/// The lock an insert of a write takes, refused at once if another session
/// holds a conflicting one.
pub const LOCK_FOR_WRITES: &str =
    "LOCK TABLE spool_message, spool_delivery, spool_idempotency IN ROW EXCLUSIVE MODE NOWAIT";

/// Proves the outbox is writable: a real write, committed.
pub const HEARTBEAT: &str = "
INSERT INTO spool_heartbeat (owner, beat_at) VALUES ($1, now())
ON CONFLICT (owner) DO UPDATE SET beat_at = excluded.beat_at";

/// The due deliveries of one target in the owned shards $4 (of $3), in
/// order (due time, then acceptance), at most $5: a plain read, no row lock
/// and no write, since only the shard's owner dispatches it. A keyed
/// delivery comes with its key's previous queued delivery (`prev_id`, one
/// backward index probe), so that the owner sends it only once what goes
/// before it is done. Attempts are counted when their outcome is recorded
/// (`attempts` here is how many went before).
macro_rules! read_due {
    ($after:literal) => {
        concat!(
            "
SELECT d.message_id, d.attempts, m.method, m.path, m.query, m.headers::text, m.body,
       m.idempotency_key, m.traceparent, m.tracestate,
       EXTRACT(EPOCH FROM (now() - m.accepted_at))::float8 AS age_s,
       d.next_attempt_at, d.seq, d.ordering_key, d.shard_hash % $3 AS shard, p.message_id
FROM spool_delivery d
JOIN spool_message m ON m.id = d.message_id
LEFT JOIN LATERAL (
    -- For keyed rows only: a one-time filter, so an unkeyed row costs no
    -- index probe.
    SELECT h.message_id FROM spool_delivery h
    WHERE d.ordering_key IS NOT NULL
      AND h.route = d.route AND h.target = d.target AND h.ordering_key = d.ordering_key
      AND h.state = 'queued' AND h.seq < d.seq
    ORDER BY h.seq DESC
    LIMIT 1) p ON true
WHERE d.route = $1 AND d.target = $2 AND d.state = 'queued'
  AND d.next_attempt_at <= now()
  AND d.shard_hash % $3 = ANY ($4::int4[])",
            $after,
            "
ORDER BY d.next_attempt_at, d.seq
LIMIT $5"
        )
    };
}

/// The read from the head of the target's due deliveries.
pub const READ_DUE: &str = read_due!("");

/// The read after position ($6, $7): the scan starts there instead of at
/// the head, where the index entries of delivered rows linger until vacuum.
pub const READ_DUE_AFTER: &str = read_due!(
    "
  AND (d.next_attempt_at, d.seq) > ($6, $7)"
);

/// The queued deliveries of key $3 after seq $4, due or not, at most $5,
/// in acceptance order: the next ones of a lane whose tail was not held.
pub const READ_LANE: &str = "
SELECT d.message_id, d.attempts, m.method, m.path, m.query, m.headers::text, m.body,
       m.idempotency_key, m.traceparent, m.tracestate,
       EXTRACT(EPOCH FROM (now() - m.accepted_at))::float8 AS age_s,
       d.next_attempt_at, d.seq, d.ordering_key, d.shard_hash % $6 AS shard,
       lag(d.message_id) OVER (ORDER BY d.seq)
FROM spool_delivery d
JOIN spool_message m ON m.id = d.message_id
WHERE d.route = $1 AND d.target = $2 AND d.state = 'queued'
  AND d.ordering_key = $3 AND d.seq > $4
ORDER BY d.seq
LIMIT $5";

/// Makes the shard rows of (route, target) that do not exist yet, $3 of them.
pub const ENSURE_SHARDS: &str = "
INSERT INTO spool_shard (route, target, shard, shards)
SELECT $1, $2, g, $3 FROM generate_series(0, $3 - 1) AS g
ON CONFLICT DO NOTHING";

/// Locks the shard rows of (route, target): a reshard waits for takes.
pub const LOCK_TARGET_SHARDS: &str =
    "SELECT 1 FROM spool_shard WHERE route = $1 AND target = $2 FOR UPDATE";

/// The shard count stored for (route, target), and how many of its shards
/// another spool ($3 is this one) holds a live lease on.
pub const SHARD_COUNT: &str = "
SELECT max(shards), count(*) FILTER (WHERE owner <> $3 AND lease_until > now())
FROM spool_shard WHERE route = $1 AND target = $2";

/// Replaces the shard rows of (route, target) by $3 new ones, their epochs
/// past every old one so that no outcome written under an old epoch lands.
pub const RESHARD: &str = "
WITH old AS (
    DELETE FROM spool_shard WHERE route = $1 AND target = $2 RETURNING epoch
)
INSERT INTO spool_shard (route, target, shard, shards, epoch)
SELECT $1, $2, g, $3, (SELECT coalesce(max(epoch), 0) + 1 FROM old)
FROM generate_series(0, $3 - 1) AS g";

/// Says this spool ($3, for $4 seconds) serves each (route, target) of
/// $1/$2, and lists every live spool serving them, this one included.
pub const HEARTBEAT_MEMBERS: &str = "
WITH beat AS (
    INSERT INTO spool_member (route, target, owner, alive_until)
    SELECT r, t, $3, now() + make_interval(secs => $4) FROM unnest($1::text[], $2::text[]) AS u (r, t)
    ON CONFLICT (route, target, owner) DO UPDATE SET alive_until = excluded.alive_until
    RETURNING route, target, owner
)
SELECT route, target, owner FROM spool_member
WHERE alive_until > now() AND owner <> $3
UNION ALL
SELECT route, target, owner FROM beat";

/// Forgets spools that have not been alive for an hour.
pub const FORGET_MEMBERS: &str =
    "DELETE FROM spool_member WHERE alive_until < now() - interval '1 hour'";

/// Renews the leases on shards $3 at epochs $4 of (route, target) held by
/// $5, for $6 seconds; returns the shards still held.
pub const RENEW_SHARDS: &str = "
UPDATE spool_shard s
SET lease_until = now() + make_interval(secs => $6)
FROM unnest($3::int4[], $4::int8[]) AS h (shard, epoch)
WHERE s.route = $1 AND s.target = $2 AND s.shard = h.shard AND s.epoch = h.epoch
  AND s.owner = $5
RETURNING s.shard, s.epoch";

/// Takes up to $3 shards of (route, target) that nobody holds a live lease
/// on, other than $4 (held already), for $5 (for $6 seconds): the epoch
/// moves on, which fences out any former owner's outcomes.
pub const TAKE_SHARDS: &str = "
UPDATE spool_shard s
SET owner = $5, epoch = s.epoch + 1, lease_until = now() + make_interval(secs => $6)
WHERE s.ctid = ANY (ARRAY(
    SELECT ctid FROM spool_shard
    WHERE route = $1 AND target = $2 AND lease_until <= now() AND shard <> ALL ($4::int4[])
    ORDER BY shard
    LIMIT $3
    FOR UPDATE SKIP LOCKED))
  AND s.lease_until <= now()
RETURNING s.shard, s.epoch";

/// Hands back shards $3 at epochs $4 of (route, target) held by $5, so
/// that another spool may take them at once.
pub const RELEASE_SHARDS: &str = "
UPDATE spool_shard s
SET owner = NULL, lease_until = '-infinity'
FROM unnest($3::int4[], $4::int8[]) AS h (shard, epoch)
WHERE s.route = $1 AND s.target = $2 AND s.shard = h.shard AND s.epoch = h.epoch
  AND s.owner = $5";

/// Hands back every shard $1 holds and says it is gone (at shutdown).
pub const LEAVE: &str = "
WITH gone AS (DELETE FROM spool_member WHERE owner = $1)
UPDATE spool_shard SET owner = NULL, lease_until = '-infinity' WHERE owner = $1";

/// Locks the messages whose deliveries are being completed, in id order,
/// so that two targets finishing one message at once cannot both miss
/// that it has no delivery left.
pub const LOCK_MESSAGES: &str =
    "SELECT id FROM spool_message WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Removes delivered rows.
pub const DELETE_DELIVERED: &str = "
DELETE FROM spool_delivery d
USING unnest($1::uuid[], $2::text[]) AS r (message_id, target)
WHERE d.message_id = r.message_id AND d.target = r.target";

/// The epoch fence, and the delivered rows of targets that are their
/// route's only one removed with their messages, in one statement.
///
/// `fence` locks the shard rows the batch's outcomes were made under
/// ($1-$4, distinct) and keeps those that owner $5 still holds at the same
/// epoch; they stay locked until the statement's transaction ends, so a
/// take waits for it and sees the batch written or not at all (a take
/// that committed first is seen by the lock's recheck: its epoch differs).
/// Only rows ($6-$9: message, target, shard, epoch) under a held fence are
/// deleted. The check for another delivery of a message (a route that had
/// more targets when it was accepted) sees the rows as they were before
/// this statement, so it looks for other targets only. Returns the fences
/// held, for the batch's other statements.
pub const FENCE_AND_DELETE_DELIVERED_SOLE: &str = "
WITH fence AS (
    SELECT s.route, s.target, s.shard, s.epoch
    FROM spool_shard s
    JOIN unnest($1::text[], $2::text[], $3::int4[], $4::int8[]) AS f (route, target, shard, epoch)
      ON s.route = f.route AND s.target = f.target AND s.shard = f.shard AND s.epoch = f.epoch
    WHERE s.owner = $5
    FOR SHARE OF s
),
gone AS (
    DELETE FROM spool_delivery d
    USING unnest($6::uuid[], $7::text[], $8::int4[], $9::int8[]) AS r (message_id, target, shard, epoch),
          fence
    WHERE d.message_id = r.message_id AND d.target = r.target
      AND fence.route = d.route AND fence.target = r.target
      AND fence.shard = r.shard AND fence.epoch = r.epoch
    RETURNING d.message_id, d.target
),
finished AS (
    DELETE FROM spool_message m
    USING gone
    WHERE m.id = gone.message_id
      AND NOT EXISTS (SELECT 1 FROM spool_delivery o
                      WHERE o.message_id = m.id AND o.target <> gone.target)
)
SELECT route, target, shard, epoch FROM fence";

/// Removes messages none of whose deliveries is left (delivered or deleted).
pub const DELETE_FINISHED_MESSAGES: &str = "
DELETE FROM spool_message m
WHERE m.id = ANY($1)
  AND NOT EXISTS (SELECT 1 FROM spool_delivery d WHERE d.message_id = m.id)";

/// Schedules the next attempt `delay_s` from now and counts the attempt made.
pub const SCHEDULE_RETRY: &str = "
UPDATE spool_delivery d
SET next_attempt_at = now() + make_interval(secs => r.delay_s),
    attempts = r.attempt, last_status = r.status, last_error = r.error
FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::float8[], $5::int2[], $6::text[])
    AS r (message_id, target, attempt, delay_s, status, error)
WHERE d.message_id = r.message_id AND d.target = r.target";

/// Turns deliveries into dead letters, keeping the attempt count, the last
/// status and error.
pub const MARK_DEAD: &str = "
UPDATE spool_delivery d
SET state = 'dead', dead_at = now(),
    attempts = r.attempt, last_status = r.status, last_error = r.error
FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int2[], $5::text[])
    AS r (message_id, target, attempt, status, error)
WHERE d.message_id = r.message_id AND d.target = r.target";

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

/// Queues dead letters again with their attempts reset: all of one
/// message ($1) or all matching route/target when $1 is null.
pub const REPLAY_DEAD: &str = "
UPDATE spool_delivery d
SET state = 'queued', attempts = 0, next_attempt_at = now(), dead_at = NULL
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

/// Every shard's owner, epoch and lease left (negative: expired), by
/// route, target and shard.
pub const SHARD_OWNERS: &str = "
SELECT route, target, shard, owner, epoch,
       EXTRACT(EPOCH FROM lease_until - now())::float8 AS lease_left_s
FROM spool_shard
ORDER BY route, target, shard";

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
