"""The outbox's traffic over time, for the status page's charts: in equal buckets of
time, how many webhooks came in, how many reached Roark and how long that took, and how
many attempts gave up or were put back to retry.

Each count reads only the window's events, through an index on the event's time
(migration 0008), so a week of hourly buckets costs the same however many months of
history the outbox keeps. It is one statement, the same on both databases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Bucket:
    start: float  # epoch seconds; the bucket runs until the next one starts
    #: Webhooks stored, once for each destination they are owed to (a provider's
    #: duplicate sends not at all).
    received: int = 0
    #: Deliveries their destination accepted.
    delivered: int = 0
    #: Attempts after which the relay gave up on a delivery (failed until replayed).
    failed: int = 0
    #: Attempts that failed and put their delivery back to retry: the retrying view's
    #: deliveries (pending, tried at least once) as events, one per failed try.
    retrying: int = 0
    #: Seconds from receiving a webhook to delivering it, over those delivered in the bucket.
    latency_mean: float | None = None
    latency_max: float | None = None


# Events by kind; the attempts' kinds are their own outcomes (see relay.forwarding.forwarder).
_KINDS = {"received": "received", "delivered": "delivered", "giveup": "failed", "retryat": "retrying"}

# floor() needs SQLite's optional math functions, and CAST(... AS INTEGER) rounds on
# PostgreSQL where SQLite truncates: this is floor(x) on both, for the x >= 0 here.
_FLOOR = "CAST(x AS INTEGER) - CASE WHEN CAST(x AS INTEGER) > x THEN 1 ELSE 0 END"


def query(mark: str, now: float, step: float, count: int,
          destination: str | None = None) -> tuple[str, tuple[object, ...]]:
    """The statement counting events per bucket and kind, with its parameters; `mark` is
    the driver's positional parameter (sqlite3's `?`, psycopg's `%s`). With a
    `destination`, only the deliveries to it (and their attempts) count."""
    start = window(now, step, count)
    params: list[object] = []

    def events(table: str, at: str, kind: str, latency: str = "NULL", where: str = "") -> str:
        params.extend((start, step, start, start + count * step))
        if destination is not None:
            where += (" AND destination = " + mark if table == "deliveries" else
                      " AND EXISTS (SELECT 1 FROM deliveries WHERE deliveries.id = delivery_attempts.delivery_id "
                      f"AND deliveries.destination = {mark})")
            params.append(destination)
        return (f"SELECT ({at} - {mark}) / {mark} AS x, {kind} AS kind, {latency} AS latency "
                f"FROM {table} WHERE {at} >= {mark} AND {at} < {mark}{where}")

    sql = " UNION ALL ".join([
        # Naming every state lets deliveries_state_received serve a range of received_at.
        events("deliveries", "received_at", "'received'",
               where=" AND state IN ('pending', 'delivering', 'delivered', 'failed')"),
        events("deliveries", "delivered_at", "'delivered'", latency="delivered_at - received_at"),
        events("delivery_attempts", "started_at", "outcome", where=" AND outcome IN ('giveup', 'retryat')"),
    ])
    return (f"SELECT {_FLOOR} AS bucket, kind, count(*), avg(latency), max(latency) "
            f"FROM ({sql}) AS events GROUP BY bucket, kind", tuple(params))


def window(now: float, step: float, count: int) -> float:
    """Where `count` buckets of `step` seconds start when the last one holds `now`: on
    whole multiples of `step` since the epoch, so minutes and hours begin on the UTC clock."""
    return float((math.floor(now / step) - count + 1) * step)


def buckets(conn: Any, mark: str, now: float, step: float, count: int,
            destination: str | None = None) -> list[Bucket]:
    """`count` buckets of `step` seconds, oldest first, the last one holding `now` (only
    `destination`'s deliveries when given). `conn` runs a statement whose positional
    parameters are written `mark`."""
    start = window(now, step, count)
    found = [Bucket(start + n * step) for n in range(count)]
    rows = conn.execute(*query(mark, now, step, count, destination)).fetchall()
    for n, kind, events, latency_mean, latency_max in rows:
        n = min(n, count - 1)  # an event a hair before the end, rounded up by the division
        found[n] = replace(found[n], **{_KINDS[kind]: events})
        if kind == "delivered":
            found[n] = replace(found[n], latency_mean=latency_mean, latency_max=latency_max)
    return found
