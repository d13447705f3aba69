"""The SQL both outbox backends run, written once and rendered in each driver's
parameter style (sqlite3's `?`, psycopg's `%s`).

Inserts and completions are one statement per batch (a multi-row INSERT, an UPDATE
joined to the batch's VALUES), so a group commit costs a few statements however many
webhooks it holds. What differs between the backends (claiming, connections, syncing,
error mapping) stays in their own modules.
"""

from __future__ import annotations

import abc
import json
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields, replace
from typing import Any

from relay.outbox import traffic
from relay.outbox.model import (
    Attempt,
    Backend,
    Completion,
    Delivery,
    DeliveryFilter,
    ForwarderReport,
    Inserted,
    NewDelivery,
    Pause,
    State,
)
from relay.outbox.reconciliation import ReconciliationStatements, ReconciliationStore

#: A delivery is a row of `deliveries` joined to its webhook.
JOINED = "deliveries JOIN webhooks ON webhooks.id = deliveries.webhook_id"
COLUMNS = (
    "deliveries.id, deliveries.provider, webhooks.event, webhooks.call_id, webhooks.dedupe_key, "
    "webhooks.body, deliveries.received_at, deliveries.state, deliveries.attempts, "
    "deliveries.next_attempt_at, deliveries.lease_token, deliveries.lease_expires_at, "
    "deliveries.last_status, deliveries.last_error, deliveries.roark_call_id, "
    "deliveries.delivered_at, deliveries.updated_at, webhooks.request_id, webhooks.properties, "
    "webhooks.origin, deliveries.destination, deliveries.webhook_id, webhooks.credentials"
)
#: Listings leave the (possibly large) bodies, and the credentials, in the database.
LISTING_COLUMNS = COLUMNS.replace(" webhooks.body,", " NULL,").replace(", webhooks.credentials", ", NULL")
REPLAYABLE = (State.FAILED, State.PENDING)

Query = tuple[str, Sequence[object] | dict[str, object]]


def delivery_from_row(row: Sequence[object]) -> Delivery:
    values = list(row)
    if values[5] is not None:
        values[5] = bytes(values[5])  # sqlite3 and psycopg may hand back memoryviews
    values[7] = State(values[7])
    for json_column in (18, 22):
        if values[json_column] is not None:
            values[json_column] = json.loads(values[json_column])
    return Delivery(*values)


