"""The background reconcilers: one task per provider whose API key is configured, running
every RELAY_RECONCILE_INTERVAL_SECONDS from the relay's start, and taking over sooner a
run whose process died. A run never takes the relay down: whatever fails is logged,
counted and recorded for the status page and /health, and the next run tries again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
import structlog

from relay.core.errors import ProviderApiError, StoreError, StoreUnavailable
from relay.core.metrics import Metrics
from relay.core.timefmt import iso
from relay.outbox import AsyncOutbox, Reconciliation
from relay.providers import PROVIDERS, Provider
from relay.providers.calls import CallSource
from relay.reconciliation.api import ProviderApi
from relay.reconciliation.limits import Limits
from relay.reconciliation.run import Tally, scheduled_run
from relay.reconciliation.schedule import Timing, failing_too_long, stopped_without_finishing
from relay.settings import Settings

log = structlog.get_logger("relay.reconciliation")


def timing(settings: Settings) -> Timing:
    return Timing(settings.reconcile_interval_seconds, settings.reconcile_grace_seconds,
                  settings.reconcile_lookback_seconds)


def limits(settings: Settings) -> Limits:
    return Limits(settings.reconcile_max_pages, settings.reconcile_max_run_seconds,
                  settings.reconcile_lease_seconds)


def provider_api(settings: Settings, provider: Provider, source: CallSource, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> ProviderApi:
    return ProviderApi(provider, source, max_answer_bytes=settings.reconcile_max_answer_bytes,
                       request_interval=settings.reconcile_request_interval_seconds,
                       deadline=settings.reconcile_timeout_seconds,
                       proxy=settings.proxy_for(source.base_url), transport=transport, sleep=sleep, clock=clock)


def call_sources(settings: Settings) -> dict[str, CallSource]:
    """The providers that can be reconciled, by name: those whose API key is set."""
    return {name: source for name, provider in PROVIDERS.items()
            if (source := provider.call_source(settings.providers[name])) is not None}


class Reconcilers:
    def __init__(self, settings: Settings, outbox: AsyncOutbox, metrics: Metrics, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.timing = timing(settings)
        self.limits = limits(settings)
        self.sources = call_sources(settings) if self.timing.interval > 0 else {}
        self._outbox = outbox
        self._metrics = metrics
        self._transport = transport
        self._sleep = sleep
        self._clock = clock
        # Names the lease holder in the database, so an operator can tell instances apart.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for name, source in self.sources.items():
            provider = PROVIDERS[name]
            self._tasks.append(asyncio.create_task(self._loop(provider, source), name=f"relay-reconcile-{name}"))
            # Said at start-up, since the first run calls the provider's API at once.
            log.info("reconciliation_on", provider=name, api=source.base_url,
                     interval_seconds=self.timing.interval, grace_seconds=self.timing.grace,
                     why=f"{provider.api_key_variable} is set: {provider.title}'s API is asked now and every "
                         f"{self.timing.interval:g} s which calls ended, and those whose webhook never came "
                         "are queued",
                     turn_off="RELAY_RECONCILE_INTERVAL_SECONDS=0")

    async def stop(self) -> None:
        """Cancel the runs; one under way hands its lease back before it ends."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def api(self, provider: Provider, source: CallSource) -> ProviderApi:
        return provider_api(self.settings, provider, source, transport=self._transport, sleep=self._sleep,
                            clock=self._clock)

    async def _loop(self, provider: Provider, source: CallSource) -> None:
        api = self.api(provider, source)
        try:
            while True:
                started = time.monotonic()
                await self.run(provider, source, api)
                await self._until_due(provider, started)
        finally:
            await api.aclose()

    async def _until_due(self, provider: Provider, started: float) -> None:
        """Wait until the next run is due, an interval after `started`; or, sooner, until
        a run another process left unfinished (it died: its lease ran out) can be taken
        over. That is looked for once a lease, so it is taken over within about two."""
        while (left := self.timing.interval - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(left, self.limits.lease_seconds))
            try:
                states = await self._outbox.reconciliations()
            except StoreError:
                continue  # the run, when due, meets the same trouble and says so
            if any(state.provider == provider.name and stopped_without_finishing(state, provider.title, self._clock())
                   for state in states):
                return

    async def run(self, provider: Provider, source: CallSource, api: ProviderApi) -> Tally:
        """One scheduled run, logged and counted; it never raises but when cancelled."""
        tally = Tally()
        outcome = "failed"
        try:
            if await scheduled_run(provider, source, api, self._outbox, self.timing, self.limits, self.owner,
                                   tally, destinations=self.settings.destinations, clock=self._clock):
                outcome = "ok"
                log.info("reconcile_finished", provider=provider.name, **_counts(tally))
            else:
                outcome = "skipped"
                log.info("reconcile_skipped", provider=provider.name, reason="another instance is running it")
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        except (ProviderApiError, StoreUnavailable) as error:
            log.warning("reconcile_failed", provider=provider.name, error=str(error), **_counts(tally))
        except Exception:
            log.exception("reconcile_failed", provider=provider.name, **_counts(tally))
        finally:
            self._metrics.reconciled.labels(provider.name).inc(tally.queued)
            self._metrics.reconcile_runs.labels(provider.name, outcome).inc()
        return tally

    def problems(self, states: list[Reconciliation], now: float) -> list[str]:
        """What /health reports about the providers this relay reconciles: runs failing
        for too long, and a run whose process died before it ended."""
        return [problem for problems in self.problems_by_provider(states, now).values() for problem in problems]

    def problems_by_provider(self, states: list[Reconciliation], now: float) -> dict[str, list[str]]:
        """`problems`, by provider (providers without any are absent)."""
        found: dict[str, list[str]] = {}
        for state in states:
            if state.provider in self.sources:
                title = PROVIDERS[state.provider].title
                if problems := [problem for problem in (failing_too_long(state, title, now, self.timing.interval),
                                                        stopped_without_finishing(state, title, now)) if problem]:
                    found[state.provider] = problems
        return found


def _counts(tally: Tally) -> dict[str, object]:
    window = tally.window
    return {"window_start": iso(window.start) if window else None, "window_end": iso(window.end) if window else None,
            "listed": tally.listed, "ended": tally.ended, "already_held": tally.held, "queued": tally.queued,
            "gone": tally.gone}
