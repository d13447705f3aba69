"""/health, for load balancers and people, and /metrics, for Prometheus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from relay import __version__
from relay.core.errors import NotFound, StoreUnavailable
from relay.core.metrics import Metrics
from relay.core.names import ROARK
from relay.core.timefmt import now_iso
from relay.forwarding.trouble import stuck
from relay.forwarding.view import ForwarderView
from relay.http.services import Services
from relay.outbox import AsyncOutbox, Pause, Reconciliation, State
from relay.web.requests import store_unavailable
from relay.web.responses import JSONResponse

#: Longest /health waits for the database before calling it unreachable.
HEALTH_TIMEOUT_SECONDS = 2.0


class Health:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def health(self, request: Request) -> JSONResponse:
        """Roark's HealthResponse shape: unhealthy (503) when the outbox is unreachable,
        degraded when delivery to Roark or a destination is paused or stopped, every
        attempt of the last minute to one of them failed, a delivery to one of them has
        been in flight past its timeout, the backlog is older than the threshold, or a
        provider's reconciliation has failed for longer than two intervals (or its run
        died).

        Anyone may ask how the relay is; only the admin token (as a Bearer) is told why,
        and which destination: the reasons can name a refused key or carry a redirect's
        Location, and the destinations' names are the team's own. Others see Roark's
        delivery and the destinations' together (`destinations_delivery`)."""
        services = self.services
        auth = services.admin_auth
        explain = auth is not None and auth.bearer(request) is not None
        if auth is not None and explain:
            auth.require_bearer(request)
        settings, outbox = services.settings, services.outbox
        problems: list[str] = []
        backlog_age = None
        stopped: dict[str, Pause] = {}
        claims: dict[str, float] = {}
        reconciliations: list[Reconciliation] = []
        now = time.time()
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                oldest = await outbox.oldest_pending_received_at()
                claims = await outbox.oldest_claims()
                if settings.destinations:  # only a destination can be stopped, never Roark
                    stopped = await outbox.paused_destinations()
                if services.reconcilers.sources:
                    reconciliations = await outbox.reconciliations()
            database = "healthy"
            backlog_age = 0.0 if oldest is None else max(0.0, now - oldest)
        except (StoreUnavailable, TimeoutError):
            database = "unhealthy"
            problems.append("the outbox database is unreachable")
        dependencies = {"database": database}
        for forwarder in services.forwarders:
            name = forwarder.destination
            troubles = delivery_problems(forwarder, stopped.get(name), claims.get(name), settings.timeout_of(name),
                                         now)
            if name == ROARK and backlog_age is not None and backlog_age > settings.pending_age_degraded_seconds:
                troubles.append(f"oldest undelivered webhook is {backlog_age:.0f} s old "
                                f"(threshold {settings.pending_age_degraded_seconds:g} s)")
            problems += troubles
            health = "degraded" if troubles and database == "healthy" else "healthy"
            key = f"{name}_delivery" if explain or name == ROARK else "destinations_delivery"
            dependencies[key] = "degraded" if dependencies.get(key) == "degraded" else health
        if services.reconcilers.sources:
            missed = services.reconcilers.problems(reconciliations, now)
            dependencies["reconciliation"] = "degraded" if missed else "healthy"
            problems += missed
        status = ("unhealthy" if database == "unhealthy" else
                  "degraded" if "degraded" in dependencies.values() else "healthy")
        data = {
            "status": status,
            "version": __version__,
            "timestamp": now_iso(),
            "uptime_seconds": int(time.monotonic() - services.started_monotonic),
            "dependencies": dependencies,
        }
        if explain:
            data |= {
                "oldest_pending_age_seconds": None if backlog_age is None else round(backlog_age, 1),
                "delivery_paused": services.forwarders.roark.paused,
                "problems": problems,
            }
        return JSONResponse({"data": data}, status_code=503 if status == "unhealthy" else 200)

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition; scrapers authenticate with the admin token as a Bearer."""
        services = self.services
        if services.admin_auth is None:
            raise NotFound("/metrics is disabled until RELAY_ADMIN_TOKEN is set")
        services.admin_auth.require_bearer(request)
        child = services.forwarding_process
        try:
            body = await exposition(services.metrics, services.outbox,
                                    {f.destination: f.paused for f in services.forwarders},
                                    None if child is None else child.metrics())
        except StoreUnavailable as error:
            raise store_unavailable(f"metrics need the outbox: {error}") from None
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def delivery_problems(forwarder: ForwarderView, stopped: Pause | None, claimed_at: float | None,
                      timeout: float, now: float) -> list[str]:
    """What keeps a forwarder's deliveries from arriving, as an operator should read it."""
    found = []
    if stopped is not None:
        found.append(stopped.reason)
    elif forwarder.paused:
        found.append(f"delivery paused: {forwarder.pause_reason}")
    elif trouble := forwarder.trouble.describe(now):
        found.append(trouble)
    if held := stuck(forwarder.receiver, claimed_at, timeout, now):
        found.append(held)
    return found


async def exposition(metrics: Metrics, outbox: AsyncOutbox, paused: Mapping[str, bool],
                     background: bytes | None = None) -> bytes:
    """The metrics, with what the outbox holds read now. `paused`: every destination, and
    whether its forwarder holds back for now; `background`: the exposition of a
    forwarding process's `background` registry, to show instead of this process's own."""
    counts = await outbox.counts_by_destination()
    stopped = await outbox.paused_destinations()
    oldest = await outbox.oldest_pending_received_at()
    for destination, held in paused.items():
        for state in State:
            metrics.queue_depth.labels(destination, state.value).set(counts.get(destination, {}).get(state, 0))
        metrics.paused.labels(destination).set(int(held or destination in stopped))
    metrics.oldest_pending_age.set(0 if oldest is None else max(0.0, time.time() - oldest))
    for reconciliation in await outbox.reconciliations():
        if reconciliation.last_success_at is not None:
            metrics.reconcile_last_success.labels(reconciliation.provider).set(reconciliation.last_success_at)
    return generate_latest(metrics.registry) + (background or generate_latest(metrics.background))
