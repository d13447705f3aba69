"""Retention's prune never keeps webhooks from being stored (hardening round three, 4).

A relay holding a hundred thousand delivered webhooks past their retention prunes them
at start-up, in its forwarding process, while webhooks keep arriving. Deleted in one
transaction, they held SQLite's write lock for seconds, past the busy timeout of the
server's writes, and webhooks got 503 "database is locked"; deleted a batch at a time,
every webhook is stored as it comes.
"""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from relay.outbox.sqlite import SQLiteBackend
from tests.helpers import vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

OLD_WEBHOOKS = 100_000
DAY = 86400


def seed_old_delivered(path: str, count: int, received_at: float) -> None:
    """`count` delivered webhooks received at `received_at`, of 2 KB each (a big DELETE's
    cost grows with the pages it frees)."""
    backend = SQLiteBackend(path)
    backend.migrate()
    backend.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO webhooks (provider, event, call_id, dedupe_key, body, received_at) "
            "SELECT 'vapi', 'end-of-call-report', 'old-' || i, 'end-of-call-report:id:str:old-' || i, "
            "randomblob(2000), ? FROM n", (count, received_at))
        conn.execute(
            "INSERT INTO deliveries (webhook_id, destination, provider, received_at, state, attempts, "
            "next_attempt_at, updated_at, delivered_at) SELECT id, 'roark', 'vapi', received_at, "
            "'delivered', 1, received_at, received_at, received_at FROM webhooks")


def old_rows(path: str) -> int:
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM webhooks WHERE call_id LIKE 'old-%'").fetchone()[0]


def test_webhooks_are_stored_while_retention_prunes_a_large_history(start_relay, relay_env, tmp_path):
    path = str(tmp_path / "history.db")
    seed_old_delivered(path, OLD_WEBHOOKS, time.time() - 40 * DAY)
    relay = start_relay({**relay_env, "RELAY_DATABASE_URL": f"sqlite:///{path}", "RELAY_RETENTION_DAYS": "30",
                         "RELAY_RETENTION_PAUSE_SECONDS": "0.01", "RELAY_LOG_LEVEL": "warning"})
    answers: dict[int, int] = {}
    started = time.monotonic()
    with httpx.Client(timeout=30) as http:
        n = 0
        while old_rows(path) and time.monotonic() - started < 120:
            body = with_call_id("vapi/end-of-call-report", f"during-prune-{n}")
            status = http.post(f"{relay.url}/webhooks/vapi", content=body, headers=vapi_headers()).status_code
            answers[status] = answers.get(status, 0) + 1
            n += 1
    assert old_rows(path) == 0, "retention did not finish within two minutes"
    assert answers.keys() == {200}, f"webhooks were turned away while retention pruned: {answers}"
    assert n >= 20, f"too few webhooks sent during the prune to tell: {n}"
