-- Destinations: a webhook is stored once, in `webhooks`, and owed to each destination
-- that asked for it (Roark, the team's own endpoints) as a row of `deliveries`, with
-- its own state, attempts and lease. Bodies are not copied per destination.
-- Each existing row becomes a webhook with the same id and Roark's delivery of it, also
-- with that id, so ids that operators, logs and cursors hold keep naming the same thing.
CREATE TABLE webhooks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    provider    TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    call_id     TEXT,
    dedupe_key  TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    received_at REAL    NOT NULL,
    request_id  TEXT,
    properties  TEXT,
    origin      TEXT    NOT NULL DEFAULT 'webhook',
    -- The provider's own authentication headers, as JSON, kept only when a destination
    -- passes them on (original_headers).
    credentials TEXT
);
INSERT INTO webhooks (id, provider, event, call_id, dedupe_key, body, received_at, request_id,
                      properties, origin)
SELECT id, provider, event, call_id, dedupe_key, body, received_at, request_id, properties, origin
FROM deliveries;

CREATE TABLE deliveries_by_destination (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id       INTEGER NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    destination      TEXT    NOT NULL,
    -- The webhook's, repeated: counts, retention and the age of the backlog read them
    -- without a join.
    provider         TEXT    NOT NULL,
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
INSERT INTO deliveries_by_destination
    (id, webhook_id, destination, provider, received_at, state, attempts, next_attempt_at,
     lease_token, lease_expires_at, last_status, last_error, roark_call_id, delivered_at, updated_at)
SELECT id, id, 'roark', provider, received_at, state, attempts, next_attempt_at, lease_token,
       lease_expires_at, last_status, last_error, roark_call_id, delivered_at, updated_at
FROM deliveries;

-- As in 0004: the attempts are set aside while deliveries is replaced.
CREATE TEMP TABLE attempts_kept AS SELECT * FROM delivery_attempts;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
ALTER TABLE deliveries_by_destination RENAME TO deliveries;

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
INSERT INTO delivery_attempts (id, delivery_id, attempt, started_at, duration_ms, status_code, error, outcome)
SELECT id, delivery_id, attempt, started_at, duration_ms, status_code, error, outcome FROM attempts_kept;
DROP TABLE attempts_kept;
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- Provider retries and duplicate sends collapse onto one webhook.
CREATE UNIQUE INDEX webhooks_dedupe ON webhooks (provider, dedupe_key);
CREATE INDEX webhooks_received ON webhooks (received_at);
CREATE UNIQUE INDEX deliveries_per_destination ON deliveries (webhook_id, destination);
-- Each destination claims from its own part of these small partial indexes, however
-- much delivered history the table holds.
CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (destination, lease_expires_at) WHERE state = 'delivering';
CREATE INDEX deliveries_state_received ON deliveries (state, received_at);

-- Destinations an operator must look at before anything more is sent to them (one
-- answered 410 Gone); every relay instance skips them until resumed.
CREATE TABLE paused_destinations (
    destination TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    paused_at   REAL NOT NULL
);
