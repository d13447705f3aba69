"""Retention: delivered webhooks are deleted once they are older than the retention
period, so the outbox does not grow forever. Failed ones are kept until an operator
replays or prunes them (`relay prune --failed`)."""

from __future__ import annotations

import asyncio
import time

import structlog

from relay.errors import StoreUnavailable
from relay.outbox import AsyncOutbox, State
from relay.periodic import every
from relay.settings import Settings

log = structlog.get_logger("relay.retention")


async def prune_delivered(outbox: AsyncOutbox, retention_days: float, now: float) -> int:
    deleted = await outbox.prune(now - retention_days * 86400, [State.DELIVERED])
    if deleted:
        log.info("retention_pruned", deleted=deleted, retention_days=retention_days)
    return deleted


async def run_retention(outbox: AsyncOutbox, settings: Settings, stop: asyncio.Event) -> None:
    """Prune now and then every `retention_interval_seconds` until `stop` is set; 0 days
    keeps everything. Stopping lets a prune in progress finish rather than cancelling it
    while its thread still uses the database."""
    if settings.retention_days <= 0:
        return

    async def prune() -> None:
        try:
            await prune_delivered(outbox, settings.retention_days, time.time())
        except StoreUnavailable as error:
            log.warning("retention_failed", error=str(error))

    await every(settings.retention_interval_seconds, stop, prune)
