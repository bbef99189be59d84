-- Forwarding: when a delivery became a dead letter, and the index that lets
-- the claim find the head of each ordering key quickly.

ALTER TABLE spool_delivery ADD COLUMN dead_at timestamptz;

CREATE INDEX spool_delivery_ordering
    ON spool_delivery (route, target, ordering_key, seq)
    WHERE state = 'pending' AND ordering_key IS NOT NULL;

CREATE INDEX spool_delivery_dead
    ON spool_delivery (dead_at, message_id, target)
    WHERE state = 'dead';
