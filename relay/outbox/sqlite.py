"""The SQLite outbox: the embedded default, for one relay process on one machine.

Durability: WAL journal with `synchronous=FULL`, so every commit is fsync'd before the
relay acknowledges. Each thread has its own connection; writes take `BEGIN IMMEDIATE`
so two writers (say the server and the CLI) queue on SQLite's lock instead of failing
halfway through a transaction. Any SQLite error (locked past the busy timeout, disk
full, read-only file, missing directory) surfaces as `StoreUnavailable`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from relay.errors import StoreUnavailable
from relay.outbox import migrations
from relay.outbox.model import (
    Attempt,
    Backend,
    Completion,
    Delivery,
    DeliveryFilter,
    Inserted,
    NewDelivery,
    State,
)

COLUMNS = (
    "id, provider, event, call_id, dedupe_key, body, received_at, state, attempts, "
    "next_attempt_at, lease_token, lease_expires_at, last_status, last_error, "
    "roark_call_id, delivered_at, updated_at"
)
LISTING_COLUMNS = COLUMNS.replace(" body,", " NULL,")
REPLAYABLE = (State.FAILED.value, State.PENDING.value)


def _delivery(row: tuple) -> Delivery:
    values = list(row)
    if values[5] is not None:
        values[5] = bytes(values[5])
    values[7] = State(values[7])
    return Delivery(*values)


def _where(where: DeliveryFilter) -> tuple[list[str], list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if where.states:
        clauses.append(f"state IN ({','.join('?' * len(where.states))})")
        params += [state.value for state in where.states]
    if where.provider is not None:
        clauses.append("provider = ?")
        params.append(where.provider)
    if where.call_id_prefix:
        # substr instead of LIKE, so % and _ in a searched id are just characters
        clauses.append("substr(call_id, 1, ?) = ?")
        params += [len(where.call_id_prefix), where.call_id_prefix]
    return clauses, params


class SQLiteBackend(Backend):
    def __init__(self, path: str, *, busy_timeout_ms: int = 2000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        # Autocommit mode: transactions are opened explicitly, so none is left open by accident.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error:
            conn.close()
            raise
        self._local.conn = conn
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = None
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            if conn is not None and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may already have rolled back (e.g. disk full)
            if isinstance(error, sqlite3.Error):
                raise StoreUnavailable(f"SQLite {self.path}: {error}") from error
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._connection()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite {self.path}: {error}") from error

    def migrate(self) -> int:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations.load("sqlite"):
                if migration.version in applied:
                    continue
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
            (version,) = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return version or 0

    def insert_many(self, items: Sequence[NewDelivery], now: float) -> list[Inserted]:
        results = []
        with self._write() as conn:
            for item in items:
                row = conn.execute(
                    "INSERT INTO deliveries (provider, event, call_id, dedupe_key, body, "
                    "received_at, next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (provider, dedupe_key) DO NOTHING RETURNING id",
                    (item.provider, item.event, item.call_id, item.dedupe_key, item.body,
                     item.received_at, now, now),
                ).fetchone()
                if row is not None:
                    results.append(Inserted(row[0], duplicate=False))
                    continue
                (existing,) = conn.execute(
                    "SELECT id FROM deliveries WHERE provider = ? AND dedupe_key = ?",
                    (item.provider, item.dedupe_key),
                ).fetchone()
                results.append(Inserted(existing, duplicate=True))
        return results

    def claim(self, token: str, now: float, lease_seconds: float, limit: int) -> list[Delivery]:
        with self._write() as conn:
            ids = [i for (i,) in conn.execute(
                "SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?", (now, limit))]
            if len(ids) < limit:
                ids += [i for (i,) in conn.execute(
                    "SELECT id FROM deliveries WHERE state = 'delivering' AND lease_expires_at <= ? "
                    "ORDER BY lease_expires_at LIMIT ?", (now, limit - len(ids)))]
            if not ids:
                return []
            rows = conn.execute(
                "UPDATE deliveries SET state = 'delivering', lease_token = ?, lease_expires_at = ?, "
                f"attempts = attempts + 1, updated_at = ? WHERE id IN ({','.join('?' * len(ids))}) "
                f"RETURNING {COLUMNS}",
                (token, now + lease_seconds, now, *ids),
            ).fetchall()
        return sorted((_delivery(r) for r in rows), key=lambda d: d.next_attempt_at)

    def complete(self, delivery_id: int, token: str, completion: Completion) -> bool:
        assignments = [
            "state = :state",
            "lease_token = NULL",
            "lease_expires_at = NULL",
            "updated_at = :now",
            "attempts = attempts - :refund",
            "next_attempt_at = coalesce(:next_attempt_at, next_attempt_at)",
            "roark_call_id = coalesce(:roark_call_id, roark_call_id)",
        ]
        if completion.attempt is not None:
            assignments += ["last_status = :status_code", "last_error = :error"]
        if completion.state is State.DELIVERED:
            assignments.append("delivered_at = :now")
        params = {
            "state": completion.state.value,
            "now": completion.now,
            "refund": int(completion.refund_attempt),
            "next_attempt_at": completion.next_attempt_at,
            "roark_call_id": completion.roark_call_id,
            "status_code": completion.status_code,
            "error": completion.error,
            "id": delivery_id,
            "token": token,
        }
        with self._write() as conn:
            updated = conn.execute(
                f"UPDATE deliveries SET {', '.join(assignments)} "
                "WHERE id = :id AND lease_token = :token AND state = 'delivering'",
                params,
            ).rowcount
            if updated and completion.attempt is not None:
                a = completion.attempt
                conn.execute(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, "
                    "status_code, error, outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (delivery_id, a.attempt, a.started_at, a.duration_ms, a.status_code,
                     a.error, a.outcome),
                )
        return bool(updated)

    def get(self, delivery_id: int) -> Delivery | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        return None if row is None else _delivery(row)

    def list_deliveries(self, where: DeliveryFilter, before_id: int | None, limit: int) -> list[Delivery]:
        clauses, params = _where(where)
        if before_id is not None:
            clauses.append("id < ?")
            params.append(before_id)
        sql = f"SELECT {LISTING_COLUMNS} FROM deliveries"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        with self._read() as conn:
            rows = conn.execute(f"{sql} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_delivery(row) for row in rows]

    def replay(self, ids: Sequence[int] | None, where: DeliveryFilter, now: float) -> list[int]:
        clauses, params = _where(where)
        clauses.append(f"state IN ({','.join('?' * len(REPLAYABLE))})")
        params += REPLAYABLE
        if ids is not None:
            if not ids:
                return []
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            params += list(ids)
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                f"updated_at = ? WHERE {' AND '.join(clauses)} RETURNING id",
                (now, now, *params),
            ).fetchall()
        return sorted(i for (i,) in rows)

    def prune(self, received_before: float, states: Sequence[State]) -> int:
        if not states:
            return 0
        with self._write() as conn:
            return conn.execute(
                f"DELETE FROM deliveries WHERE state IN ({','.join('?' * len(states))}) "
                "AND received_at < ?",
                (*(s.value for s in states), received_before),
            ).rowcount

    def attempts(self, delivery_id: int) -> list[Attempt]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT attempt, started_at, duration_ms, status_code, error, outcome "
                "FROM delivery_attempts WHERE delivery_id = ? ORDER BY id",
                (delivery_id,),
            ).fetchall()
        return [Attempt(*row) for row in rows]

    def counts_by_provider(self) -> dict[str, dict[State, int]]:
        counts: dict[str, dict[State, int]] = {}
        with self._read() as conn:
            for provider, state, count in conn.execute(
                "SELECT provider, state, count(*) FROM deliveries GROUP BY provider, state"
            ):
                counts.setdefault(provider, dict.fromkeys(State, 0))[State(state)] = count
        return counts

    def oldest_pending_received_at(self) -> float | None:
        with self._read() as conn:
            (oldest,) = conn.execute(
                "SELECT min(received_at) FROM deliveries WHERE state IN ('pending', 'delivering')"
            ).fetchone()
        return oldest

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements, so they run inside our own transaction
    (`executescript` would commit first)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer
