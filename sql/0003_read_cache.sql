-- Reads: the last good answer per route, URL and Vary variant, so that a
-- restarted spool still has its fallbacks. A cache: losing a row loses
-- nothing that was acknowledged.

CREATE TABLE spool_read_cache (
    route        text NOT NULL,
    -- Path after the route name, with the query.
    key          text NOT NULL,
    -- The Vary header names and this variant's request values, as JSON.
    variant      text NOT NULL,
    status       smallint NOT NULL,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    stored_at    timestamptz NOT NULL,
    upstream_age bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (route, key, variant)
);

CREATE INDEX spool_read_cache_stored ON spool_read_cache (stored_at);
