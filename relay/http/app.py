"""The Starlette application: the services its endpoints are handed (built once here),
its routes, how errors are rendered, and the lifespan that starts and stops what runs."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from relay import __version__
from relay.admin import admin_routes
from relay.admin.auth import AdminAuth
from relay.admin.operations import Operations
from relay.admin.throttle import LoginThrottle
from relay.alerts import Monitor
from relay.core.budget import ByteBudget
from relay.core.errors import HTTPError, MethodNotAllowed, NotFound, StoreUnavailable
from relay.core.metrics import Metrics
from relay.forwarding.background import Background
from relay.forwarding.remote import RemoteForwarders
from relay.forwarding.supervisor import ForwardingProcess
from relay.forwarding.view import ForwarderViews
from relay.http.health import Health
from relay.http.ingest import Ingest
from relay.http.passthrough import PassThrough
from relay.http.services import Services
from relay.outbox import AsyncOutbox, open_backend
from relay.outbox.startup import migrate_when_available_async, startup_patience
from relay.reconciliation.service import Reconcilers
from relay.settings import Settings
from relay.web.bodies import Pace
from relay.web.requests import REQUEST_ID_HEADER, RequestMiddleware, error_response, request_id, store_unavailable
from relay.web.responses import JSONResponse

log = structlog.get_logger("relay.http.app")


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPError)
    return error_response(request, exc)


async def handle_starlette_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        # RFC 9110: a 405 names the methods that are allowed (Starlette's Allow header).
        return error_response(request, MethodNotAllowed(f"{request.method} is not allowed here",
                                                        headers=dict(exc.headers or {})))
    return error_response(request, NotFound(f"no route for {request.url.path}"))


async def handle_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """An outbox the admin API or a page needs is down: 503 to try again, not a 500.
    (Webhooks answer their own 503 in relay.http.ingest, with the wait bounded.)"""
    log.error("store_unavailable", request_id=request_id(request), path=request.url.path, error=str(exc))
    return error_response(request, store_unavailable(f"the relay's database is unavailable; retry later ({exc})"))


def unexpected_error_response(request: Request) -> JSONResponse:
    """A 500 for an exception no handler expected, logged with its traceback (call it
    from the `except` block)."""
    log.exception("unhandled_error", request_id=request_id(request), path=request.url.path)
    return error_response(request, HTTPError("internal error; the request id identifies it in the relay's logs"))


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    response = unexpected_error_response(request)
    # Starlette answers this from outside RequestMiddleware, which adds the id to the others.
    if this_id := request_id(request):
        response.headers[REQUEST_ID_HEADER] = this_id
    return response


class WebhookEndpoint:
    """`Ingest.receive` as a bare ASGI app, rendering its own errors (see Relay)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.ingest.receive(request)
        except HTTPError as error:
            response = error_response(request, error)
        except Exception:  # noqa: BLE001  (any other failure is a logged 500, never a dropped connection)
            response = unexpected_error_response(request)
        await response(scope, receive, send)


#: A provider's webhook endpoint, with an optional source (relay.http.sources).
WEBHOOK_PATH = re.compile(r"/webhooks/([^/]+)(?:/([^/]+))?")


