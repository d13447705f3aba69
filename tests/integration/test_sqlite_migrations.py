"""Upgrading a SQLite outbox in place: what an older relay stored survives, unchanged."""

import sqlite3

from relay.outbox import Attempt, DeliveryFilter, NewDelivery, State, migrations, open_backend

NOW = 1_700_000_000.0


def at_version(path, version: int) -> sqlite3.Connection:
    """A database with the schema as the relay left it at `version`."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations "
                 "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    for migration in migrations.load("sqlite"):
        if migration.version <= version:
            conn.executescript(migration.sql)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                         (migration.version, migration.name, NOW))
    conn.commit()
    return conn


def test_ids_never_reused_keeps_rows_and_attempts(tmp_path):
    path = tmp_path / "outbox.db"
    conn = at_version(path, 3)
    # Written as that relay wrote them: three webhooks, the first failed after an attempt.
    conn.executemany(
        "INSERT INTO deliveries (provider, event, call_id, dedupe_key, body, received_at, "
        "next_attempt_at, updated_at, request_id, properties) VALUES ('vapi', 'e', ?, ?, ?, ?, ?, ?, ?, ?)",
        [(c, f"e:{c}", c.encode(), NOW, NOW, NOW, "req-" + c, f'{{"k": "{c}"}}') for c in "abc"])
    conn.execute("UPDATE deliveries SET state = 'failed', attempts = 1, last_status = 400, "
                 "last_error = 'bad' WHERE call_id = 'a'")
    conn.execute("INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, "
                 "status_code, error, outcome) VALUES (1, 1, ?, 3.0, 400, 'bad', 'giveup')", (NOW,))
    # The newest two go, as retention would take them.
    conn.execute("DELETE FROM deliveries WHERE state = 'pending'")
    conn.commit()
    conn.close()
    attempt = Attempt(1, NOW, 3.0, 400, "bad", "giveup")
    store = open_backend(f"sqlite:///{path}")
    try:
        store.migrate()

        [failed] = store.list_deliveries(DeliveryFilter(), None, 10)
        assert (failed.id, failed.call_id, failed.state, failed.last_error, failed.properties,
                failed.request_id) == (1, "a", State.FAILED, "bad", {"k": "a"}, "req-a")
        assert store.get(1).body == b"a" and store.attempts(1) == [attempt]
        claimed = failed
        [again] = store.insert_many([NewDelivery("vapi", "e", "d", "e:d", b"d", NOW, None, None)], NOW)
        # Ids pruned before the upgrade left no trace; from the survivors on, none is reissued.
        assert again.delivery_id > claimed.id
        store.prune(NOW + 1, [State.PENDING], 100)
        [later] = store.insert_many([NewDelivery("vapi", "e", "e", "e:e", b"e", NOW, None, None)], NOW)
        assert later.delivery_id > again.delivery_id
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
