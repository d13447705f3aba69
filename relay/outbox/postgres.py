"""The PostgreSQL outbox: for hosts without a lasting disk (Heroku) and for several relay
processes sharing one queue.

Durability: every write is one transaction, acknowledged only after its COMMIT returns;
claims and completions commit with `synchronous_commit = off` (see `Backend.claim`,
`complete_many`), everything else waits for the WAL flush.
Connections come from a pool and are checked before use, so those an outage broke are
replaced; getting one waits at most `pool_timeout` seconds, so while the database is away
webhooks are answered 503 quickly, and the relay recovers by itself once it is back.

Several processes: claims lock their rows with `FOR UPDATE SKIP LOCKED` and write the
same lease as the SQLite backend; the unique (provider, dedupe_key) index makes two
instances receiving one webhook store one row; new work sends `NOTIFY relay_outbox`, which
`listen` turns into a wake-up for every idle forwarder; migrations hold an advisory lock.

Connection, server and resource errors (down, read-only after a failover, disk full, not
migrated) surface as `StoreUnavailable`, described without the database URL. Errors that
mean our own SQL or data is wrong propagate as they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg.abc import ConnDict
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

from relay.core.errors import StoreUnavailable
from relay.core.names import ROARK
from relay.outbox import migrations
from relay.outbox.model import Delivery
from relay.outbox.sql import SQLBackend, delivery_from_row
from relay.outbox.statements import COLUMNS, JOINED, Statements

log = structlog.get_logger("relay.outbox.postgres")
# psycopg's pool logs every checkout at INFO and each failed connection attempt at
# WARNING, in raw libpq words, and where logging is not set up (a one-shot command such as `relay check`) Python prints
# them ahead of the command's own report. This backend reports the same failures itself,
# once, as StoreUnavailable with the reason.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

#: The NOTIFY channel that announces new work to every relay on the database.
CHANNEL = "relay_outbox"
#: Key of the transaction-scoped advisory lock migrations hold ("relay" in ASCII).
MIGRATION_LOCK_KEY = 0x72656C6179
DEFAULT_POOL_SIZE = 10
#: Longest wait for a pooled connection before the operation fails as StoreUnavailable.
DEFAULT_POOL_TIMEOUT = 3.0
#: After no connection came within the timeout, further operations fail at once for this
#: long instead of each waiting out the timeout (they queue behind one another).
FAIL_FAST_SECONDS = 1.0
#: How long the pool keeps retrying a failed connection in the background. Short, so
#: after an outage its exponential backoff never delays recovery: once it gives up, the
#: next request starts a fresh attempt at once.
RECONNECT_WINDOW = 5.0
#: libpq defaults (the URL's own values win): fail a connection attempt in seconds, and
#: notice a peer that vanished without closing the connection.
CONNECT_OPTIONS: ConnDict = {
    "connect_timeout": 5, "tcp_user_timeout": 30_000, "keepalives": 1, "keepalives_idle": 30,
    "keepalives_interval": 10, "keepalives_count": 3, "fallback_application_name": "roark-relay",
}
LISTEN_POLL_SECONDS = 0.25
#: First and longest wait between attempts to listen again after losing the connection.
LISTEN_BACKOFF_SECONDS = (0.1, 5.0)

#: Errors that mean our SQL or data is wrong: bugs to see, not outages to wait out...
_BUGS = (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError,
         psycopg.NotSupportedError)
#: ...except these, which describe the database's state (not migrated, role lacks rights).
_STORE_STATE = (pg_errors.UndefinedTable, pg_errors.InsufficientPrivilege)


CLAIM = f"""
WITH due AS (
    SELECT id, webhook_id, next_attempt_at AS at FROM deliveries
    WHERE destination = %(destination)s AND state = 'pending' AND next_attempt_at <= %(now)s
    ORDER BY destination, next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id, webhook_id, lease_expires_at AS at FROM deliveries
    WHERE destination = %(destination)s AND state = 'delivering' AND lease_expires_at <= %(now)s
    ORDER BY destination, lease_expires_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), candidates AS (
    -- octet_length reads a stored body's size without fetching it (TOAST keeps it)
    SELECT c.id, sum(octet_length(w.body)) OVER win AS running, row_number() OVER win AS n
    FROM (SELECT 0 AS part, * FROM due UNION ALL SELECT 1, * FROM expired) AS c
    JOIN webhooks w ON w.id = c.webhook_id
    WHERE NOT EXISTS (SELECT 1 FROM paused_destinations WHERE destination = %(destination)s)
    WINDOW win AS (ORDER BY part, at, c.id)
), chosen AS (
    SELECT id FROM candidates WHERE n <= %(limit)s AND (n = 1 OR running <= %(max_bytes)s)
), claimed AS (
    UPDATE deliveries SET state = 'delivering', lease_token = %(token)s,
        lease_expires_at = %(expires)s, attempts = attempts + 1, updated_at = %(now)s
    WHERE id IN (SELECT id FROM chosen)
    RETURNING *
)
SELECT {COLUMNS} FROM {JOINED.replace("deliveries", "claimed AS deliveries", 1)}
"""


SQL = Statements(mark="%s", binary_mark="%b")


class PostgresBackend(SQLBackend):
    SQL = SQL

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE,
                 pool_timeout: float = DEFAULT_POOL_TIMEOUT) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self._url = url
        self._pool_size = pool_size
        self._pool_timeout = pool_timeout
        password = urlsplit(url).password or ""
        self._secrets = {s for s in (password, unquote(password)) if s}
        self._pool: ConnectionPool | None = None
        self._options: ConnDict | None = None
        self._unreachable: tuple[float, str] = (0.0, "")  # (until, why), monotonic time
        self._connect_error: str | None = None  # why the pool's last connection attempt failed
        self._lock = threading.Lock()
        self._listeners: set[Callable[[], None]] = set()

    def _connect_options(self) -> ConnDict:
        """CONNECT_OPTIONS the URL does not set itself; checks the URL on first use."""
        if self._options is None:
            try:
                given = conninfo_to_dict(self._url)
            except psycopg.Error:  # libpq's message may quote the URL, password included
                raise StoreUnavailable(
                    "PostgreSQL: the database URL is not a valid connection URI") from None
            self._options = {k: v for k, v in CONNECT_OPTIONS.items() if k not in given}
        return self._options

    def _connections(self) -> ConnectionPool:
        """The pool, opened on first use: constructing a backend touches no network."""
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._url,
                    connection_class=self._connection_class(),
                    # No server-side prepared statements: they break behind a pooler
                    # (PgBouncer in transaction mode), and these queries are cheap to plan.
                    kwargs={**self._connect_options(), "prepare_threshold": None},
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=self._pool_timeout,
                    reconnect_timeout=RECONNECT_WINDOW,
                    check=ConnectionPool.check_connection,
                    name="relay-outbox",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    def _connection_class(self) -> type[psycopg.Connection]:
        """Connections that remember why connecting failed: the pool itself only logs it,
        and a StoreUnavailable saying "no connection" should also say why."""
        backend = self

        class Connection(psycopg.Connection):
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Self:
                try:
                    conn = super().connect(*args, **kwargs)
                except psycopg.Error as error:
                    backend._connect_error = backend._describe(error)
                    raise
                backend._connect_error = None
                return conn

        return Connection

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[psycopg.Connection]:
        """A pooled connection inside a transaction, committed when the block ends."""
        until, why = self._unreachable
        if time.monotonic() < until:
            raise StoreUnavailable(why)
        try:
            with self._connections().connection() as conn:
                if not durable:
                    # The commit returns before its WAL is flushed; a crash may lose it,
                    # never half-apply it, and a later synchronous commit flushes it too.
                    conn.execute("SET LOCAL synchronous_commit = off")
                yield conn
        except psycopg.Error as error:
            if isinstance(error, _BUGS) and not isinstance(error, _STORE_STATE):
                raise
            why = self._describe(error)
            if isinstance(error, PoolTimeout):
                if cause := self._connect_error:
                    why = f"{why}; {cause.removeprefix('PostgreSQL: ')}"
                self._unreachable = (time.monotonic() + FAIL_FAST_SECONDS, why)
            raise StoreUnavailable(why) from error

    # Reads need no more than a write's transaction; the pool makes both cheap.
    _read = _write

    def _announce_work(self, conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))  # sent on commit

    def _describe(self, error: BaseException) -> str:
        text = " ".join(str(error).split()) or type(error).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return f"PostgreSQL: {text}"

    def migrate(self) -> int:
        with self._write() as conn:
            conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for migration in migrations.load("postgres"):
                if migration.version in applied:
                    continue
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, time.time()),
                )
            [(version,)] = conn.execute("SELECT max(version) FROM schema_migrations").fetchall()
        return version or 0

    def claim(self, token: str, now: float, lease_seconds: float, limit: int,
              max_bytes: int | None = None, destination: str = ROARK) -> list[Delivery]:
        params = {"token": token, "now": now, "expires": now + lease_seconds, "limit": limit,
                  "max_bytes": 2**62 if max_bytes is None else max_bytes, "destination": destination}
        with self._write(durable=False) as conn:
            rows = conn.execute(CLAIM, params).fetchall()
        return sorted((delivery_from_row(r) for r in rows), key=lambda d: (d.next_attempt_at, d.id))

    def ping(self) -> None:
        with self._write() as conn:
            conn.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` on every NOTIFY from any instance, from a thread of its own.

        It is also called whenever listening (re)starts, since work stored while nobody
        listened announced itself to no one."""
        options = self._connect_options()
        stop = threading.Event()
        thread = threading.Thread(target=self._listen, args=(callback, options, stop),
                                  name="relay-outbox-listen", daemon=True)

        def unlisten() -> None:
            stop.set()
            with self._lock:
                self._listeners.discard(unlisten)
            if thread is not threading.current_thread():
                thread.join(timeout=LISTEN_POLL_SECONDS * 8)

        with self._lock:
            self._listeners.add(unlisten)
        thread.start()
        return unlisten

    def _listen(self, callback: Callable[[], None], options: dict[str, Any],
                stop: threading.Event) -> None:
        lost = False

        def connect() -> psycopg.Connection | None:
            if stop.is_set():
                return None
            conn = psycopg.connect(self._url, autocommit=True, **options)
            try:
                conn.execute(f"LISTEN {CHANNEL}")
            except BaseException:
                conn.close()
                raise
            return conn

        def lose(error: BaseException) -> None:
            nonlocal lost
            if not lost:
                log.warning("outbox_listen_lost", error=self._describe(error),
                            consequence="forwarders poll until it is back")
            lost = True

        def lose_attempt(attempt: RetryCallState) -> None:
            error = attempt.outcome.exception() if attempt.outcome else None
            assert error is not None  # only a failed attempt is retried
            lose(error)

        def sleep(seconds: float) -> None:
            stop.wait(seconds)

        # Sleeping on the stop event lets a stop end the wait at once (`connect` then
        # sees it). Each connection gets a fresh call, so each outage starts the backoff
        # from the beginning.
        reconnect = Retrying(
            retry=retry_if_exception_type(psycopg.Error),
            wait=(wait_exponential(multiplier=LISTEN_BACKOFF_SECONDS[0], max=LISTEN_BACKOFF_SECONDS[1])
                  + wait_random(0, LISTEN_BACKOFF_SECONDS[0])),
            sleep=sleep,
            before_sleep=lose_attempt,
        )
        while (conn := reconnect(connect)) is not None:
            if lost:
                log.info("outbox_listen_restored")
            lost = False
            try:
                callback()
                while not stop.is_set():
                    for _ in conn.notifies(timeout=LISTEN_POLL_SECONDS):
                        callback()
            except psycopg.Error as error:
                lose(error)
            finally:
                conn.close()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            listeners = list(self._listeners)
        for unlisten in listeners:
            unlisten()
        if pool is not None:
            pool.close()

