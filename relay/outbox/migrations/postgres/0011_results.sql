-- Roark's verdicts (relay/results): per call delivered to Roark and kind of result
-- (evaluation, sentiment), fetched from Roark under a lease, with backoff, until every
-- run has finished or the relay gives up. Kept with the delivery, and pruned with it.
CREATE TABLE results (
    delivery_id      BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('evaluation', 'sentiment')),
    roark_call_id    TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'completed', 'given_up')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- the first fetch (delivered + RELAY_RESULTS_DELAY_SECONDS): giving up counts from it
    due_from         DOUBLE PRECISION NOT NULL,
    next_fetch_at    DOUBLE PRECISION NOT NULL,
    lease_token      TEXT,
    lease_expires_at DOUBLE PRECISION,
    fetched_at       DOUBLE PRECISION,
    last_status      INTEGER,
    last_error       TEXT,
    -- Roark's data field as it last answered (JSON), and what the relay read from it
    data             TEXT,
    score            DOUBLE PRECISION,
    classification   TEXT,
    completed_at     DOUBLE PRECISION,
    PRIMARY KEY (delivery_id, kind)
);
CREATE INDEX results_due ON results (next_fetch_at) WHERE state = 'pending';
CREATE INDEX results_completed ON results (kind, completed_at) WHERE state = 'completed';
CREATE INDEX results_scheduled ON results (due_from);
