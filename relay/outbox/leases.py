"""The claim both small job tables share (alert messages, Roark's verdicts to fetch):
lease up to a number of due rows, the earliest first, as deliveries are claimed."""

from __future__ import annotations

from collections.abc import Sequence


def claim_due(mark: str, table: str, key: str, due_column: str, returning: str, token: str, now: float,
              lease_seconds: float, limit: int) -> tuple[str, Sequence[object]]:
    """An UPDATE leasing up to `limit` pending rows of `table` due by `now` (by
    `due_column`) whose lease, if any, has run out; `key` names a row (a column, or a
    parenthesised list of them)."""
    # The conditions are repeated outside the subquery: a row another instance claimed
    # meanwhile no longer matches them when PostgreSQL re-reads it after the wait.
    due = (f"state = 'pending' AND {due_column} <= {mark} "
           f"AND (lease_expires_at IS NULL OR lease_expires_at <= {mark})")
    key_columns = key.strip("()")
    return (f"UPDATE {table} SET lease_token = {mark}, lease_expires_at = {mark} WHERE {key} IN "
            f"(SELECT {key_columns} FROM {table} WHERE {due} ORDER BY {due_column}, {key_columns} LIMIT {mark}) "
            f"AND {due} RETURNING {returning}",
            (token, now + lease_seconds, now, now, limit, now, now))
