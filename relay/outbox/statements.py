"""The SQL statements both outbox backends run, written once and rendered in each
driver's parameter style (sqlite3's `?`, psycopg's `%s`).

Inserts and completions are one statement per batch (a multi-row INSERT, an UPDATE
joined to the batch's VALUES), so a group commit costs a few statements however many
webhooks it holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields

from relay.outbox.alerts import AlertStatements
from relay.outbox.model import (
    Attempt,
    Completion,
    DeliveryFilter,
    ForwarderReport,
    NewDelivery,
    State,
)
from relay.outbox.reconciliation import ReconciliationStatements
from relay.outbox.results import ResultStatements

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


@dataclass(frozen=True)
class Statements(ReconciliationStatements, AlertStatements, ResultStatements):
    mark: str  # a positional parameter
    #: A parameter sent as bytes: psycopg otherwise escapes a body as text, which costs a
    #: large report time and another copy of twice its size.
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
        if where.classification is not None:
            clauses.append("deliveries.id IN (SELECT delivery_id FROM results WHERE kind = 'evaluation' "
                           f"AND classification = {self.mark})")
            params.append(where.classification)
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
            f"last_status = CASE WHEN {has_attempt} THEN CAST(v.status_code AS INTEGER) "
            "ELSE deliveries.last_status END, "
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
