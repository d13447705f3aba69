"""What forwarders report about their destinations, kept in the store so that every
process (the web process, whichever forwards) reads the same; and SQLite's wake-ups
across processes. The reports' tests run on every backend unchanged."""

import asyncio
import sqlite3
import threading
from contextlib import closing

import psycopg

from relay.outbox import AsyncOutbox, ForwarderReport, NewDelivery, migrations, open_backend
from relay.outbox.sqlite import SQLiteBackend

NOW = 1_700_000_000.0
FORWARDER_REPORTS = 9  # the migration that adds them


def report(destination="roark", **changes) -> ForwarderReport:
    return ForwarderReport(destination, NOW, **changes)


def test_a_report_round_trips_with_every_field(backend):
    full = ForwarderReport("roark", NOW, paused_reason="Roark refused the API key (HTTP 401)",
                           paused_until=NOW + 60, rate_limited_until=NOW + 30, failing_since=NOW - 120,
                           last_failure_at=NOW - 5, last_success_at=NOW - 300,
                           failure="HTTP 503 from Roark: upstream busy", failure_status=503)
    bare = report("team-crm")  # every optional field at its default, the Nones included
    backend.report_forwarders([full, bare])
    assert backend.forwarder_reports() == {"roark": full, "team-crm": bare}


def test_a_later_report_replaces_the_destinations_last(backend):
    backend.report_forwarders([report(failing_since=NOW - 60, last_failure_at=NOW, failure="timed out")])
    recovered = ForwarderReport("roark", NOW + 10, last_success_at=NOW + 9)
    backend.report_forwarders([recovered])
    assert backend.forwarder_reports() == {"roark": recovered}  # nothing of the first is left


def test_destinations_are_kept_apart(backend):
    backend.report_forwarders([report("roark", failure_status=429), report("team-crm", failure_status=None)])
    backend.report_forwarders([report("team-crm", failure="connection refused")])
    reports = backend.forwarder_reports()
    assert reports["roark"].failure_status == 429 and reports["roark"].failure is None
    assert reports["team-crm"].failure == "connection refused"


def test_the_last_of_a_destinations_reports_in_one_batch_wins(backend):
    backend.report_forwarders([report(failure="first"), report("team-crm"), report(failure="second")])
    reports = backend.forwarder_reports()
    assert reports["roark"].failure == "second" and set(reports) == {"roark", "team-crm"}
    backend.report_forwarders([])
    assert backend.forwarder_reports() == reports


def test_another_instance_reads_the_reports(backend, outbox_url):
    backend.report_forwarders([report(paused_reason="HTTP 410: gone")])
    other = open_backend(outbox_url)  # standing for the web process
    try:
        assert other.forwarder_reports()["roark"].paused_reason == "HTTP 410: gone"
    finally:
        other.close()


def test_reports_go_through_the_async_outbox(backend):
    async def go():
        outbox = AsyncOutbox(backend)
        try:
            await outbox.report_forwarders([report(rate_limited_until=NOW + 30)])
            await outbox.report_forwarders([report("team-crm", last_success_at=NOW)])
            return await outbox.forwarder_reports()
        finally:
            await outbox.close()

    assert asyncio.run(go()) == {"roark": report(rate_limited_until=NOW + 30),
                                 "team-crm": report("team-crm", last_success_at=NOW)}


# --- the migration -----------------------------------------------------------------------


def test_the_migration_applies_to_an_existing_outbox_once(outbox_url):
    """An outbox at the version before, with a webhook in it, migrated twice."""
    dialect = "sqlite" if outbox_url.startswith("sqlite") else "postgres"
    old = [m for m in migrations.load(dialect) if m.version < FORWARDER_REPORTS]
    if dialect == "sqlite":
        with closing(sqlite3.connect(outbox_url.removeprefix("sqlite:///"))) as conn:
            conn.execute("CREATE TABLE schema_migrations "
                         "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
            for migration in old:
                conn.executescript(migration.sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                             (migration.version, migration.name, NOW))
            conn.commit()
    else:
        with psycopg.connect(outbox_url) as conn:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                         "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
            for migration in old:
                conn.execute(migration.sql)
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                             (migration.version, migration.name, NOW))
    store = open_backend(outbox_url)
    try:
        [stored] = store.insert_many([NewDelivery("vapi", "end-of-call-report", "c1", "k1", b"{}", NOW)], NOW)
        latest = migrations.load(dialect)[-1].version
        assert store.migrate() == latest >= FORWARDER_REPORTS
        assert store.migrate() == latest  # a no-op
        assert store.forwarder_reports() == {}
        store.report_forwarders([report()])
        assert store.forwarder_reports() == {"roark": report()}
        assert store.get(stored.delivery_id).body == b"{}"
    finally:
        store.close()


# --- SQLite: wake-ups across processes ---------------------------------------------------


def listeners() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "relay-outbox-listen"]


def test_sqlite_listen_wakes_on_a_commit_by_another_process(tmp_path):
    path = str(tmp_path / "outbox.db")
    web, forwarder = SQLiteBackend(path), SQLiteBackend(path)  # two processes' backends
    web.migrate()
    started, stored = threading.Event(), threading.Event()
    woken = started

    def wake() -> None:
        woken.set()

    unlisten = forwarder.listen(wake)
    try:
        assert started.wait(2), "listen() did not call back once on starting"
        woken = stored
        web.insert_many([NewDelivery("vapi", "end-of-call-report", "c1", "k1", b"{}", NOW)], NOW)
        assert stored.wait(2), "a webhook stored by another process did not wake the listener"
    finally:
        unlisten()
        forwarder.close()
        web.close()
    assert listeners() == []


def test_sqlite_unlisten_stops_its_thread_and_close_stops_every_listener(tmp_path):
    store = SQLiteBackend(str(tmp_path / "outbox.db"))
    store.migrate()
    unlisten = store.listen(lambda: None)
    [thread] = listeners()
    assert thread.daemon and thread.is_alive()
    unlisten()
    assert not thread.is_alive()

    store.listen(lambda: None)
    [thread] = listeners()
    store.close()
    assert not thread.is_alive() and listeners() == []


def test_sqlite_listen_waits_out_a_missing_file_without_creating_it(tmp_path):
    path = tmp_path / "outbox.db"
    started, created = threading.Event(), threading.Event()
    woken = started

    def wake() -> None:
        woken.set()

    store = SQLiteBackend(str(path))
    unlisten = store.listen(wake)
    try:
        assert started.wait(2), "listen() did not call back once on starting"
        assert not path.exists()  # polling does not create the file
        woken = created
        store.migrate()  # the file appears: listening (re)starts, and says so
        assert created.wait(2), "the listener did not notice the file once it existed"
    finally:
        unlisten()
        store.close()
