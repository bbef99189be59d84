-- The outbox. A write is one spool_message (its body stored once) and one
-- spool_delivery per target of its route. Migrations only ever add: older
-- spools sharing the database during a rolling upgrade must keep working.

CREATE TABLE spool_message (
    id              uuid PRIMARY KEY,
    -- Acceptance order, for per-key ordering.
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    -- The format this row was written in; a spool passes on what it does not
    -- understand rather than dropping it.
    format_version  smallint NOT NULL,
    route           text NOT NULL,
    method          text NOT NULL,
    path            text NOT NULL,
    query           text,
    -- Allow-listed request headers as [[name, value], ...], in request order.
    headers         jsonb NOT NULL DEFAULT '[]',
    body            bytea NOT NULL,
    idempotency_key text,
    ordering_key    text,
    traceparent     text,
    tracestate      text,
    -- Fields added by newer formats; carried along untouched by older ones.
    extra           jsonb NOT NULL DEFAULT '{}',
    accepted_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE spool_delivery (
    -- No foreign key: its check (a lookup and a lock of the message row per
    -- delivery row) would be paid on every write, and spool writes and
    -- removes both tables together (deliveries first, then a message none
    -- of whose deliveries is left).
    message_id       uuid NOT NULL,
    route            text NOT NULL,
    target           text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    ordering_key     text,
    seq              bigint NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_status      smallint,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, target)
);

-- The claim's order, whole: with seq in it, rows due at one instant (a
-- replay of many dead letters) are read in order instead of sorted.
CREATE INDEX spool_delivery_due
    ON spool_delivery (route, target, next_attempt_at, seq)
    WHERE state = 'pending';

CREATE TABLE spool_idempotency (
    route        text NOT NULL,
    key          text NOT NULL,
    message_id   uuid NOT NULL,
    -- SHA-256 of method, path, query and body: the same key with another
    -- request is a conflict, not a replay.
    request_hash bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (route, key)
);

CREATE INDEX spool_idempotency_created ON spool_idempotency (created_at);

-- Written by readiness checks: proves the outbox is writable, not just reachable.
CREATE TABLE spool_heartbeat (
    owner   text PRIMARY KEY,
    beat_at timestamptz NOT NULL
);
