-- Reconciliation (relay.reconciliation), one row per provider: how far its ended calls
-- have been checked against the outbox, the window a failed run left part-way and where
-- in it to resume, who is running now (a lease, so instances sharing the database take
-- turns), and how the last run went (the status page, /health and /metrics read it).
CREATE TABLE reconciliation (
    provider         TEXT PRIMARY KEY,
    -- every call that ended before this (epoch seconds) has been reconciled
    reconciled_until DOUBLE PRECISION,
    pending_start    DOUBLE PRECISION,
    pending_end      DOUBLE PRECISION,
    pending_token    TEXT,
    lease_owner      TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_run_at      DOUBLE PRECISION,
    last_success_at  DOUBLE PRECISION,
    last_queued      INTEGER,
    last_error       TEXT,
    failing_since    DOUBLE PRECISION
);