class Relay(Starlette):
    """Starlette, except that a webhook (POST /webhooks/...) goes to its endpoint ahead of
    the middleware stack and router, through RequestMiddleware alone.

    The webhook endpoint is the one path where the relay's CPU per request bounds its
    throughput, and each layer Starlette puts before a route (error middleware, exception
    middleware, router, route, request-response wrapper, each wrapping `send` again) is
    paid on every webhook; the endpoint renders its own errors, so it needs none of them.
    Everything else (other methods on these paths included) takes the usual way."""

    def __init__(self, webhooks: WebhookEndpoint, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._webhooks = RequestMiddleware(webhooks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" \
                and (match := WEBHOOK_PATH.fullmatch(scope["path"])):
            provider, source = match.groups()
            scope["app"] = self
            scope["path_params"] = {"provider": provider} if source is None else \
                {"provider": provider, "source": source}
            await self._webhooks(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, login_throttle: LoginThrottle | None = None,
               forwarding: str = "inline", forwarding_process: ForwardingProcess | None = None) -> Relay:
    """The relay; `login_throttle` replaces the default one (tests give it a clock).
    `forwarding`: where the forwarders run (RELAY_FORWARD: process, inline or off); in
    process by default, for apps served in a test's own process. `forwarding_process`:
    the child to supervise with "process", when it was started already (`relay serve`
    forks it before the server starts a thread; otherwise one is spawned here)."""
    outbox = AsyncOutbox(open_backend(settings.database_url, pool_size=settings.database_pool_size))
    metrics = Metrics()
    forwarders: ForwarderViews
    background = remote = None
    if forwarding == "inline":
        background = Background(settings, outbox, metrics)
        forwarders, reconcilers = background.forwarders, background.reconcilers
    else:
        remote = forwarders = RemoteForwarders(outbox, settings)
        # Not started: it tells /health and the status page what is reconciled.
        reconcilers = Reconcilers(settings, outbox, metrics)
    services = Services(
        settings=settings,
        outbox=outbox,
        metrics=metrics,
        forwarders=forwarders,
        reconcilers=reconcilers,
        pass_through=PassThrough(settings.proxy_for, ByteBudget(settings.pass_through_budget_bytes),
                                 settings.pass_through_connections),
        unverified_bodies=ByteBudget(settings.unverified_body_budget_bytes,
                                     settings.unverified_body_budget_per_client_bytes),
        verified_bodies=ByteBudget(settings.verified_body_budget_bytes),
        body_pace=Pace.of(settings),
        admin_auth=AdminAuth(settings.admin_token, outbox) if settings.admin_token else None,
        forwarding_process=(forwarding_process or ForwardingProcess(settings.shutdown_grace_seconds))
        if forwarding == "process" else None,
        started_monotonic=time.monotonic(),
    )

    # Every instance watches; the store makes each alert and message happen once.
    monitor = Monitor(settings, outbox, metrics, forwarders, reconcilers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for warning in settings.unknown_variable_warnings():
            log.warning("unknown_setting", warning=warning)
        for provider, warnings in settings.provider_warnings().items():
            for warning in warnings:
                log.warning("provider_settings", provider=provider, warning=warning)
        for provider, notes in settings.provider_notes().items():
            for note in notes:
                log.info("provider_note", provider=provider, note=note)
        try:
            version = await migrate_when_available_async(outbox, startup_patience(settings.database_url))
        except StoreUnavailable as error:
            log.error("relay_start_failed", error=str(error))
            await outbox.close()
            raise
        child = services.forwarding_process
        if background is not None:
            await background.start()
        elif remote is not None:
            await remote.start()
            if child is not None:
                await child.start()
        await monitor.start()
        log.info("relay_started", version=__version__, schema_version=version,
                 upstream=settings.roark_base_url, forwarding=forwarding)
        try:
            yield
        finally:
            await monitor.stop()
            if child is not None:
                await child.stop()
            if background is not None:
                await background.stop()
            elif remote is not None:
                await remote.stop()
            await services.pass_through.aclose()
            await outbox.close()

    ingest, health = Ingest(services), Health(services)
    operations = Operations(settings, outbox, services.forwarders, frozenset(services.reconcilers.sources))
    app = Relay(
        WebhookEndpoint(ingest),
        routes=[
            # Only for their other methods (a 405 with Allow); Relay serves each POST.
            Route("/webhooks/{provider:str}", ingest.receive, methods=["POST"]),
            Route("/webhooks/{provider:str}/{source:str}", ingest.receive, methods=["POST"]),
            Route("/health", health.health, methods=["GET"]),
            Route("/metrics", health.metrics, methods=["GET"]),
            *admin_routes(settings, services.admin_auth, operations, login_throttle),
        ],
        exception_handlers={
            HTTPError: handle_http_error,
            HTTPException: handle_starlette_error,
            StoreUnavailable: handle_store_unavailable,
            Exception: handle_unexpected,
        },
        lifespan=lifespan,
    )
    # Starlette would answer /status/ with an absolute redirect built from the Host
    # header, which the client chooses; routes that want a slash variant declare it.
    app.router.redirect_slashes = False
    app.add_middleware(RequestMiddleware)
    return app
