-- What each destination's forwarder last reported (relay.outbox.model.ForwarderReport),
-- one row per destination, replaced by every report whichever process sends it. Its
-- pause, rate limit and run of failures live in the memory of the process that forwards
-- (`relay forward`); written here, /health and the status page of every process read them.
-- Times are epoch seconds; NULL for none (not failing, no failure or success yet).
CREATE TABLE forwarder_reports (
    destination        TEXT PRIMARY KEY,
    reported_at        DOUBLE PRECISION NOT NULL,
    -- why its receiver refused us (credentials, URL); NULL while it is not paused
    paused_reason      TEXT,
    paused_until       DOUBLE PRECISION NOT NULL DEFAULT 0,
    rate_limited_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- when the current run of retryable failures began (relay.trouble)
    failing_since      DOUBLE PRECISION,
    last_failure_at    DOUBLE PRECISION,
    last_success_at    DOUBLE PRECISION,
    -- the last failure as logged, and its HTTP status (NULL when nothing answered)
    failure            TEXT,
    failure_status     INTEGER
);
