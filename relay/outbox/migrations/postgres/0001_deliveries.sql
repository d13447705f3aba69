-- The outbox: one row per acknowledged webhook owed to Roark.
-- Times are epoch seconds (DOUBLE PRECISION), as in the SQLite schema, so both
-- backends hand the relay exactly the same values.
CREATE TABLE deliveries (
    id               BIGINT           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider         TEXT             NOT NULL,
    event            TEXT             NOT NULL,
    call_id          TEXT,
    dedupe_key       TEXT             NOT NULL,
    body             BYTEA            NOT NULL,
    received_at      DOUBLE PRECISION NOT NULL,
    state            TEXT             NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts         INTEGER          NOT NULL DEFAULT 0,
    next_attempt_at  DOUBLE PRECISION NOT NULL,
    lease_token      TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_status      INTEGER,
    last_error       TEXT,
    roark_call_id    TEXT,
    delivered_at     DOUBLE PRECISION,
    updated_at       DOUBLE PRECISION NOT NULL
);

-- Provider retries and duplicate sends collapse onto one row, whichever relay
-- instance receives them.
CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (provider, dedupe_key);
-- The claim query reads only these two small partial indexes, however much
-- delivered history the table holds. They end with id as SQLite's end with the
-- rowid, so ties are claimed oldest first without sorting the whole backlog.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at, id) WHERE state = 'delivering';
CREATE INDEX deliveries_state_received ON deliveries (state, received_at);

CREATE TABLE delivery_attempts (
    id           BIGINT           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  BIGINT           NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER          NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    duration_ms  DOUBLE PRECISION NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    outcome      TEXT             NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