@dataclass(frozen=True)
class Statements(ReconciliationStatements):
    mark: str  # a positional parameter
    #: A parameter sent as bytes: psycopg otherwise escapes a body as text, which cost a
    #: 5 MB report 55 ms more and another copy of twice its size.
    binary_mark: str

    def _marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def _in(self, column: str, values: Sequence[object]) -> str:
        return f"{column} IN ({self._marks(len(values))})"

    def insert_webhooks(self, items: Sequence[NewDelivery]) -> Query:
        """One statement for the whole batch: it returns the webhooks it stored, and skips
        those already stored (provider retries)."""
        row = f"({self._marks(4)}, {self.binary_mark}, {self._marks(5)})"
        rows = ", ".join([row] * len(items))
        params: list[object] = []
        for item in items:
            params += (item.provider, item.event, item.call_id, item.dedupe_key, item.body,
                       item.received_at, item.request_id,
                       json.dumps(item.properties) if item.properties else None, item.origin,
                       json.dumps(item.credentials) if item.credentials else None)
        return (
            "INSERT INTO webhooks (provider, event, call_id, dedupe_key, body, received_at, "
            f"request_id, properties, origin, credentials) VALUES {rows} "
            "ON CONFLICT (provider, dedupe_key) DO NOTHING RETURNING id, provider, dedupe_key",
            params,
        )

    def insert_deliveries(self, rows: Sequence[tuple[int, str, NewDelivery]], now: float) -> Query:
        """A delivery for each (webhook id, destination, webhook); returns their ids."""
        values = ", ".join([f"({self._marks(6)})"] * len(rows))
        params: list[object] = []
        for webhook_id, destination, item in rows:
            params += (webhook_id, destination, item.provider, item.received_at, now, now)
        return (
            "INSERT INTO deliveries (webhook_id, destination, provider, received_at, "
            f"next_attempt_at, updated_at) VALUES {values} RETURNING id, webhook_id, destination",
            params,
        )

    def existing(self, item: NewDelivery) -> Query:
        return ("SELECT deliveries.destination, deliveries.id FROM " + JOINED +
                f" WHERE webhooks.provider = {self.mark} AND webhooks.dedupe_key = {self.mark} "
                "ORDER BY deliveries.id", (item.provider, item.dedupe_key))

    def get(self, delivery_id: int) -> Query:
        return f"SELECT {COLUMNS} FROM {JOINED} WHERE deliveries.id = {self.mark}", (delivery_id,)

    def where(self, where: DeliveryFilter) -> tuple[list[str], list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if where.states:
            clauses.append(self._in("deliveries.state", where.states))
            params += [state.value for state in where.states]
        if where.provider is not None:
            clauses.append(f"deliveries.provider = {self.mark}")
            params.append(where.provider)
        if where.destination is not None:
            clauses.append(f"deliveries.destination = {self.mark}")
            params.append(where.destination)
        if where.tried:
            clauses.append("deliveries.attempts > 0")
        if where.call_id_prefix:
            # substr instead of LIKE, so % and _ in a searched id are just characters
            clauses.append("deliveries.webhook_id IN (SELECT id FROM webhooks WHERE "
                           f"substr(call_id, 1, {self.mark}) = {self.mark})")
            params += [len(where.call_id_prefix), where.call_id_prefix]
        return clauses, params

    def listing(self, where: DeliveryFilter, before_id: int | None, limit: int) -> Query:
        clauses, params = self.where(where)
        if before_id is not None:
            clauses.append(f"deliveries.id < {self.mark}")
            params.append(before_id)
        sql = f"SELECT {LISTING_COLUMNS} FROM {JOINED}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return f"{sql} ORDER BY deliveries.id DESC LIMIT {self.mark}", (*params, limit)

    def replay(self, ids: Sequence[int] | None, where: DeliveryFilter, now: float) -> Query:
        clauses, params = self.where(where)
        clauses.append(self._in("deliveries.state", REPLAYABLE))
        params += [state.value for state in REPLAYABLE]
        if ids is not None:
            clauses.append(self._in("deliveries.id", ids) if ids else "false")
            params += list(ids)
        return (
            f"UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = {self.mark}, "
            f"updated_at = {self.mark} WHERE {' AND '.join(clauses)} RETURNING id",
            (now, now, *params),
        )

    def prune(self, received_before: float, states: Sequence[State], limit: int) -> Query:
        """Up to `limit` deliveries in `states` received before the cutoff; returns the
        webhooks they were owed from."""
        return (f"DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE {self._in('state', states)} "
                f"AND received_at < {self.mark} LIMIT {self.mark}) RETURNING webhook_id",
                (*(state.value for state in states), received_before, limit))

    def fail_unconfigured(self, destinations: Sequence[str], now: float) -> Query:
        return ("UPDATE deliveries SET state = 'failed', last_error = 'its destination is no longer "
                f"configured (RELAY_DESTINATIONS)', updated_at = {self.mark} WHERE state = 'pending' "
                f"AND NOT {self._in('destination', destinations)} RETURNING destination",
                (now, *destinations))

    def prune_webhooks(self, webhook_ids: Sequence[int]) -> Query:
        """Those of `webhook_ids` a prune left owed to no one (their bodies go with them)."""
        return (f"DELETE FROM webhooks WHERE {self._in('id', webhook_ids)} AND NOT EXISTS "
                "(SELECT 1 FROM deliveries WHERE deliveries.webhook_id = webhooks.id)", tuple(webhook_ids))

    def pause_destination(self, destination: str, reason: str, now: float) -> Query:
        return ("INSERT INTO paused_destinations (destination, reason, paused_at) VALUES "
                f"({self._marks(3)}) ON CONFLICT (destination) DO NOTHING", (destination, reason, now))

    def resume_destination(self, destination: str) -> Query:
        return f"DELETE FROM paused_destinations WHERE destination = {self.mark}", (destination,)

    def complete(self, items: Sequence[tuple[int, str, Completion]]) -> Query:
        """One UPDATE for a batch of completions (each delivery id at most once); returns
        the ids whose lease held. The CASTs give both databases the same column types
        whatever the values (PostgreSQL types an all-NULL VALUES column as text)."""
        rows = ", ".join([f"({self._marks(10)})"] * len(items))
        params: list[object] = []
        for delivery_id, token, c in items:
            params += (delivery_id, token, c.state.value, c.now, int(c.refund_attempt),
                       c.next_attempt_at, c.roark_call_id, int(c.attempt is not None),
                       c.status_code, c.error)
        has_attempt = "CAST(v.has_attempt AS INTEGER) = 1"
        return (
            "WITH v (id, token, state, now, refund, next_attempt_at, roark_call_id, has_attempt, "
            f"status_code, error) AS (VALUES {rows}) "
            "UPDATE deliveries SET state = CAST(v.state AS TEXT), lease_token = NULL, "
            "lease_expires_at = NULL, updated_at = CAST(v.now AS DOUBLE PRECISION), "
            "attempts = deliveries.attempts - CAST(v.refund AS INTEGER), "
            "next_attempt_at = coalesce(CAST(v.next_attempt_at AS DOUBLE PRECISION), deliveries.next_attempt_at), "
            "roark_call_id = coalesce(CAST(v.roark_call_id AS TEXT), deliveries.roark_call_id), "
            # a release without an attempt keeps the last result
            f"last_status = CASE WHEN {has_attempt} THEN CAST(v.status_code AS INTEGER) ELSE deliveries.last_status END, "
            f"last_error = CASE WHEN {has_attempt} THEN CAST(v.error AS TEXT) ELSE deliveries.last_error END, "
            "delivered_at = CASE WHEN CAST(v.state AS TEXT) = 'delivered' "
            "THEN CAST(v.now AS DOUBLE PRECISION) ELSE deliveries.delivered_at END "
            # The state test sits inside the join condition: as a filter of its own, once
            # SQLite had statistics, it scanned the whole table on every batch.
            "FROM v WHERE deliveries.id = CAST(v.id AS BIGINT) AND deliveries.lease_token = "
            "CASE WHEN deliveries.state = 'delivering' THEN CAST(v.token AS TEXT) END "
            "RETURNING deliveries.id",
            params,
        )

    def record_attempts(self, attempts: Sequence[tuple[int, Attempt]]) -> Query:
        rows = ", ".join([f"({self._marks(7)})"] * len(attempts))
        params: list[object] = []
        for delivery_id, a in attempts:
            params += (delivery_id, a.attempt, a.started_at, a.duration_ms, a.status_code,
                       a.error, a.outcome)
        return (
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, "
            f"status_code, error, outcome) VALUES {rows}",
            params,
        )

    def attempts(self, delivery_id: int) -> Query:
        # Numbered across replays: a replay resets the retry budget, not the history.
        return ("SELECT row_number() OVER (ORDER BY id), started_at, duration_ms, status_code, error, "
                f"outcome FROM delivery_attempts WHERE delivery_id = {self.mark} ORDER BY id", (delivery_id,))

    def report_forwarders(self, reports: Sequence[ForwarderReport]) -> Query:
        """One upsert for a batch of reports, each destination at most once (PostgreSQL
        refuses to update a row twice in one statement)."""
        rows = ", ".join([f"({self._marks(len(REPORT_FIELDS))})"] * len(reports))
        params = [getattr(report, name) for report in reports for name in REPORT_FIELDS]
        updates = ", ".join(f"{name} = excluded.{name}" for name in REPORT_FIELDS[1:])
        return (f"INSERT INTO forwarder_reports ({', '.join(REPORT_FIELDS)}) VALUES {rows} "
                f"ON CONFLICT (destination) DO UPDATE SET {updates}", params)

    def revoke_session(self, nonce: str, expires_at: float) -> Query:
        return (f"INSERT INTO revoked_sessions (nonce, expires_at) VALUES ({self._marks(2)}) "
                "ON CONFLICT (nonce) DO NOTHING", (nonce, expires_at))

    def forget_expired_sessions(self, now: float) -> Query:
        return f"DELETE FROM revoked_sessions WHERE expires_at <= {self.mark}", (now,)

    def session_revoked(self, nonce: str, now: float) -> Query:
        return (f"SELECT 1 FROM revoked_sessions WHERE nonce = {self.mark} AND expires_at > {self.mark}",
                (nonce, now))


#: The columns of `forwarder_reports`, named and ordered as ForwarderReport's fields.
REPORT_FIELDS = tuple(f.name for f in fields(ForwarderReport))
FORWARDER_REPORTS = f"SELECT {', '.join(REPORT_FIELDS)} FROM forwarder_reports"
COUNTS_BY = "SELECT {column}, state, count(*) FROM deliveries GROUP BY {column}, state"
PAUSED = "SELECT destination, reason, paused_at FROM paused_destinations"
OLDEST_PENDING = "SELECT min(received_at) FROM deliveries WHERE state IN ('pending', 'delivering')"
#: A claim sets updated_at, and nothing else touches a row while it is claimed.
OLDEST_CLAIMS = "SELECT destination, min(updated_at) FROM deliveries WHERE state = 'delivering' GROUP BY destination"


class SQLBackend(ReconciliationStore, Backend):
    """The parts of a backend that are the same SQL on every database. A subclass gives
    its statements' parameter style and its connections (`_write`, `_read`)."""

    SQL: Statements

    @abc.abstractmethod
    def _write(self, durable: bool = True) -> AbstractContextManager[Any]:
        """A connection in a transaction that commits on exit: synced before it returns
        when `durable`, else possibly later (see `Backend.claim`, `complete_many`)."""

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A connection for reading."""

    def _announce_work(self, conn: Any) -> None:
        """Tell other processes there is new due work (inside the transaction)."""

    def insert_many(self, items: Sequence[NewDelivery], now: float) -> list[Inserted]:
        # One order for every instance, so two batches sharing webhooks cannot deadlock;
        # a webhook twice in one batch is stored once (its first copy).
        firsts: dict[tuple[str, str], int] = {}
        for i in sorted(range(len(items)), key=lambda i: (items[i].provider, items[i].dedupe_key)):
            firsts.setdefault((items[i].provider, items[i].dedupe_key), i)
        with self._write() as conn:
            webhook_ids = {(provider, key): webhook_id
                           for chunk in _chunks([items[i] for i in firsts.values()])
                           for webhook_id, provider, key in conn.execute(*self.SQL.insert_webhooks(chunk)).fetchall()}
            new = [key for key in firsts if key in webhook_ids]
            stored = dict(zip(new, self._owe(conn, [(webhook_ids[key], items[firsts[key]]) for key in new], now)))
            if stored:
                self._announce_work(conn)
            for key, i in firsts.items():
                if key not in stored:
                    stored[key] = self._stored_before(conn, items[i], now)
        results = []
        for i, item in enumerate(items):
            key = (item.provider, item.dedupe_key)
            first = firsts[key] == i
            results.append(stored[key] if first else replace(stored[key], duplicate=True))
        return results

    def _owe(self, conn: Any, webhooks: Sequence[tuple[int, NewDelivery]], now: float) -> list[Inserted]:
        """The deliveries of newly stored webhooks, one per destination, in their order."""
        rows = [(webhook_id, destination, item) for webhook_id, item in webhooks for destination in item.destinations]
        ids: dict[int, dict[str, int]] = {}
        for start in range(0, len(rows), INSERT_ROWS):
            for delivery_id, webhook_id, destination in conn.execute(
                    *self.SQL.insert_deliveries(rows[start:start + INSERT_ROWS], now)).fetchall():
                ids.setdefault(webhook_id, {})[destination] = delivery_id
        return [_inserted(item, ids[webhook_id], duplicate=False) for webhook_id, item in webhooks]

    def _stored_before(self, conn: Any, item: NewDelivery, now: float) -> Inserted:
        """The deliveries of a webhook that the batch did not store, being stored already."""
        while True:
            # Stored before, or (PostgreSQL) by a concurrent transaction that committed
            # while this one waited on the unique index; a new statement sees it...
            rows = conn.execute(*self.SQL.existing(item)).fetchall()
            if rows:
                return _inserted(item, dict(rows), duplicate=True)
            # ...unless it was pruned in between: then it is new again.
            row = conn.execute(*self.SQL.insert_webhooks([item])).fetchone()
            if row is not None:
                return self._owe(conn, [(row[0], item)], now)[0]

    def complete_many(self, items: Sequence[tuple[int, str, Completion]]) -> list[bool]:
        kept = [False] * len(items)
        # Not synced: a lost completion only means one more send (Backend.complete_many).
        with self._write(durable=False) as conn:
            for round_ in _rounds(items):
                batch = [items[n] for n in round_]
                held = {i for (i,) in conn.execute(*self.SQL.complete(batch)).fetchall()}
                attempts = [(i, c.attempt) for i, _, c in batch if i in held and c.attempt]
                if attempts:
                    conn.execute(*self.SQL.record_attempts(attempts))
                for n in round_:
                    kept[n] = items[n][0] in held
        return kept

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

    def prune(self, received_before: float, states: Sequence[State], limit: int) -> int:
        if not states:
            return 0
        with self._write() as conn:
            owed_from = conn.execute(*self.SQL.prune(received_before, states, limit)).fetchall()
            if owed_from:
                conn.execute(*self.SQL.prune_webhooks(sorted({i for (i,) in owed_from})))
        return len(owed_from)

    def fail_unconfigured(self, destinations: Sequence[str], now: float) -> dict[str, int]:
        with self._write() as conn:
            return dict(Counter(d for (d,) in conn.execute(*self.SQL.fail_unconfigured(destinations, now))))

    def attempts(self, delivery_id: int) -> list[Attempt]:
        with self._read() as conn:
            rows = conn.execute(*self.SQL.attempts(delivery_id)).fetchall()
        return [Attempt(*row) for row in rows]

    def revoke_session(self, nonce: str, expires_at: float, now: float) -> None:
        with self._write() as conn:
            # Pruned here, not by retention: logouts are rare, and the table stays as
            # small as the sessions still alive whatever RELAY_RETENTION_DAYS says.
            conn.execute(*self.SQL.forget_expired_sessions(now))
            conn.execute(*self.SQL.revoke_session(nonce, expires_at))

    def session_revoked(self, nonce: str, now: float) -> bool:
        with self._read() as conn:
            return conn.execute(*self.SQL.session_revoked(nonce, now)).fetchone() is not None

    def counts_by_provider(self) -> dict[str, dict[State, int]]:
        return self._counts_by("provider")

    def counts_by_destination(self) -> dict[str, dict[State, int]]:
        return self._counts_by("destination")

    def _counts_by(self, column: str) -> dict[str, dict[State, int]]:
        counts: dict[str, dict[State, int]] = {}
        with self._read() as conn:
            for value, state, count in conn.execute(COUNTS_BY.format(column=column)):
                counts.setdefault(value, dict.fromkeys(State, 0))[State(state)] = count
        return counts

    def pause_destination(self, destination: str, reason: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(*self.SQL.pause_destination(destination, reason, now))

    def resume_destination(self, destination: str) -> bool:
        with self._write() as conn:
            resumed = conn.execute(*self.SQL.resume_destination(destination)).rowcount > 0
            if resumed:
                self._announce_work(conn)
        return resumed

    def paused_destinations(self) -> dict[str, Pause]:
        with self._read() as conn:
            return {name: Pause(reason, since) for name, reason, since in conn.execute(PAUSED)}

    def report_forwarders(self, reports: Sequence[ForwarderReport]) -> None:
        # The last of a destination's reports wins; one order for every process, so two
        # writing several rows at once cannot deadlock (PostgreSQL).
        latest = {report.destination: report for report in reports}
        if not latest:
            return
        # Not synced, like a claim: a report lost to a crash is replaced by the next one.
        with self._write(durable=False) as conn:
            conn.execute(*self.SQL.report_forwarders([latest[d] for d in sorted(latest)]))

    def forwarder_reports(self) -> dict[str, ForwarderReport]:
        with self._read() as conn:
            return {row[0]: ForwarderReport(*row) for row in conn.execute(FORWARDER_REPORTS).fetchall()}

    def oldest_pending_received_at(self) -> float | None:
        with self._read() as conn:
            (oldest,) = conn.execute(OLDEST_PENDING).fetchone()
        return oldest

    def oldest_claims(self) -> dict[str, float]:
        with self._read() as conn:
            return dict(conn.execute(OLDEST_CLAIMS).fetchall())

    def traffic(self, now: float, step: float, count: int, destination: str | None = None) -> list[traffic.Bucket]:
        with self._read() as conn:
            return traffic.buckets(conn, self.SQL.mark, now, step, count, destination)


#: Rows per INSERT statement, well within every supported SQLite's (32,766) and
#: PostgreSQL's (65,535) limit on parameters.
INSERT_ROWS = 1000
#: Body bytes per INSERT statement: both drivers copy every bound value, so twenty 5 MB
#: reports in one statement would briefly need another 100 MB.
INSERT_BYTES = 4 * 1024 * 1024


def _chunks(items: Sequence[NewDelivery]) -> list[list[NewDelivery]]:
    chunks: list[list[NewDelivery]] = [[]]
    size = 0
    for item in items:
        if chunks[-1] and (len(chunks[-1]) == INSERT_ROWS or size + len(item.body) > INSERT_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item.body)
    return chunks if chunks[0] else []


def _inserted(item: NewDelivery, deliveries: dict[str, int], duplicate: bool) -> Inserted:
    first = next((deliveries[d] for d in item.destinations if d in deliveries), min(deliveries.values()))
    return Inserted(first, duplicate, deliveries)


def _rounds(items: Sequence[tuple[int, str, Completion]]) -> list[list[int]]:
    """Positions of `items` split into rounds in which no delivery id appears twice,
    applied in order: the first completion of a lease wins, as if each ran on its own."""
    rounds: list[list[int]] = []
    seen: list[set[int]] = []
    for n, (delivery_id, _, _) in enumerate(items):
        k = next((k for k, ids in enumerate(seen) if delivery_id not in ids), len(rounds))
        if k == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[k].append(n)
        seen[k].add(delivery_id)
    return rounds
