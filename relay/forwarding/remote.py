"""The forwarders as a server process sees them when they run in another process
(RELAY_FORWARD=process or off): what each last reported to the store
(relay.forwarding.background), read every REFRESH_SECONDS. They answer what /health, the status
page and the metrics ask of a forwarder (paused, why, rate limited until, what is wrong),
so those read the same attributes wherever forwarding runs.

A forwarder that stops reporting is a problem of its own: with no forwarding process
running, webhooks are acknowledged and stored but nothing is delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import structlog

from relay.core.errors import StoreUnavailable
from relay.core.names import ROARK
from relay.core.periodic import every
from relay.core.timefmt import duration
from relay.forwarding.retry import ROARK_RECEIVER, destination_receiver
from relay.forwarding.trouble import TroubleState, describe
from relay.outbox import AsyncOutbox, ForwarderReport
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding.remote")

REFRESH_SECONDS = 1.0
#: A report older than this means no forwarding process is running (they report every
#: second, relay.forwarding.background.REPORT_SECONDS).
STALE_AFTER_SECONDS = 15.0


class RemoteTrouble:
    def __init__(self, forwarder: RemoteForwarder) -> None:
        self._forwarder = forwarder

    @property
    def failing_since(self) -> float | None:
        report = self._forwarder.report
        return None if report is None else report.failing_since

    @property
    def last_failure(self) -> str | None:
        report = self._forwarder.report
        return None if report is None or report.failing_since is None else report.failure

    @property
    def last_attempt_at(self) -> float | None:
        report = self._forwarder.report
        times = [] if report is None else [t for t in (report.last_failure_at, report.last_success_at) if t]
        return max(times) if times else None

    def describe(self, now: float) -> str | None:
        forwarder = self._forwarder
        report = forwarder.report
        silent_since = forwarder.watched_since if report is None else report.reported_at
        if now - silent_since > STALE_AFTER_SECONDS:
            heard = "has not reported" if report is None else "stopped reporting"
            return (f"no forwarding process is delivering to {forwarder.receiver}: it {heard} "
                    f"for {duration(now - silent_since)} (is `relay forward` running?)")
        if report is None:
            return None
        return describe(forwarder.receiver, TroubleState(
            report.failing_since, report.last_failure_at, report.last_success_at, report.failure,
            report.failure_status), now)


class RemoteForwarder:
    def __init__(self, destination: str, watched_since: float) -> None:
        self.destination = destination
        self.receiver = (ROARK_RECEIVER if destination == ROARK else destination_receiver(destination)).name
        self.watched_since = watched_since
        self.report: ForwarderReport | None = None
        self.trouble = RemoteTrouble(self)

    @property
    def pause_reason(self) -> str | None:
        return None if self.report is None else self.report.paused_reason

    @property
    def paused(self) -> bool:
        return self.pause_reason is not None

    @property
    def rate_limited_until(self) -> float:
        return 0.0 if self.report is None else self.report.rate_limited_until


class RemoteForwarders:
    """Every configured destination's forwarder, Roark's first, as last reported."""

    def __init__(self, outbox: AsyncOutbox, settings: Settings) -> None:
        self._outbox = outbox
        now = time.time()
        self.by_destination = {name: RemoteForwarder(name, now)
                               for name in (ROARK, *(d.name for d in settings.destinations))}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def roark(self) -> RemoteForwarder:
        return self.by_destination[ROARK]

    def __iter__(self) -> Iterator[RemoteForwarder]:
        return iter(self.by_destination.values())

    def wake(self) -> None:
        """Nothing to do here: the store itself tells the forwarding process of new work."""

    def silent_since(self, now: float) -> float | None:
        """Any forwarder's report shows a forwarding process alive."""
        reports = [f.report.reported_at for f in self if f.report is not None]
        since = max(reports) if reports else min(f.watched_since for f in self)
        return since if now - since > STALE_AFTER_SECONDS else None

    async def start(self) -> None:
        """Read the reports once, then every REFRESH_SECONDS."""
        await self._refresh()
        self._task = asyncio.create_task(every(REFRESH_SECONDS, self._stop, self._refresh, at_once=False),
                                         name="relay-remote-forwarders")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def refresh(self) -> None:
        reports = await self._outbox.forwarder_reports()
        for name, forwarder in self.by_destination.items():
            forwarder.report = reports.get(name, forwarder.report)

    async def _refresh(self) -> None:
        try:
            await self.refresh()
        except StoreUnavailable as error:  # /health says the store is down
            log.debug("forwarder_reports_unavailable", error=str(error))
