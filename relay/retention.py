"""Retention: delivered webhooks are deleted once they are older than the retention
period, so the outbox does not grow forever. Failed ones are kept until an operator
replays or prunes them (`relay prune --failed`)."""

from __future__ import annotations

import asyncio
import time

import structlog

from relay.errors import StoreUnavailable
from relay.outbox import AsyncOutbox, State
from relay.settings import Settings

log = structlog.get_logger("relay.retention")


async def prune_delivered(outbox: AsyncOutbox, retention_days: float, now: float) -> int:
    deleted = await outbox.prune(now - retention_days * 86400, [State.DELIVERED])
    if deleted:
        log.info("retention_pruned", deleted=deleted, retention_days=retention_days)
    return deleted


async def run_retention(outbox: AsyncOutbox, settings: Settings) -> None:
    """Prune now and then every `retention_interval_seconds`; 0 days keeps everything."""
    if settings.retention_days <= 0:
        return
    while True:
        try:
            await prune_delivered(outbox, settings.retention_days, time.time())
        except StoreUnavailable as error:
            log.warning("retention_failed", error=str(error))
        await asyncio.sleep(settings.retention_interval_seconds)
