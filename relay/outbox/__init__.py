"""The durable outbox: what the relay owes Roark and every other destination, with one
backend per store."""

from __future__ import annotations

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
    ROARK,
    Progress,
    Reconciliation,
    RunOutcome,
    State,
)
from relay.outbox.runner import AsyncOutbox

__all__ = [
    "Attempt",
    "AsyncOutbox",
    "Backend",
    "Completion",
    "Delivery",
    "DeliveryFilter",
    "ForwarderReport",
    "Inserted",
    "NewDelivery",
    "Pause",
    "ROARK",
    "Progress",
    "Reconciliation",
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
