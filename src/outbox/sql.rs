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
