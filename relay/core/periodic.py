"""Background work done every so often until told to stop (retention, forwarder
reports and their reading, the forwarding process's metrics file)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


async def every(seconds: float, stop: asyncio.Event, action: Callable[[], Awaitable[object]], *,
                at_once: bool = True) -> None:
    """Await `action` every `seconds` (first at once, unless `at_once` is false) until
    `stop` is set. A stop waits for the action in progress rather than cancelling it,
    whose thread may still be using the database."""
    if not at_once and await _stopped(stop, seconds):
        return
    while not stop.is_set():
        await action()
        if await _stopped(stop, seconds):
            return


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
