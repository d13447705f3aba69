"""The SQLite outbox: the embedded default, for one relay process on one machine.

Durability: WAL journal with `synchronous=FULL`, so every commit that stores webhooks
(or changes them for an operator) is fsync'd before it returns; claims and completions
commit with `synchronous=NORMAL`, unsynced (see `Backend.claim`, `complete_many`).

Wake-ups across processes: `listen` watches the file's `PRAGMA data_version`, which
changes whenever another connection (another process, or another thread of this one)
commits a change, so a `relay forward` process hears of webhooks the web process stored
within LISTEN_INTERVAL_SECONDS instead of at its next poll.

Each thread has its own connection; writes take `BEGIN IMMEDIATE` so two writers (say
the server and the forwarding process) queue on SQLite's lock instead of failing halfway
through a transaction, trying for it every LOCK_RETRY_SECONDS. Any SQLite error (locked
past the busy timeout, disk full, read-only file, missing directory) surfaces as
`StoreUnavailable`.

A connection is kept only while it can write: SQLite silently opens a file it may not
write read-only, and such a connection would refuse every write after the fault has
cleared. So a new connection proves it can take the write lock before it is kept, one
that fails with a read-only, I/O or cannot-open error is dropped (the next call opens
afresh), and the connections of threads that have ended are closed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

from relay.core.errors import StoreUnavailable
from relay.core.names import ROARK
from relay.outbox import migrations
from relay.outbox.model import Delivery
from relay.outbox.sql import SQLBackend, delivery_from_row
from relay.outbox.statements import COLUMNS, JOINED, Statements

SQL = Statements(mark="?", binary_mark="?")

#: The WAL is reused from its start once checkpointed, but never shrinks by itself: a
#: group commit of many large reports would leave it at hundreds of MB for good, a large
#: part of a small volume. Past this size a durable commit checkpoints and truncates it, and
#: SQLite trims it to this size whenever it starts over.
WAL_LIMIT_BYTES = 64 * 1024 * 1024

#: How often a listener reads `PRAGMA data_version` (seconds): a wake-up comes this much
#: after another process's commit at worst, and half of it on average, which is most of
#: a webhook's way to Roark when the forwarder is idle (BENCHMARKS.md). An idle relay
#: reads it 100 times a second, each a few microseconds that touch only the
#: shared-memory WAL index.
LISTEN_INTERVAL_SECONDS = 0.01

#: How often a writer waiting for the write lock tries again (seconds). SQLite's own busy
#: handler sleeps up to 100 ms between tries, while a process writing transaction after
#: transaction (a forwarding process draining a backlog) leaves the lock free only for
#: moments: tried that seldom, a webhook could wait most of a second to be stored.
LOCK_RETRY_SECONDS = 0.0005

# Primary result codes after which a connection is not worth keeping.
_REOPEN_AFTER = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})


class SQLiteBackend(SQLBackend):
    SQL = SQL

    def __init__(self, path: str, *, busy_timeout_ms: int = 2000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._connections_lock = threading.Lock()
        self._listeners: set[Callable[[], None]] = set()

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
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            # Fails with SQLITE_READONLY on a connection SQLite opened read-only.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            self._local.durable = True
        except sqlite3.Error:
            conn.close()
            raise
        self._local.conn = conn
        with self._connections_lock:
            for thread in [t for t in self._connections if not t.is_alive()]:
                self._connections.pop(thread).close()
            self._connections[threading.current_thread()] = conn
        return conn

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailable:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in _REOPEN_AFTER:
            conn = getattr(self._local, "conn", None)
            self._local.conn = None
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)
            if conn is not None:
                conn.close()
        hint = self._cannot_open() if code == sqlite3.SQLITE_CANTOPEN else None
        return StoreUnavailable(hint or f"SQLite {self.path}: {error}")

    def _cannot_open(self) -> str | None:
        """Why the file cannot be opened, with what to do, when its directory says so."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            return (f"cannot create {self.path}: directory {directory} does not exist; "
                    "set RELAY_DATABASE_URL or create it")
        if not os.access(directory, os.W_OK) or (os.path.exists(self.path) and not os.access(self.path, os.W_OK)):
            return (f"cannot create {self.path}: permission denied; set RELAY_DATABASE_URL "
                    "or fix the directory's owner")
        return None

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        conn = None
        try:
            conn = self._connection()
            if self._local.durable != durable:
                # NORMAL: in WAL mode the commit is not synced, and may be lost to a power
                # failure, never half-applied. A later synced commit syncs it too (the WAL
                # is one sequential log), so an acknowledged webhook is never behind it.
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._local.durable = durable
            begin_immediate(conn, self._busy_timeout_ms)
            yield conn
            conn.execute("COMMIT")
            if durable and self._wal_size() > WAL_LIMIT_BYTES:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException as error:
            if conn is not None and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may already have rolled back (e.g. disk full)
            if isinstance(error, sqlite3.Error):
                raise self._unavailable(error) from error
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._connection()
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

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

    def claim(self, token: str, now: float, lease_seconds: float, limit: int,
              max_bytes: int | None = None, destination: str = ROARK) -> list[Delivery]:
        with self._write(durable=False) as conn:
            if conn.execute("SELECT 1 FROM paused_destinations WHERE destination = ?",
                            (destination,)).fetchone():
                return []
            due = _claimable(conn, "deliveries_due", "pending", "next_attempt_at", destination, now, limit)
            if len(due) < limit:
                due += _claimable(conn, "deliveries_leased", "delivering", "lease_expires_at", destination,
                                  now, limit - len(due))
            ids = _within(due, max_bytes)
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(
                "UPDATE deliveries SET state = 'delivering', lease_token = ?, lease_expires_at = ?, "
                f"attempts = attempts + 1, updated_at = ? WHERE id IN ({marks})",
                (token, now + lease_seconds, now, *ids))
        # Read once the write lock is free again (up to MAX_BYTES_IN_FLIGHT of bodies is
        # no moment to keep every webhook waiting); the lease keeps the rows as claimed.
        with self._read() as conn:
            rows = conn.execute(f"SELECT {COLUMNS} FROM {JOINED} WHERE deliveries.id IN ({marks}) "
                                "AND deliveries.lease_token = ?", (*ids, token)).fetchall()
        return sorted((delivery_from_row(r) for r in rows), key=lambda d: (d.next_attempt_at, d.id))

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback`, from a thread of its own, whenever another connection (any
        process's) has committed a change to the file since it last looked, every
        LISTEN_INTERVAL_SECONDS; and whenever listening (re)starts, since work stored
        meanwhile announced itself to no one.

        Any change wakes it, not only new work (a completion, this process's own writes):
        the forwarders then claim and find nothing, as at a poll. A poll that fails (the
        file locked, missing, unreadable) is tried again at the next interval, quietly:
        the forwarders still poll, and the store's own errors are reported where it is used."""
        stop = threading.Event()
        thread = threading.Thread(target=self._listen, args=(callback, stop),
                                  name="relay-outbox-listen", daemon=True)

        def unlisten() -> None:
            stop.set()
            with self._connections_lock:
                self._listeners.discard(unlisten)
            if thread is not threading.current_thread():
                thread.join()

        with self._connections_lock:
            self._listeners.add(unlisten)
        thread.start()
        return unlisten

    def _listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        conn: sqlite3.Connection | None = None
        seen: int | None = None  # data_version as `conn` last read it
        started = False
        try:
            while True:
                try:
                    if conn is None:
                        conn = self._listen_connection()
                        seen = None  # each connection counts on its own
                    # fetchall: the statement runs to its end, leaving no read open that
                    # would hold checkpoints back.
                    [(version,)] = conn.execute("PRAGMA data_version").fetchall()
                except sqlite3.Error as error:
                    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
                    if conn is not None and code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                        conn.close()  # reopened at the next try (the file may be back)
                        conn = None
                    version = None
                if version is not None and version != seen:
                    # A first read (listening has (re)started) or others' commits since the last.
                    seen = version
                    started = True
                    callback()
                elif not started:  # the first poll failed: wake once all the same
                    started = True
                    callback()
                if stop.wait(LISTEN_INTERVAL_SECONDS):
                    return
        finally:
            if conn is not None:
                conn.close()

    def _listen_connection(self) -> sqlite3.Connection:
        """A connection that only reads `data_version`: opened without creating the file
        (mode=rw), and with a short busy timeout, so a stop waits for no lock."""
        uri = f"file:{quote(os.path.abspath(self.path))}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(LISTEN_INTERVAL_SECONDS * 1000)}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()
            listeners = list(self._listeners)
        for unlisten in listeners:
            unlisten()
        self._local = threading.local()


def begin_immediate(conn: sqlite3.Connection, patience_ms: int) -> None:
    """BEGIN IMMEDIATE (take the write lock), trying every LOCK_RETRY_SECONDS for up to
    `patience_ms`, the connection's busy timeout, which holds again for what follows."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + patience_ms / 1000
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if getattr(error, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY \
                        or time.monotonic() >= deadline:
                    raise
            time.sleep(LOCK_RETRY_SECONDS)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(patience_ms)}")


def _claimable(conn: sqlite3.Connection, index: str, state: str, due_column: str, destination: str,
               now: float, limit: int) -> list[tuple[int, int]]:
    """(id, body size) of up to `limit` deliveries to `destination` in `state` whose
    `due_column` has passed, earliest first, read through the partial `index` on it.

    INDEXED BY: without statistics SQLite preferred (state, received_at) and sorted every
    pending row on each claim, so draining a backlog took time quadratic in its size. The
    state is written into the statement, as the partial index's own condition must be
    for SQLite to use it. length() of a blob reads no more than its header."""
    return conn.execute(
        f"SELECT deliveries.id, length(webhooks.body) FROM deliveries INDEXED BY {index} "
        "JOIN webhooks ON webhooks.id = deliveries.webhook_id "
        f"WHERE deliveries.destination = ? AND deliveries.state = '{state}' AND deliveries.{due_column} <= ? "
        f"ORDER BY deliveries.{due_column} LIMIT ?", (destination, now, limit)).fetchall()


def _within(sized: list[tuple[int, int]], max_bytes: int | None) -> list[int]:
    """Ids of the longest prefix of (id, size) that fits in `max_bytes`, at least one."""
    ids: list[int] = []
    total = 0
    for delivery_id, size in sized:
        total += size
        if ids and max_bytes is not None and total > max_bytes:
            break
        ids.append(delivery_id)
    return ids


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
