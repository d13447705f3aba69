-- Alerts (relay/alerts): what is wrong, opened once per kind and subject whichever
-- instance sees it first (the partial unique index), reminded and resolved once; and
-- the messages each owes its channels, sent under a lease and retried like deliveries,
-- so a restart or a second instance sends none of them twice.
CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    subject         TEXT NOT NULL,
    summary         TEXT NOT NULL,
    details         TEXT NOT NULL,
    opened_at       REAL NOT NULL,
    -- when an instance last saw its condition hold: it resolves once nobody has for a while
    seen_at         REAL NOT NULL,
    resolved_at     REAL,
    acknowledged_at REAL,
    reminded_at     REAL,
    held_up         INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX alerts_open ON alerts (kind, subject) WHERE resolved_at IS NULL;
CREATE INDEX alerts_opened ON alerts (opened_at);

CREATE TABLE alert_messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id         INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel          TEXT NOT NULL,
    type             TEXT NOT NULL CHECK (type IN ('opened', 'reminder', 'resolved')),
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    lease_token      TEXT,
    lease_expires_at REAL,
    created_at       REAL NOT NULL,
    sent_at          REAL,
    last_error       TEXT
);
CREATE INDEX alert_messages_due ON alert_messages (next_attempt_at) WHERE state = 'pending';
CREATE INDEX alert_messages_alert ON alert_messages (alert_id);

-- How sending to each channel last went, for the status page.
CREATE TABLE alert_channels (
    channel         TEXT PRIMARY KEY,
    last_attempt_at REAL,
    last_success_at REAL,
    failing_since   REAL,
    last_error      TEXT
);

-- Subjects an operator muted: their alerts open and resolve on the page, unsent.
CREATE TABLE alert_mutes (
    subject TEXT PRIMARY KEY,
    until   REAL NOT NULL
);

-- Dead letters per destination over a window, however much other history is kept.
CREATE INDEX deliveries_failed ON deliveries (destination, updated_at) WHERE state = 'failed';
