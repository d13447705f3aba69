"""The traffic charts' numbers: the same buckets from both backends, read through indexes.

Webhooks go through the outbox as the forwarder drives it (insert, claim, complete with
the attempt's outcome), at chosen times.
"""

import contextlib
import json
import sqlite3

import psycopg
import pytest

from relay.outbox import Attempt, Completion, NewDelivery, State
from relay.outbox.traffic import Bucket, query, window

NOW = 1_700_000_000.0
MINUTE = 60.0
T0 = window(NOW, MINUTE, 60)  # the first of the last hour's minutes
OUTCOME_STATES = {"delivered": State.DELIVERED, "retryat": State.PENDING, "giveup": State.FAILED,
                  "pausedelivery": State.PENDING}


def receive(store, call_id: str, at: float) -> None:
    store.insert_many([NewDelivery("vapi", "end-of-call-report", call_id, call_id, b"{}", at)], at)


def attempt(store, at: float, outcome: str, *, took: float = 2.0) -> None:
    """The one due delivery is tried at `at`; the attempt ends `took` seconds later."""
    [delivery] = store.claim("token", at, 60.0, 1)
    done = at + took
    store.complete(delivery.id, "token", Completion(
        OUTCOME_STATES[outcome], now=done, next_attempt_at=done if outcome == "retryat" else None,
        refund_attempt=outcome == "pausedelivery",
        attempt=Attempt(delivery.attempts, at, took * 1000, 503 if outcome != "delivered" else 200,
                        None if outcome == "delivered" else "HTTP 503", outcome)))


@pytest.fixture
def traffic(backend):
    # received before the window, delivered in its second minute: 65 s
    receive(backend, "c", T0 - 1)
    attempt(backend, T0 + 62, "delivered")
    # retried in the first minute, delivered in the second: 67 s
    receive(backend, "a", T0 + 5)
    attempt(backend, T0 + 10, "retryat")
    attempt(backend, T0 + 70, "delivered")
    # received on the second minute's first instant, failed for good in it
    receive(backend, "b", T0 + MINUTE)
    attempt(backend, T0 + 61, "giveup")
    # retried twice in the third minute; paused (not counted) in the fourth; still pending
    receive(backend, "e", T0 + 120)
    attempt(backend, T0 + 121, "retryat")
    attempt(backend, T0 + 125, "retryat")
    attempt(backend, T0 + 190, "pausedelivery")
    # received now, in the last minute, not tried yet
    receive(backend, "d", NOW)
    return backend


def test_minutes_of_the_last_hour_count_each_event_where_it_happened(traffic):
    expected = [Bucket(T0 + n * MINUTE) for n in range(60)]
    expected[0] = Bucket(T0, received=1, retrying=1)
    expected[1] = Bucket(T0 + MINUTE, received=1, delivered=2, failed=1, latency_mean=66.0, latency_max=67.0)
    expected[2] = Bucket(T0 + 2 * MINUTE, received=1, retrying=2)
    expected[59] = Bucket(T0 + 59 * MINUTE, received=1)
    assert traffic.traffic(NOW, MINUTE, 60) == expected


def test_hours_of_the_last_week_start_on_the_hour(traffic):
    hours = traffic.traffic(NOW, 3600.0, 168)
    assert len(hours) == 168 and hours[-1].start == 1_699_999_200.0 <= NOW < hours[-1].start + 3600
    assert hours[-2] == Bucket(hours[-1].start - 3600, received=4, delivered=2, failed=1, retrying=3,
                               latency_mean=66.0, latency_max=67.0)
    assert hours[-1] == Bucket(hours[-1].start, received=1)
    assert all(bucket == Bucket(bucket.start) for bucket in hours[:-2])


