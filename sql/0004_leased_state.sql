-- A claimed delivery leaves the pending state ('leased') until its outcome
-- is recorded, so it also leaves the claim's index: a claim no longer walks
-- past every delivery in flight, and claiming stays one short index scan
-- however much is in flight. An expired lease is put back to pending by the
-- lease sweep (found through its own small index).
--
-- Not for a rolling upgrade alongside spools that do not know 'leased':
-- they would not count leased deliveries as the head of their ordering key.

ALTER TABLE spool_delivery DROP CONSTRAINT spool_delivery_state_check;
ALTER TABLE spool_delivery ADD CONSTRAINT spool_delivery_state_check
    CHECK (state IN ('pending', 'leased', 'dead'));

-- The head of an ordering key may be pending or in flight.
CREATE INDEX spool_delivery_ordering_heads
    ON spool_delivery (route, target, ordering_key, seq)
    WHERE state IN ('pending', 'leased') AND ordering_key IS NOT NULL;
DROP INDEX spool_delivery_ordering;

CREATE INDEX spool_delivery_leased
    ON spool_delivery (lease_expires_at)
    WHERE state = 'leased';
