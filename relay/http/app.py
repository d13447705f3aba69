"""The Starlette application: routes, error rendering, request ids and the lifespan
that owns the outbox, the Roark client and the forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import re
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import __version__
from relay.admin import admin_routes
from relay.admin.auth import AdminAuth
from relay.admin.throttle import LoginThrottle
from relay.web.budget import ByteBudget
from relay.core.errors import HTTPError, MethodNotAllowed, NotFound, ServiceUnavailable, StoreUnavailable
from relay.forwarding.background import Background
from relay.forwarding.forwarder import Forwarder, Forwarders
from relay.forwarding.remote import RemoteForwarder, RemoteForwarders
from relay.http.ingest import Pace, receive_webhook
from relay.core.metrics import Metrics
from relay.outbox import ROARK, AsyncOutbox, Pause, open_backend
from relay.outbox.startup import migrate_when_available_async, startup_patience
from relay.http.passthrough import PassThrough
from relay.reconciliation.service import Reconcilers
from relay.web.responses import JSONResponse
from relay.settings import Settings
from relay.forwarding.supervisor import ForwardingProcess
from relay.forwarding.trouble import stuck

log = structlog.get_logger("relay.http.app")

REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is echoed only if it is plainly an id, never arbitrary text.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
HEALTH_TIMEOUT_SECONDS = 2.0


def new_request_id() -> str:
    # Unique enough to find a request in the logs, and not a secret: no syscall for
    # it (secrets.token_hex costs a getrandom call per request).
    return f"req_{random.getrandbits(64):016x}"


class RequestMiddleware:
    """What every request gets, whichever route answers it (one layer, not two: each
    costs CPU on every webhook).

    - An id, exposed as `request.state.request_id` and a response header.
    - `Connection: close` on an answer given before the request's body was read (a 404,
      415, 413, 401...): the client may be waiting for `100 Continue` before it sends
      the body, and on a connection kept alive its next request would be taken for it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        body_pending = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"

        async def receive_watching() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending = False
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(REQUEST_ID_HEADER.encode(), request_id.encode())]
                given = message.get("headers", [])
                if body_pending and not any(name.lower() == b"connection" for name, _ in given):
                    extra.append((b"connection", b"close"))
                message["headers"] = [*given, *extra]
            await send(message)

        await self.app(scope, receive_watching if body_pending else receive, send_with_id)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, error: HTTPError) -> JSONResponse:
    return JSONResponse(
        error.to_response_body(_request_id(request)),
        status_code=error.status_code,
        headers=error.headers,
    )


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
    log.error("store_unavailable", request_id=_request_id(request), path=request.url.path, error=str(exc))
    return error_response(request, ServiceUnavailable(
        f"the relay's database is unavailable; retry later ({exc})", error_code="store_unavailable",
        retry_after_seconds=request.app.state.settings.store_retry_after_seconds))


def unexpected_error_response(request: Request) -> JSONResponse:
    """A 500 for an exception no handler expected, logged with its traceback (call it
    from the `except` block)."""
    log.exception("unhandled_error", request_id=_request_id(request), path=request.url.path)
    return error_response(request, HTTPError("internal error; the request id identifies it in the relay's logs"))


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    response = unexpected_error_response(request)
    # Starlette answers this from outside RequestMiddleware, which adds the id to the others.
    if request_id := _request_id(request):
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


async def webhook_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """`relay.http.ingest.receive_webhook` as a bare ASGI app, rendering its own errors (see Relay)."""
    request = Request(scope, receive)
    try:
        response = await receive_webhook(request)
    except HTTPError as error:
        response = error_response(request, error)
    except Exception:
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._webhooks = RequestMiddleware(webhook_endpoint)

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


