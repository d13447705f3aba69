"""The durable outbox: what the relay owes Roark and every other destination.

    model.py         the records and states
    store.py         the contract every backend fulfils, a protocol per concern
    statements.py    the SQL both backends run, written once
    sql.py           how both run it; sqlite.py and postgres.py, what differs per store
    runner.py        the backend from the event loop (AsyncOutbox), with group commits
    startup.py       waiting for the database at start-up
    traffic.py       the status page charts' figures
    reconciliation.py  reconciliation's part: leases, progress, what is held
    alerts.py        alerts' part: alerts, their messages, channels, mutes, dead letters
    results.py       Roark's verdicts: owed fetches, leases, what Roark answered
    leases.py        the leased claim alert messages and verdict fetches share
    migrations/      the schema's history
"""

from __future__ import annotations

from relay.outbox.model import (
    Alert,
    AlertMessage,
    Attempt,
    BadCalls,
    ChannelHealth,
    Completion,
    DeadLetters,
    Delivery,
    DeliveryFilter,
    ForwarderReport,
    Inserted,
    MessageType,
    NewDelivery,
    Pause,
    Progress,
    Reconciliation,
    Result,
    ResultState,
    RunOutcome,
    State,
)
from relay.outbox.runner import AsyncOutbox
from relay.outbox.store import Backend

__all__ = [
    "Alert",
    "AlertMessage",
    "AsyncOutbox",
    "Attempt",
    "Backend",
    "BadCalls",
    "ChannelHealth",
    "Completion",
    "DeadLetters",
    "Delivery",
    "DeliveryFilter",
    "ForwarderReport",
    "Inserted",
    "MessageType",
    "NewDelivery",
    "Pause",
    "Progress",
    "Reconciliation",
    "Result",
    "ResultState",
    "RunOutcome",
    "State",
    "open_backend",
]


def open_backend(database_url: str, *, pool_size: int = 10) -> Backend:
    """The backend for a validated `RELAY_DATABASE_URL` (see `relay.settings`);
    `pool_size` bounds a Postgres backend's connections."""
    if database_url.startswith(("postgres://", "postgresql://")):
        from relay.outbox.postgres import PostgresBackend

        return PostgresBackend(database_url, pool_size=pool_size)
    from relay.outbox.sqlite import SQLiteBackend

    return SQLiteBackend(database_url.removeprefix("sqlite:///"))
