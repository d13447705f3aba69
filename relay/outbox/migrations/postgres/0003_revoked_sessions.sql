-- Logged-out admin sessions (relay.admin.auth), so a logout holds after a restart and
-- on every instance sharing the database. A row is needed only until the session would
-- have expired anyway; logging out deletes the rows past that.
CREATE TABLE revoked_sessions (
    nonce      TEXT             PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX revoked_sessions_expiry ON revoked_sessions (expires_at);
