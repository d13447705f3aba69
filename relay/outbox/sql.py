"""What the two outbox backends share: the same SQL (relay.outbox.statements) run the
same way. What differs between them (claiming, connections, syncing, error mapping)
stays in their own modules."""

from __future__ import annotations

import abc
import json
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from relay.outbox import traffic
from relay.outbox.alerts import AlertStore
from relay.outbox.model import (
    Attempt,
    Completion,
    Delivery,
    DeliveryFilter,
    ForwarderReport,
    Inserted,
    NewDelivery,
    Pause,
    State,
)
from relay.outbox.reconciliation import ReconciliationStore
from relay.outbox.results import ResultStore
from relay.outbox.statements import (
    COUNTS_BY,
    FORWARDER_REPORTS,
    OLDEST_CLAIMS,
    OLDEST_PENDING,
    PAUSED,
    Statements,
)
from relay.outbox.store import Backend


def delivery_from_row(row: Sequence[object]) -> Delivery:
    values: list[Any] = list(row)  # COLUMNS in order, typed by the SQL, not the checker
    if values[5] is not None:
        values[5] = bytes(values[5])  # sqlite3 and psycopg may hand back memoryviews
    values[7] = State(values[7])
    for json_column in (18, 22):
        if values[json_column] is not None:
            values[json_column] = json.loads(values[json_column])
    return Delivery(*values)


class SQLBackend(ReconciliationStore, AlertStore, ResultStore, Backend):
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
            stored = dict(zip(new, self._owe(conn, [(webhook_ids[key], items[firsts[key]]) for key in new], now),
                              strict=True))
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
