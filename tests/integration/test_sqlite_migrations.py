"""Upgrading a SQLite outbox in place: what an older relay stored survives, unchanged."""

import sqlite3

from relay.outbox import Attempt, Completion, DeliveryFilter, NewDelivery, State, open_backend
from relay.outbox import migrations

NOW = 1_700_000_000.0


def schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                        "ORDER BY name").fetchall()


def test_ids_never_reused_keeps_rows_attempts_and_indexes(tmp_path):
    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as conn:  # the schema as the relay left it before 0004
        conn.execute("CREATE TABLE schema_migrations "
                     "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
        for migration in migrations.load("sqlite"):
            if migration.version < 4:
                conn.executescript(migration.sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                             (migration.version, migration.name, NOW))
        indexes = schema(conn)
    conn.close()
    store = open_backend(f"sqlite:///{path}")
    try:
        store.insert_many(
            [NewDelivery("vapi", "e", c, f"e:{c}", c.encode(), NOW, "req-" + c, {"k": c}) for c in "abc"], NOW)
        [claimed] = store.claim("w", NOW, 60.0, 1)
        attempt = Attempt(1, NOW, 3.0, 400, "bad", "giveup")
        store.complete(claimed.id, "w", Completion(State.FAILED, NOW, status_code=400, error="bad", attempt=attempt))
        before = store.list_deliveries(DeliveryFilter(), None, 10)
        store.prune(NOW + 1, [State.PENDING])  # the newest two go, as retention would take them

        store.migrate()

        assert store.list_deliveries(DeliveryFilter(), None, 10) == [d for d in before if d.id == claimed.id]
        assert store.get(claimed.id).body == b"a" and store.attempts(claimed.id) == [attempt]
        [again] = store.insert_many([NewDelivery("vapi", "e", "d", "e:d", b"d", NOW, None, None)], NOW)
        # Ids pruned before the upgrade left no trace; from the survivors on, none is reissued.
        assert again.delivery_id > claimed.id
        store.prune(NOW + 1, [State.PENDING])
        [later] = store.insert_many([NewDelivery("vapi", "e", "e", "e:e", b"e", NOW, None, None)], NOW)
        assert later.delivery_id > again.delivery_id
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert schema(conn) == indexes
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
