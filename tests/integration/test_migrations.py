"""Upgrading to destinations (migration 0006) on both backends: every row an older relay
stored survives with its id, state, attempts and body, and is then delivered."""

import sqlite3
from contextlib import closing

import psycopg
import pytest

from relay.core.names import ROARK
from relay.outbox import Attempt, Completion, DeliveryFilter, NewDelivery, State, migrations, open_backend
from tests.helpers import fresh_schema

NOW = 1_700_000_000.0
BEFORE_DESTINATIONS = 5


def old_outbox(dialect: str, conn) -> None:
    """The schema at version 5, with what that relay wrote: a pending webhook, one failed
    after an attempt, one delivered; the id sequence already past them."""
    mark = "?" if dialect == "sqlite" else "%s"
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at DOUBLE PRECISION NOT NULL)")
    for migration in migrations.load(dialect):
        if migration.version <= BEFORE_DESTINATIONS:
            if dialect == "sqlite":
                conn.executescript(migration.sql)
            else:
                conn.execute(migration.sql)
            conn.execute(f"INSERT INTO schema_migrations VALUES ({mark}, {mark}, {mark})",
                         (migration.version, migration.name, NOW))
    rows = [("pending", 0, None, None), ("failed", 1, 400, "HTTP 400 invalid_parameter: no"),
            ("delivered", 1, 201, None)]
    for n, (state, attempts, status, error) in enumerate(rows, start=1):
        conn.execute(
            "INSERT INTO deliveries (provider, event, call_id, dedupe_key, body, received_at, state, "
            "attempts, next_attempt_at, updated_at, last_status, last_error, request_id, properties, origin) "
            f"VALUES ('vapi', 'end-of-call-report', {', '.join([mark] * 13)})",
            (f"call-{n}", f"end-of-call-report:id:str:call-{n}", f"body-{n}".encode(), NOW + n, state,
             attempts, NOW + n, NOW + n, status, error, f"req-{n}", '{"team": "a"}', "webhook"))
    conn.execute("INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code, "
                 f"error, outcome) VALUES (2, 1, {mark}, 12.5, 400, 'HTTP 400 invalid_parameter: no', 'giveup')",
                 (NOW,))


@pytest.fixture(params=["sqlite", "postgres"])
def upgraded(request, tmp_path):
    """A backend opened on a version-5 database, not yet migrated."""
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        with closing(sqlite3.connect(path)) as conn:
            old_outbox("sqlite", conn)
            conn.commit()
        store = open_backend(f"sqlite:///{path}")
        yield store
        store.close()
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        with psycopg.connect(url) as conn:
            old_outbox("postgres", conn)
        store = open_backend(url)
        yield store
        store.close()


def test_rows_of_the_old_schema_survive_and_are_delivered(upgraded):
    assert upgraded.migrate() >= 6

    listed = {d.id: d for d in upgraded.list_deliveries(DeliveryFilter(), None, 10)}
    assert {i: (d.state, d.attempts, d.destination, d.call_id, d.request_id, d.properties, d.webhook_id)
            for i, d in listed.items()} == {
        1: (State.PENDING, 0, ROARK, "call-1", "req-1", {"team": "a"}, 1),
        2: (State.FAILED, 1, ROARK, "call-2", "req-2", {"team": "a"}, 2),
        3: (State.DELIVERED, 1, ROARK, "call-3", "req-3", {"team": "a"}, 3),
    }
    assert upgraded.get(2).body == b"body-2" and upgraded.get(2).last_error == "HTTP 400 invalid_parameter: no"
    assert upgraded.attempts(2) == [Attempt(1, NOW, 12.5, 400, "HTTP 400 invalid_parameter: no", "giveup")]

    # The pending row is delivered; the failed one is replayed, then delivered.
    assert upgraded.replay([2], DeliveryFilter(), NOW + 10) == [2]
    claimed = upgraded.claim("w", NOW + 10, 60.0, 10)
    assert [(d.id, d.body) for d in claimed] == [(1, b"body-1"), (2, b"body-2")]
    for d in claimed:
        assert upgraded.complete(d.id, "w", Completion(State.DELIVERED, NOW + 11, status_code=201))
    assert upgraded.counts()[State.DELIVERED] == 3

    # A provider retry of a migrated webhook is still a duplicate; new ids come after.
    [again] = upgraded.insert_many([NewDelivery("vapi", "end-of-call-report", "call-1",
                                                "end-of-call-report:id:str:call-1", b"x", NOW)], NOW)
    assert (again.delivery_id, again.duplicate) == (1, True)
    [new] = upgraded.insert_many([NewDelivery("vapi", "end-of-call-report", "call-4",
                                              "end-of-call-report:id:str:call-4", b"x", NOW,
                                              destinations=(ROARK, "crm"))],
                                 NOW)
    assert not new.duplicate and min(new.deliveries.values()) > 3
    assert upgraded.get(new.deliveries["crm"]).webhook_id == upgraded.get(new.delivery_id).webhook_id > 3
