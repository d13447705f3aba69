-- The outbox: one row per acknowledged webhook owed to Roark.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    provider         TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    call_id          TEXT,
    dedupe_key       TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    received_at      REAL    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    lease_token      TEXT,
    lease_expires_at REAL,
    last_status      INTEGER,
    last_error       TEXT,
    roark_call_id    TEXT,
    delivered_at     REAL,
    updated_at       REAL    NOT NULL
);

-- Provider retries and duplicate sends collapse onto one row.
CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (provider, dedupe_key);
-- The claim query reads only these two small partial indexes, however much
-- delivered history the table holds.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at) WHERE state = 'delivering';
CREATE INDEX deliveries_state_received ON deliveries (state, received_at);

CREATE TABLE delivery_attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    duration_ms  REAL    NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    outcome      TEXT    NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
