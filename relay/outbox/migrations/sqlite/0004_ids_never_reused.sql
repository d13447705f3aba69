-- A delivery id names one webhook for good: operators replay by id, logs and the admin
-- API's cursor refer to it. A plain rowid table hands out max(id) + 1, so once the
-- newest rows are pruned their ids are issued again; AUTOINCREMENT never reissues an id.
-- SQLite cannot add AUTOINCREMENT to a table, so the table is rebuilt: rows copied with
-- their ids (which seeds sqlite_sequence with the largest), then its indexes.
CREATE TABLE deliveries_autoincrement (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
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
    updated_at       REAL    NOT NULL,
    request_id       TEXT,
    properties       TEXT
);
INSERT INTO deliveries_autoincrement
    (id, provider, event, call_id, dedupe_key, body, received_at, state, attempts,
     next_attempt_at, lease_token, lease_expires_at, last_status, last_error, roark_call_id,
     delivered_at, updated_at, request_id, properties)
SELECT id, provider, event, call_id, dedupe_key, body, received_at, state, attempts,
       next_attempt_at, lease_token, lease_expires_at, last_status, last_error, roark_call_id,
       delivered_at, updated_at, request_id, properties
FROM deliveries;

-- With foreign keys on (and a migration cannot turn them off inside its transaction),
-- dropping deliveries would cascade to every attempt: the attempts are set aside, and
-- their table recreated as it was, pointing at the new deliveries.
CREATE TEMP TABLE attempts_kept AS SELECT * FROM delivery_attempts;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
ALTER TABLE deliveries_autoincrement RENAME TO deliveries;

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

-- The indexes of 0001, as they were.
CREATE UNIQUE INDEX deliveries_dedupe ON deliveries (provider, dedupe_key);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_expires_at) WHERE state = 'delivering';
CREATE INDEX deliveries_state_received ON deliveries (state, received_at);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