async def health(request: Request) -> JSONResponse:
    """Roark's HealthResponse shape: unhealthy (503) when the outbox is unreachable,
    degraded when delivery to Roark or a destination is paused or stopped, every attempt
    of the last minute to one of them failed, a delivery to one of them has been in
    flight past its timeout, the backlog is older than the threshold, or a provider's
    reconciliation has failed for longer than two intervals (or its run died).

    Anyone may ask how the relay is; only the admin token (as a Bearer) is told why,
    and which destination: the reasons can name a refused key or carry a redirect's
    Location, and the destinations' names are the team's own. Others see Roark's
    delivery and the destinations' together (`destinations_delivery`)."""
    state = request.app.state
    explain = state.admin_auth is not None and state.admin_auth.bearer(request) is not None
    if explain:
        state.admin_auth.require_bearer(request)
    settings: Settings = state.settings
    forwarders: Forwarders | RemoteForwarders = state.forwarders
    problems = []
    backlog_age = None
    stopped: dict[str, Pause] = {}
    claims: dict[str, float] = {}
    reconciliations = []
    now = time.time()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            oldest = await state.outbox.oldest_pending_received_at()
            claims = await state.outbox.oldest_claims()
            if settings.destinations:  # only a destination can be stopped, never Roark
                stopped = await state.outbox.paused_destinations()
            if state.reconcilers.sources:
                reconciliations = await state.outbox.reconciliations()
        database = "healthy"
        backlog_age = 0.0 if oldest is None else max(0.0, now - oldest)
    except (StoreUnavailable, TimeoutError):
        database = "unhealthy"
        problems.append("the outbox database is unreachable")
    dependencies = {"database": database}
    for forwarder in forwarders:
        name = forwarder.destination
        troubles = delivery_problems(forwarder, stopped.get(name), claims.get(name), settings.timeout_of(name), now)
        if name == ROARK and backlog_age is not None and backlog_age > settings.pending_age_degraded_seconds:
            troubles.append(f"oldest undelivered webhook is {backlog_age:.0f} s old "
                            f"(threshold {settings.pending_age_degraded_seconds:g} s)")
        problems += troubles
        health = "degraded" if troubles and database == "healthy" else "healthy"
        key = f"{name}_delivery" if explain or name == ROARK else "destinations_delivery"
        dependencies[key] = "degraded" if dependencies.get(key) == "degraded" else health
    if state.reconcilers.sources:
        missed = state.reconcilers.problems(reconciliations, now)
        dependencies["reconciliation"] = "degraded" if missed else "healthy"
        problems += missed
    status = ("unhealthy" if database == "unhealthy" else
              "degraded" if "degraded" in dependencies.values() else "healthy")
    data = {
        "status": status,
        "version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "uptime_seconds": int(time.monotonic() - state.started_monotonic),
        "dependencies": dependencies,
    }
    if explain:
        data |= {
            "oldest_pending_age_seconds": None if backlog_age is None else round(backlog_age, 1),
            "delivery_paused": forwarders.roark.paused,
            "problems": problems,
        }
    return JSONResponse({"data": data}, status_code=503 if status == "unhealthy" else 200)


def delivery_problems(forwarder: Forwarder | RemoteForwarder, stopped: Pause | None, claimed_at: float | None,
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


async def metrics(request: Request) -> Response:
    """Prometheus exposition; scrapers authenticate with the admin token as a Bearer."""
    state = request.app.state
    if state.admin_auth is None:
        raise NotFound("/metrics is disabled until RELAY_ADMIN_TOKEN is set")
    state.admin_auth.require_bearer(request)
    try:
        child = state.forwarding_process
        body = await state.metrics.render(state.outbox, {f.destination: f.paused for f in state.forwarders},
                                          None if child is None else child.metrics())
    except StoreUnavailable as error:
        raise ServiceUnavailable(f"metrics need the outbox: {error}", retry_after_seconds=5) from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, login_throttle: LoginThrottle | None = None,
               forwarding: str = "inline", forwarding_process: ForwardingProcess | None = None) -> Relay:
    """The relay; `login_throttle` replaces the default one (tests give it a clock).
    `forwarding`: where the forwarders run (RELAY_FORWARD: process, inline or off); in
    process by default, for apps served in a test's own process. `forwarding_process`:
    the child to supervise with "process", when it was started already (`relay serve`
    forks it before the server starts a thread; otherwise one is spawned here)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for provider, warnings in settings.provider_warnings().items():
            for warning in warnings:
                log.warning("provider_settings", provider=provider, warning=warning)
        outbox = AsyncOutbox(open_backend(settings.database_url, pool_size=settings.database_pool_size))
        try:
            version = await migrate_when_available_async(outbox, startup_patience(settings.database_url))
        except StoreUnavailable as error:
            log.error("relay_start_failed", error=str(error))
            await outbox.close()
            raise
        app.state.outbox = outbox
        app.state.pass_through = PassThrough(settings.proxy_for, ByteBudget(settings.pass_through_budget_bytes),
                                             settings.pass_through_connections)
        background = child = None
        if forwarding == "inline":
            background = Background(settings, outbox, app.state.metrics)
            await background.start()
            app.state.forwarders, app.state.reconcilers = background.forwarders, background.reconcilers
        else:
            app.state.forwarders = RemoteForwarders(outbox, settings)
            await app.state.forwarders.start()
            # Not started: it tells /health and the status page what is reconciled.
            app.state.reconcilers = Reconcilers(settings, outbox, app.state.metrics)
            if forwarding == "process":
                child = forwarding_process or ForwardingProcess(settings.shutdown_grace_seconds)
                await child.start()
        app.state.forwarding_process = child
        log.info("relay_started", version=__version__, schema_version=version,
                 upstream=settings.roark_base_url, forwarding=forwarding)
        try:
            yield
        finally:
            if child is not None:
                await child.stop()
            if background is not None:
                await background.stop()
            else:
                await app.state.forwarders.stop()
            await app.state.pass_through.aclose()
            await outbox.close()

    app = Relay(
        routes=[
            # Only for their other methods (a 405 with Allow); Relay serves each POST.
            Route("/webhooks/{provider:str}", receive_webhook, methods=["POST"]),
            Route("/webhooks/{provider:str}/{source:str}", receive_webhook, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *admin_routes(settings, login_throttle),
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
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.unverified_bodies = ByteBudget(settings.unverified_body_budget_bytes,
                                             settings.unverified_body_budget_per_client_bytes)
    app.state.verified_bodies = ByteBudget(settings.verified_body_budget_bytes)
    app.state.body_pace = Pace.of(settings)
    app.state.admin_auth = AdminAuth(settings.admin_token) if settings.admin_token else None
    app.state.started_monotonic = time.monotonic()
    return app
