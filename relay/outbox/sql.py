"""The SQL both outbox backends run, written once and rendered in each driver's
parameter style (sqlite3's `?`/`:name`, psycopg's `%s`/`%(name)s`).

What differs between the backends (claiming, inserting under concurrency, connections,
error mapping) stays in their own modules.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from relay.outbox.model import (
    Attempt,
    Backend,
    Completion,
    Delivery,
    DeliveryFilter,
    NewDelivery,
    State,
)

COLUMNS = (
    "id, provider, event, call_id, dedupe_key, body, received_at, state, attempts, "
    "next_attempt_at, lease_token, lease_expires_at, last_status, last_error, "
    "roark_call_id, delivered_at, updated_at, request_id, properties"
)
#: Listings leave the (possibly large) bodies in the database.
LISTING_COLUMNS = COLUMNS.replace(" body,", " NULL,")
REPLAYABLE = (State.FAILED, State.PENDING)

Query = tuple[str, Sequence[object] | dict[str, object]]


def delivery_from_row(row: Sequence[object]) -> Delivery:
    values = list(row)
    if values[5] is not None:
        values[5] = bytes(values[5])  # sqlite3 and psycopg may hand back memoryviews
    values[7] = State(values[7])
    if values[18] is not None:
        values[18] = json.loads(values[18])
    return Delivery(*values)


@dataclass(frozen=True)
class Statements:
    mark: str  # a positional parameter
    named: str  # a named parameter, with {} for the name

    def _marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def _in(self, column: str, values: Sequence[object]) -> str:
        return f"{column} IN ({self._marks(len(values))})"

    def insert(self, item: NewDelivery, now: float) -> Query:
        return (
            "INSERT INTO deliveries (provider, event, call_id, dedupe_key, body, received_at, "
            f"next_attempt_at, updated_at, request_id, properties) VALUES ({self._marks(10)}) "
            "ON CONFLICT (provider, dedupe_key) DO NOTHING RETURNING id",
            (item.provider, item.event, item.call_id, item.dedupe_key, item.body,
             item.received_at, now, now, item.request_id,
             json.dumps(item.properties) if item.properties else None),
        )

    def existing(self, item: NewDelivery) -> Query:
        return (f"SELECT id FROM deliveries WHERE provider = {self.mark} AND dedupe_key = {self.mark}",
                (item.provider, item.dedupe_key))

    def get(self, delivery_id: int) -> Query:
        return f"SELECT {COLUMNS} FROM deliveries WHERE id = {self.mark}", (delivery_id,)

    def where(self, where: DeliveryFilter) -> tuple[list[str], list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if where.states:
            clauses.append(self._in("state", where.states))
            params += [state.value for state in where.states]
        if where.provider is not None:
            clauses.append(f"provider = {self.mark}")
            params.append(where.provider)
        if where.call_id_prefix:
            # substr instead of LIKE, so % and _ in a searched id are just characters
            clauses.append(f"substr(call_id, 1, {self.mark}) = {self.mark}")
            params += [len(where.call_id_prefix), where.call_id_prefix]
        return clauses, params

    def listing(self, where: DeliveryFilter, before_id: int | None, limit: int) -> Query:
        clauses, params = self.where(where)
        if before_id is not None:
            clauses.append(f"id < {self.mark}")
            params.append(before_id)
        sql = f"SELECT {LISTING_COLUMNS} FROM deliveries"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return f"{sql} ORDER BY id DESC LIMIT {self.mark}", (*params, limit)

    def replay(self, ids: Sequence[int] | None, where: DeliveryFilter, now: float) -> Query:
        clauses, params = self.where(where)
        clauses.append(self._in("state", REPLAYABLE))
        params += [state.value for state in REPLAYABLE]
        if ids is not None:
            clauses.append(self._in("id", ids) if ids else "false")
            params += list(ids)
        return (
            f"UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = {self.mark}, "
            f"updated_at = {self.mark} WHERE {' AND '.join(clauses)} RETURNING id",
            (now, now, *params),
        )

    def prune(self, received_before: float, states: Sequence[State]) -> Query:
        return (f"DELETE FROM deliveries WHERE {self._in('state', states)} AND received_at < {self.mark}",
                (*(state.value for state in states), received_before))

    def complete(self, delivery_id: int, token: str, completion: Completion) -> Query:
        n = self.named.format
        assignments = [
            f"state = {n('state')}",
            "lease_token = NULL",
            "lease_expires_at = NULL",
            f"updated_at = {n('now')}",
            f"attempts = attempts - {n('refund')}",
            f"next_attempt_at = coalesce({n('next_attempt_at')}, next_attempt_at)",
            f"roark_call_id = coalesce({n('roark_call_id')}, roark_call_id)",
        ]
        if completion.attempt is not None:  # a release without an attempt keeps the last result
            assignments += [f"last_status = {n('status_code')}", f"last_error = {n('error')}"]
        if completion.state is State.DELIVERED:
            assignments.append(f"delivered_at = {n('now')}")
        return (
            f"UPDATE deliveries SET {', '.join(assignments)} "
            f"WHERE id = {n('id')} AND lease_token = {n('token')} AND state = 'delivering'",
            {
                "state": completion.state.value,
                "now": completion.now,
                "refund": int(completion.refund_attempt),
                "next_attempt_at": completion.next_attempt_at,
                "roark_call_id": completion.roark_call_id,
                "status_code": completion.status_code,
                "error": completion.error,
                "id": delivery_id,
                "token": token,
            },
        )

    def record_attempt(self, delivery_id: int, a: Attempt) -> Query:
        return (
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, "
            f"status_code, error, outcome) VALUES ({self._marks(7)})",
            (delivery_id, a.attempt, a.started_at, a.duration_ms, a.status_code, a.error, a.outcome),
        )

    def attempts(self, delivery_id: int) -> Query:
        return ("SELECT attempt, started_at, duration_ms, status_code, error, outcome "
                f"FROM delivery_attempts WHERE delivery_id = {self.mark} ORDER BY id", (delivery_id,))


COUNTS_BY_PROVIDER = "SELECT provider, state, count(*) FROM deliveries GROUP BY provider, state"
OLDEST_PENDING = "SELECT min(received_at) FROM deliveries WHERE state IN ('pending', 'delivering')"


class SQLBackend(Backend):
    """The parts of a backend that are the same SQL on every database. A subclass gives
    its statements' parameter style and its connections (`_write`, `_read`)."""

    SQL: Statements

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A connection in a transaction that commits (durably) on exit."""

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A connection for reading."""

    def _announce_work(self, conn: Any) -> None:
        """Tell other processes there is new due work (inside the transaction)."""

    def complete(self, delivery_id: int, token: str, completion: Completion) -> bool:
        with self._write() as conn:
            updated = conn.execute(*self.SQL.complete(delivery_id, token, completion)).rowcount
            if updated and completion.attempt is not None:
                conn.execute(*self.SQL.record_attempt(delivery_id, completion.attempt))
        return bool(updated)

    def get(self, delivery_id: int) -> Delivery | None:
        with self._read() as conn:
            row = conn.execute(*self.SQL.get(delivery_id)).fetchone()
        return None if row is None else delivery_from_row(row)

    def list_deliveries(self, where: DeliveryFilter, before_id: int | None, limit: int) -> list[Delivery]:
        with self._read() as conn:
            rows = conn.execute(*self.SQL.listing(where, before_id, limit)).fetchall()
        return [delivery_from_row(row) for row in rows]

    def replay(self, ids: Sequence[int] | None, where: DeliveryFilter, now: float) -> list[int]:
        with self._write() as conn:
            rows = conn.execute(*self.SQL.replay(ids, where, now)).fetchall()
            if rows:
                self._announce_work(conn)
        return sorted(i for (i,) in rows)

    def prune(self, received_before: float, states: Sequence[State]) -> int:
        if not states:
            return 0
        with self._write() as conn:
            return conn.execute(*self.SQL.prune(received_before, states)).rowcount

    def attempts(self, delivery_id: int) -> list[Attempt]:
        with self._read() as conn:
            rows = conn.execute(*self.SQL.attempts(delivery_id)).fetchall()
        return [Attempt(*row) for row in rows]

    def counts_by_provider(self) -> dict[str, dict[State, int]]:
        counts: dict[str, dict[State, int]] = {}
        with self._read() as conn:
            for provider, state, count in conn.execute(COUNTS_BY_PROVIDER):
                counts.setdefault(provider, dict.fromkeys(State, 0))[State(state)] = count
        return counts

    def oldest_pending_received_at(self) -> float | None:
        with self._read() as conn:
            (oldest,) = conn.execute(OLDEST_PENDING).fetchone()
        return oldest