def test_one_destinations_traffic_counts_its_deliveries_and_their_attempts_alone(traffic):
    # A webhook owed to Roark and crm: crm's copy fails once, then gets through.
    traffic.insert_many([NewDelivery("vapi", "end-of-call-report", "f", "f", b"{}", T0 + 180,
                                     destinations=("roark", "crm"))], T0 + 180)
    [to_crm] = traffic.claim("token", T0 + 181, 60.0, 1, destination="crm")
    traffic.complete(to_crm.id, "token", Completion(State.PENDING, now=T0 + 182, next_attempt_at=T0 + 182,
                                                    attempt=Attempt(1, T0 + 181, 1000, 503, "HTTP 503", "retryat")))
    [to_crm] = traffic.claim("token", T0 + 200, 60.0, 1, destination="crm")
    traffic.complete(to_crm.id, "token", Completion(State.DELIVERED, now=T0 + 201,
                                                    attempt=Attempt(2, T0 + 200, 1000, 200, None, "delivered")))
    crm = traffic.traffic(NOW, MINUTE, 60, "crm")
    assert crm[3] == Bucket(T0 + 3 * MINUTE, received=1, delivered=1, retrying=1, latency_mean=21.0,
                            latency_max=21.0)
    assert all(bucket == Bucket(bucket.start) for n, bucket in enumerate(crm) if n != 3)
    everyone = traffic.traffic(NOW, MINUTE, 60)
    assert everyone[3].received == 2 and everyone[3].retrying == 1  # roark's copy is still due


def test_window_starts_on_whole_steps_and_ends_with_the_one_holding_now():
    assert window(NOW, MINUTE, 60) == 1_699_996_440.0 and (NOW - T0) // MINUTE == 59
    assert window(7200.0, 3600.0, 2) == 3600.0  # an instant on the hour starts that hour
    assert window(7199.5, 3600.0, 2) == 0.0


HISTORY_ROWS = 5_000
HISTORY_DAYS = 365


@contextlib.contextmanager
def connect(url: str):
    """A plain connection to the backend's database, committing as it goes."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    else:
        conn = psycopg.connect(url, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def scanned(conn, sql: str, params) -> list[str]:
    """How the plan reads each table: 'SEARCH table USING ... INDEX name' or 'SCAN table'
    on SQLite, 'Index Only Scan name' or 'Seq Scan table' on PostgreSQL."""
    if isinstance(conn, sqlite3.Connection):
        return [detail for *_, detail in conn.execute("EXPLAIN QUERY PLAN " + sql, params)
                if detail.startswith(("SEARCH", "SCAN")) and detail != "SCAN events"]
    [[plan]] = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    found, nodes = [], [plan["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Relation Name" in node:
            found.append(f"{node['Node Type']} {node.get('Index Name', node['Relation Name'])}")
        nodes += node.get("Plans", [])
    return found


@pytest.mark.parametrize("step, count", [(MINUTE, 60), (3600.0, 168)])
def test_a_window_is_read_through_indexes_however_long_the_history(backend, outbox_url, step, count):
    mark = backend.SQL.mark
    spacing = HISTORY_DAYS * 86400 / HISTORY_ROWS
    received = [NOW - n * spacing for n in range(HISTORY_ROWS)]
    backend.insert_many([NewDelivery("vapi", "e", None, str(at), b"{}", at) for at in received], NOW)
    with connect(outbox_url) as conn:
        conn.execute("UPDATE deliveries SET state = 'delivered', delivered_at = received_at + 2")
        conn.execute("INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, outcome) "
                     "SELECT id, 1, received_at + 1, 20, CASE WHEN id % 10 = 0 THEN 'delivered' ELSE 'retryat' END "
                     "FROM deliveries")
        conn.execute("ANALYZE" if isinstance(conn, sqlite3.Connection)
                     else "VACUUM ANALYZE deliveries, delivery_attempts")
        plan = scanned(conn, *query(mark, NOW, step, count))
    if mark == "?":
        assert sorted(plan) == [
            "SEARCH deliveries USING COVERING INDEX deliveries_delivered (delivered_at>? AND delivered_at<?)",
            "SEARCH deliveries USING COVERING INDEX deliveries_state_received "
            "(state=? AND received_at>? AND received_at<?)",
            "SEARCH delivery_attempts USING COVERING INDEX delivery_attempts_started "
            "(started_at>? AND started_at<?)",
        ], json.dumps(plan)
    else:
        assert sorted(plan) == ["Index Only Scan deliveries_delivered", "Index Only Scan deliveries_state_received",
                                "Index Only Scan delivery_attempts_started"], json.dumps(plan)
