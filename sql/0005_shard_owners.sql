-- Shard ownership: one spool at a time dispatches a (route, target, shard),
-- holding a lease row with an epoch; deliveries are read in order with no
-- row lock and no per-row lease. A delivery's shard follows from its
-- ordering key (else its id), so one key always has one owner.
--
-- Fences out spools of the previous protocol (claims that set 'pending'
-- rows to 'leased'): every row they could claim becomes 'queued', and the
-- state check refuses 'pending' and 'leased', so their claim finds nothing
-- and their replay fails; their inserts (which name no state) still work,
-- so they go on accepting writes during a rolling upgrade. Whatever an old
-- spool had in flight is 'queued' again and is sent by the new owner: a
-- duplicate at worst, never a loss.

ALTER TABLE spool_delivery DROP CONSTRAINT spool_delivery_state_check;

UPDATE spool_delivery
SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE state IN ('pending', 'leased');

ALTER TABLE spool_delivery ALTER COLUMN state SET DEFAULT 'queued';
ALTER TABLE spool_delivery ADD CONSTRAINT spool_delivery_state_check
    CHECK (state IN ('queued', 'dead'));

-- Non-negative, stable across versions of spool: hashtextextended is
-- immutable, and the shard is this modulo the target's shard count.
ALTER TABLE spool_delivery ADD COLUMN shard_hash integer NOT NULL
    GENERATED ALWAYS AS (
        (hashtextextended(coalesce(ordering_key, message_id::text), 0) & 2147483647)::integer
    ) STORED;

DROP INDEX spool_delivery_due;
DROP INDEX spool_delivery_ordering_heads;
DROP INDEX spool_delivery_leased;

-- The read's order, whole.
CREATE INDEX spool_delivery_queued
    ON spool_delivery (route, target, next_attempt_at, seq)
    WHERE state = 'queued';

-- A key's deliveries in acceptance order: a lane's next ones, and the
-- predecessor of a delivery read out of its key's order.
CREATE INDEX spool_delivery_lanes
    ON spool_delivery (route, target, ordering_key, seq)
    WHERE state = 'queued' AND ordering_key IS NOT NULL;

CREATE TABLE spool_shard (
    route       text NOT NULL,
    target      text NOT NULL,
    shard       integer NOT NULL,
    -- The target's shard count when this row was made: every spool follows
    -- the count stored here, so two spools never split a target two ways.
    shards      integer NOT NULL,
    owner       text,
    -- Moves on at every take: outcomes are written only under the epoch
    -- their owner holds, so a former owner can never record over its
    -- successor.
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (route, target, shard)
);

-- Live spools serving each target, for a fair share of its shards.
CREATE TABLE spool_member (
    route       text NOT NULL,
    target      text NOT NULL,
    owner       text NOT NULL,
    alive_until timestamptz NOT NULL,
    PRIMARY KEY (route, target, owner)
);
