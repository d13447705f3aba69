"""Retention: delivered webhooks are deleted once they are older than the retention
period, so the outbox does not grow forever. Failed ones are kept until an operator
replays or prunes them (`relay prune --failed`).

Deleting happens PRUNE_BATCH deliveries per transaction, with a pause between them in
which the write lock is free: on SQLite one transaction deleting a month of history held
the lock long enough for webhooks arriving meanwhile to be answered 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog

from relay.core.errors import StoreUnavailable
from relay.core.periodic import every
from relay.outbox import AsyncOutbox, State
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding.retention")

#: Deliveries deleted per transaction: milliseconds of the write lock each.
PRUNE_BATCH = 500


async def prune(outbox: AsyncOutbox, received_before: float, states: Sequence[State], pause: float,
                stop: asyncio.Event | None = None) -> int:
    """Delete the deliveries in `states` received before the cutoff, PRUNE_BATCH at a time
    with `pause` seconds between; returns how many. A `stop` ends it between batches."""
    deleted = 0
    while stop is None or not stop.is_set():
        batch = await outbox.prune(received_before, states, PRUNE_BATCH)
        deleted += batch
        if batch < PRUNE_BATCH:
            break
        await asyncio.sleep(pause)
    return deleted


async def run_retention(outbox: AsyncOutbox, settings: Settings, stop: asyncio.Event) -> None:
    """Prune now and then every `retention_interval_seconds` until `stop` is set; 0 days
    keeps everything. Stopping ends a prune between two batches rather than cancelling
    one while its thread still uses the database."""
    if settings.retention_days <= 0:
        return

    async def prune_delivered() -> None:
        try:
            deleted = await prune(outbox, time.time() - settings.retention_days * 86400, [State.DELIVERED],
                                  settings.retention_pause_seconds, stop)
        except StoreUnavailable as error:
            log.warning("retention_failed", error=str(error))
            return
        if deleted:
            log.info("retention_pruned", deleted=deleted, retention_days=settings.retention_days)

    await every(settings.retention_interval_seconds, stop, prune_delivered)
