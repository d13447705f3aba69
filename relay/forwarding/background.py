"""The relay's background work, started and stopped together: a forwarder per
destination, reconciliation, Roark's verdicts (RELAY_RESULTS) and retention. It runs in the server process
(RELAY_FORWARD=inline, and apps made in process by tests) or in a forwarding process of
its own (`relay forward`, which `relay serve` starts by default).

Run in a process of its own, it also reports each forwarder's state to the store every
REPORT_SECONDS, which is how the server's /health, status page and metrics learn that
Roark is refusing the key or failing every attempt (relay.forwarding.remote).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from relay.core.errors import StoreUnavailable
from relay.core.metrics import Metrics
from relay.core.names import ROARK
from relay.core.periodic import every
from relay.forwarding.destination import DestinationClient
from relay.forwarding.forwarder import Forwarder, Forwarders
from relay.forwarding.retention import run_retention
from relay.forwarding.roark import RoarkClient
from relay.outbox import AsyncOutbox
from relay.reconciliation.service import Reconcilers
from relay.results import ResultFetcher
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding.background")

#: How often a forwarding process writes its forwarders' state to the store.
REPORT_SECONDS = 1.0


class Background:
    def __init__(self, settings: Settings, outbox: AsyncOutbox, metrics: Metrics, *, report: bool = False) -> None:
        self._settings = settings
        self._outbox = outbox
        self._report = report
        self.forwarders = Forwarders(outbox, [
            Forwarder(outbox, RoarkClient(settings), settings, metrics),
            *(Forwarder(outbox, DestinationClient(d, settings.proxy_for(d.url)), settings, metrics,
                        destination=d.name, concurrency=d.concurrency) for d in settings.destinations),
        ])
        self.reconcilers = Reconcilers(settings, outbox, metrics)
        self.results = ResultFetcher(settings, outbox, metrics) if settings.results else None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._fail_unconfigured()
        self.forwarders.start()
        self.reconcilers.start()
        if self.results is not None:
            await self.results.start()
        self._tasks.append(asyncio.create_task(run_retention(self._outbox, self._settings, self._stop),
                                               name="relay-retention"))
        if self._report:
            self._tasks.append(asyncio.create_task(every(REPORT_SECONDS, self._stop, self._report_forwarders),
                                                   name="relay-reports"))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self.results is not None:
            await self.results.stop()
        await self.reconcilers.stop()
        await self.forwarders.stop()

    async def _fail_unconfigured(self) -> None:
        """Deliveries owed to a destination no longer configured would stay pending (and
        /health degraded) for ever: they fail, saying how to replay them."""
        configured = [ROARK, *(d.name for d in self._settings.destinations)]
        try:
            failed = await self._outbox.fail_unconfigured(configured, time.time())
        except StoreUnavailable as error:  # the next start tries again; nothing is lost
            log.warning("unconfigured_destinations_not_checked", error=str(error))
            return
        for destination, count in failed.items():
            log.warning("destination_no_longer_configured", destination=destination, failed=count,
                        replay=f"add it back to RELAY_DESTINATIONS, then relay replay --all-failed "
                               f"--destination {destination}")

    async def _report_forwarders(self) -> None:
        now = time.time()
        try:
            await self._outbox.report_forwarders([f.report(now) for f in self.forwarders])
        except StoreUnavailable as error:  # the server says the reports stopped coming
            log.warning("forwarder_report_failed", error=str(error))
