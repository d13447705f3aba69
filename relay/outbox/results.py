"""The outbox's part in Roark's verdicts (relay.results): which delivered calls are owed a
fetch of each kind, claiming the due fetches under a lease (so instances sharing a
database fetch each once), recording what Roark answered, and reading the verdicts back
for the page, the API, the CLI and the evaluation alert. Written once for both
backends, like the rest of the outbox's SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from relay.core.names import ROARK
from relay.outbox.leases import claim_due
from relay.outbox.model import BadCalls, Result, ResultState

Query = tuple[str, Sequence[object]]

RESULT_COLUMNS = ("results.delivery_id, results.kind, results.roark_call_id, results.state, results.attempts, "
                  "results.due_from, results.next_fetch_at, results.fetched_at, results.last_status, "
                  "results.last_error, results.data, results.score, results.classification, results.completed_at, "
                  "webhooks.provider, webhooks.call_id")
RESULTS_JOINED = ("results JOIN deliveries ON deliveries.id = results.delivery_id "
                  "JOIN webhooks ON webhooks.id = deliveries.webhook_id")
LAST_SCHEDULED = "SELECT max(due_from) FROM results"
#: Call ids and summaries an evaluation alert names.
SHOWN = 5


def result_from_row(row: Sequence[Any], lease_token: str | None = None) -> Result:
    values = list(row)
    values[3] = ResultState(values[3])
    if values[10] is not None:
        values[10] = json.loads(values[10])
    return replace(Result(*values), lease_token=lease_token)


class ResultStatements:
    """Mixed into `relay.outbox.statements.Statements`, whose parameter mark they use."""

    mark: str
    _marks: Any  # (count) -> "mark, mark, ..."
    _in: Any  # (column, values) -> "column IN (marks)"

    def delivered_since(self, after: float, limit: int) -> Query:
        m = self.mark
        return (f"SELECT id, roark_call_id, delivered_at FROM deliveries WHERE destination = '{ROARK}' "
                f"AND state = 'delivered' AND roark_call_id IS NOT NULL AND delivered_at > {m} "
                f"ORDER BY delivered_at LIMIT {m}", (after, limit))

    def schedule(self, rows: Sequence[tuple[int, str, str, float]]) -> Query:
        """(delivery id, kind, Roark's call id, first fetch) each."""
        values = ", ".join([f"({self._marks(5)})"] * len(rows))
        params: list[object] = []
        for delivery_id, kind, call_id, due in rows:
            params += [delivery_id, kind, call_id, due, due]
        return (f"INSERT INTO results (delivery_id, kind, roark_call_id, due_from, next_fetch_at) VALUES {values} "
                "ON CONFLICT (delivery_id, kind) DO NOTHING", params)

    def claim_results(self, token: str, now: float, lease_seconds: float, limit: int) -> Query:
        return claim_due(self.mark, "results", "(delivery_id, kind)", "next_fetch_at", "delivery_id, kind",
                         token, now, lease_seconds, limit)

    def results_of(self, delivery_ids: Sequence[int]) -> Query:
        return (f"SELECT {RESULT_COLUMNS} FROM {RESULTS_JOINED} WHERE {self._in('results.delivery_id', delivery_ids)}",
                list(delivery_ids))

    def record_result(self, result: Result, state: ResultState, next_fetch_at: float, fetched: bool,
                      status: int | None, error: str | None, data: Any, score: float | None,
                      classification: str | None, now: float, counted: bool) -> Query:
        m = self.mark
        sets = (f"state = {m}, next_fetch_at = {m}, last_status = {m}, last_error = {m}, "
                "lease_token = NULL, lease_expires_at = NULL")
        params: list[object] = [state.value, next_fetch_at, status, error]
        if counted:
            sets += ", attempts = attempts + 1"
        if fetched:
            sets += f", fetched_at = {m}"
            params.append(now)
        if data is not None:
            sets += f", data = {m}, score = {m}, classification = {m}"
            params += [json.dumps(data), score, classification]
        if state is ResultState.COMPLETED:
            sets += f", completed_at = {m}"
            params.append(now)
        return (f"UPDATE results SET {sets} WHERE delivery_id = {m} AND kind = {m} AND lease_token = {m}",
                (*params, result.delivery_id, result.kind, result.lease_token))

    def list_results(self, kind: str | None, classification: str | None, since: float | None,
                     before_id: int | None, limit: int) -> Query:
        m = self.mark
        clauses, params = [], []
        for clause, value in ((f"results.kind = {m}", kind), (f"results.classification = {m}", classification),
                              (f"results.completed_at >= {m}", since), (f"results.delivery_id < {m}", before_id)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return (f"SELECT {RESULT_COLUMNS} FROM {RESULTS_JOINED}{where} "
                f"ORDER BY results.delivery_id DESC, results.kind LIMIT {m}", (*params, limit))

    def bad_calls(self, since: float, score_below: float, limit: int | None) -> Query:
        m = self.mark
        bad = (f"results.kind = 'evaluation' AND results.state = 'completed' AND results.completed_at > {m} "
               f"AND (results.classification = 'failure' OR results.score < {m})")
        if limit is None:
            return (f"SELECT count(*), min(results.completed_at), max(results.completed_at) FROM results WHERE {bad}",
                    (since, score_below))
        return (f"SELECT webhooks.call_id, results.data FROM {RESULTS_JOINED} WHERE {bad} "
                f"ORDER BY results.completed_at DESC LIMIT {m}", (since, score_below, limit))


class ResultStore:
    """Mixed into `relay.outbox.sql.SQLBackend`, whose connections and statements they use."""

    SQL: Any
    _write: Any
    _read: Any

    def last_scheduled(self) -> float | None:
        with self._read() as conn:
            (last,) = conn.execute(LAST_SCHEDULED).fetchone()
        return last

    def schedule_results(self, kinds: Sequence[str], delay: float, after: float, limit: int) -> float | None:
        with self._read() as conn:
            delivered = conn.execute(*self.SQL.delivered_since(after, limit)).fetchall()
        if not delivered or not kinds:
            return None
        rows = [(delivery_id, kind, call_id, at + delay) for delivery_id, call_id, at in delivered for kind in kinds]
        # Not synced: a schedule lost to a crash is made again from the deliveries.
        with self._write(durable=False) as conn:
            conn.execute(*self.SQL.schedule(rows))
        return max(at for _, _, at in delivered)

    def claim_results(self, token: str, now: float, lease_seconds: float, limit: int) -> list[Result]:
        # Not synced, like every claim.
        with self._write(durable=False) as conn:
            keys = conn.execute(*self.SQL.claim_results(token, now, lease_seconds, limit)).fetchall()
            if not keys:
                return []
            rows = conn.execute(*self.SQL.results_of(sorted({d for d, _ in keys}))).fetchall()
        claimed = set(map(tuple, keys))
        return [result_from_row(row, token) for row in rows if (row[0], row[1]) in claimed]

    def record_result(self, result: Result, state: ResultState, next_fetch_at: float, *, fetched: bool = True,
                      status: int | None = None, error: str | None = None, data: Any = None,
                      score: float | None = None, classification: str | None = None, now: float,
                      counted: bool = True) -> bool:
        with self._write() as conn:
            return conn.execute(*self.SQL.record_result(result, state, next_fetch_at, fetched, status, error, data,
                                                        score, classification, now, counted)).rowcount == 1

    def results_for(self, delivery_ids: Sequence[int]) -> dict[int, dict[str, Result]]:
        if not delivery_ids:
            return {}
        found: dict[int, dict[str, Result]] = {}
        with self._read() as conn:
            for row in conn.execute(*self.SQL.results_of(list(delivery_ids))).fetchall():
                result = result_from_row(row)
                found.setdefault(result.delivery_id, {})[result.kind] = result
        return found

    def list_results(self, kind: str | None = None, classification: str | None = None, since: float | None = None,
                     before_id: int | None = None, limit: int = 50) -> list[Result]:
        with self._read() as conn:
            return [result_from_row(row) for row in conn.execute(
                *self.SQL.list_results(kind, classification, since, before_id, limit)).fetchall()]

    def bad_calls(self, since: float, score_below: float) -> BadCalls | None:
        with self._read() as conn:
            count, first, last = conn.execute(*self.SQL.bad_calls(since, score_below, None)).fetchone()
            if not count:
                return None
            examples = conn.execute(*self.SQL.bad_calls(since, score_below, SHOWN)).fetchall()
        summaries = []
        for _, data in examples:
            runs = json.loads(data) if data else []
            summaries += [f"{run.get('evaluator', {}).get('name', 'evaluator')}: {run['summary']}"
                          for run in runs if isinstance(run, dict) and run.get("summary")][:1]
        return BadCalls(count, first, last, tuple(c for c, _ in examples if c), tuple(summaries))
