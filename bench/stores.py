"""The outbox a benchmark runs on: a fresh SQLite file or a fresh PostgreSQL database,
migrated by the relay's own code, seeded in bulk SQL, watched while the relay works,
and removed afterwards.

Seeded rows are what ingest would have stored: VAPI reports of the benchmark's size,
each with its own call id inside the body and in its row.
"""

from __future__ import annotations

import abc
import contextlib
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.lockprobe import LockProbe
from bench.payloads import template
from relay.outbox import open_backend

UNDELIVERED = ("SELECT (SELECT count(*) FROM deliveries WHERE state = 'pending') + "
               "(SELECT count(*) FROM deliveries WHERE state = 'delivering')")

#: The columns a seeded row sets: pending and due (received in the last hours), or
#: delivered an hour after it arrived, before any pending one (history is older than a
#: backlog: it arrived, and was delivered, before the outage that built the backlog).
_SEED = """
INSERT INTO webhooks (provider, event, call_id, dedupe_key, body, received_at)
SELECT 'vapi', 'end-of-call-report', {call_id}, 'end-of-call-report:' || {call_id}, {body},
    {received_at}
FROM {series}
"""
#: A destination's delivery of each webhook just seeded (those after `before`).
_OWE = """
INSERT INTO deliveries (webhook_id, destination, provider, received_at, state, attempts,
    next_attempt_at, updated_at, delivered_at, last_status, roark_call_id)
SELECT id, {destination}, provider, received_at, {state}, {attempts}, received_at, {now},
    {delivered_at}, {status}, {roark}
FROM webhooks WHERE id > {before}
"""
#: How far before now seeded history ends: more than any seeded backlog spans (0.5 s apart).
HISTORY_BEFORE_SECONDS = 7 * 86400


def _seed_sql(dialect: str, delivered: bool, destinations: tuple[str, ...], age: float) -> list[str]:
    p = (lambda name: f":{name}") if dialect == "sqlite" else (lambda name: f"%({name})s")
    call_id = f"({p('tag')} || i)"
    body = (f"CAST({p('prefix')} || {call_id} || {p('suffix')} AS BLOB)" if dialect == "sqlite"
            else f"convert_to({p('prefix')} || {call_id} || {p('suffix')}, 'UTF8')")
    series = ("(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < "
              f"{p('count')}) SELECT i FROM s)" if dialect == "sqlite"
              else f"generate_series(1, {p('count')}) AS i")
    received_at = f"{p('now')} - {age if delivered else 0} - i * 0.5"
    webhooks = _SEED.format(call_id=call_id, body=body, series=series, received_at=received_at)
    owed = [_OWE.format(
        destination=p(f"destination{n}"), before=p("before"), now=p("now"),
        state="'delivered'" if delivered else "'pending'", attempts=int(delivered),
        delivered_at="received_at + 3600" if delivered else "NULL",
        status="201" if delivered else "NULL",
        roark="'rk-' || call_id" if delivered else "NULL") for n in range(len(destinations))]
    return [webhooks, *owed]


class Store(abc.ABC):
    backend: str
    url: str

    def migrate(self) -> None:
        store = open_backend(self.url)
        try:
            store.migrate()
        finally:
            store.close()

    def seed(self, count: int, size: int, *, delivered: bool = False, batch: int = 50_000,
             destinations: tuple[str, ...] = ("roark",), age: float = HISTORY_BEFORE_SECONDS) -> float:
        """Store `count` pending (or delivered, ending `age` seconds ago) reports of `size`
        bytes, each owed to `destinations`; returns seconds."""
        prefix, suffix = (part.decode() for part in template(size))
        started = time.perf_counter()
        tag = f"seed-{secrets.token_hex(4)}-"
        for offset in range(0, count, batch):
            params = {"tag": f"{tag}{offset}-", "prefix": prefix, "suffix": suffix,
                      "count": min(batch, count - offset), "now": time.time(),
                      "before": self._scalar("SELECT coalesce(max(id), 0) FROM webhooks"),
                      **{f"destination{n}": name for n, name in enumerate(destinations)}}
            for statement in _seed_sql(self.backend, delivered, destinations, age):
                self._execute(statement, params)
        self._analyze()
        return time.perf_counter() - started

    @abc.abstractmethod
    def _analyze(self) -> None:
        """What the database knows after a bulk insert in production."""

    def undelivered(self) -> int:
        return self._scalar(UNDELIVERED)

    def rows(self) -> int:
        return self._scalar("SELECT count(*) FROM deliveries")

    def delivery_seconds(self) -> list[float]:
        """Per delivered webhook, from its receipt (stored before it was acknowledged) to
        its delivery (recorded once Roark's 201 came), sorted."""
        return sorted(self._column("SELECT delivered_at - received_at FROM deliveries "
                                   "WHERE state = 'delivered' ORDER BY 1"))

    @abc.abstractmethod
    def _column(self, query: str) -> list[float]: ...

    @abc.abstractmethod
    def _execute(self, statement: str, params: dict[str, object]) -> None: ...

    @abc.abstractmethod
    def _scalar(self, query: str) -> int: ...

    def lock_probe(self) -> contextlib.AbstractContextManager[LockProbe | None]:
        """What a writer waits for the write lock meanwhile (SQLite; PostgreSQL locks rows)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def settings(self) -> dict[str, str]:
        """The durability settings in force, for the record."""

    @abc.abstractmethod
    def drop(self) -> None: ...


class SQLiteStore(Store):
    backend = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"bench-{secrets.token_hex(4)}.db"
        self.url = f"sqlite:///{self.path}"
        self.migrate()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _execute(self, statement: str, params: dict[str, object]) -> None:
        with closing(self._connect()) as conn:
            conn.execute(statement, params)

    def _scalar(self, query: str) -> int:
        with closing(self._connect()) as conn:
            return conn.execute(query).fetchone()[0]

    def _column(self, query: str) -> list[float]:
        with closing(self._connect()) as conn:
            return [row[0] for row in conn.execute(query)]

    def _analyze(self) -> None:
        """Nothing: the relay never analyzes a SQLite database."""

    def lock_probe(self) -> contextlib.AbstractContextManager[LockProbe | None]:
        return LockProbe(self.path)

    def settings(self) -> dict[str, str]:
        return {"journal_mode": "wal", "synchronous (inserts)": "FULL",
                "sqlite_version": sqlite3.sqlite_version}

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class PostgresStore(Store):
    """A database of its own on the server `server_url` names, dropped afterwards."""

    backend = "postgres"

    def __init__(self, server_url: str) -> None:
        self.name = f"relay_bench_{secrets.token_hex(4)}"
        self._server_url = server_url
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.url = urlunsplit(urlsplit(server_url)._replace(path=f"/{self.name}"))
        self.migrate()

    def _execute(self, statement: str, params: dict[str, object]) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement, params or None)

    def _scalar(self, query: str) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(query).fetchone()[0]

    def _column(self, query: str) -> list[float]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return [row[0] for row in conn.execute(query)]

    def _analyze(self) -> None:
        # What autovacuum does soon after such an insert. Left to it, the vacuum of a
        # million seeded rows would run during the measurement, sharing its two cores;
        # history that built up over months was vacuumed as it grew.
        self._execute("VACUUM (ANALYZE)", {})

    def settings(self) -> dict[str, str]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return {name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("fsync", "synchronous_commit", "wal_sync_method",
                                 "shared_buffers", "server_version")}

    def drop(self) -> None:
        with psycopg.connect(self._server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(self.name)))
