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

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import __version__
from relay.admin import admin_routes
from relay.admin.auth import AdminAuth
from relay.admin.throttle import LoginThrottle
from relay.budget import ByteBudget
from relay.errors import HTTPError, MethodNotAllowed, NotFound, ServiceUnavailable, StoreUnavailable
from relay.forwarder import Forwarder
from relay.ingest import receive_webhook
from relay.metrics import Metrics
from relay.outbox import AsyncOutbox, open_backend
from relay.outbox.startup import migrate_when_available_async, startup_patience
from relay.passthrough import PassThrough
from relay.reconciliation.service import Reconcilers
from relay.retention import run_retention
from relay.settings import Settings
from relay.upstream import RoarkClient

log = structlog.get_logger("relay.app")

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


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", request_id=_request_id(request), path=request.url.path)
    error = HTTPError("internal error; the request id identifies it in the relay's logs")
    response = error_response(request, error)
    if request_id := _request_id(request):
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


async def health(request: Request) -> JSONResponse:
    """Roark's HealthResponse shape: unhealthy (503) when the outbox is unreachable,
    degraded when delivery is paused, every attempt of the last minute failed, the
    backlog is older than the threshold, or a provider's reconciliation has failed for
    longer than two intervals.

    Anyone may ask how the relay is; only the admin token (as a Bearer) is told why,
    since the reasons can name a refused key or carry a redirect's Location."""
    state = request.app.state
    explain = state.admin_auth is not None and state.admin_auth.bearer(request) is not None
    if explain:
        state.admin_auth.require_bearer(request)
    settings: Settings = state.settings
    forwarder: Forwarder = state.forwarder
    problems = []
    backlog_age = None
    reconciliations = []
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            oldest = await state.outbox.oldest_pending_received_at()
            if state.reconcilers.sources:
                reconciliations = await state.outbox.reconciliations()
        database = "healthy"
        backlog_age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
    except (StoreUnavailable, TimeoutError):
        database = "unhealthy"
        problems.append("the outbox database is unreachable")
    if forwarder.paused:
        problems.append(f"delivery paused: {forwarder.pause_reason}")
    elif trouble := forwarder.trouble.describe(time.time()):
        problems.append(trouble)
    if backlog_age is not None and backlog_age > settings.pending_age_degraded_seconds:
        problems.append(f"oldest undelivered webhook is {backlog_age:.0f} s old "
                        f"(threshold {settings.pending_age_degraded_seconds:g} s)")
    delivery = "degraded" if problems and database == "healthy" else "healthy"
    dependencies = {"database": database, "roark_delivery": delivery}
    if state.reconcilers.sources:
        missed = state.reconcilers.problems(reconciliations, time.time())
        dependencies["reconciliation"] = "degraded" if missed else "healthy"
        problems += missed
    status = "unhealthy" if database == "unhealthy" else "degraded" if problems else "healthy"
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
            "delivery_paused": forwarder.paused,
            "problems": problems,
        }
    return JSONResponse({"data": data}, status_code=503 if status == "unhealthy" else 200)


async def metrics(request: Request) -> Response:
    """Prometheus exposition; scrapers authenticate with the admin token as a Bearer."""
    state = request.app.state
    if state.admin_auth is None:
        raise NotFound("/metrics is disabled until RELAY_ADMIN_TOKEN is set")
    state.admin_auth.require_bearer(request)
    try:
        body = await state.metrics.render(state.outbox, state.forwarder.paused)
    except StoreUnavailable as error:
        raise ServiceUnavailable(f"metrics need the outbox: {error}", retry_after_seconds=5) from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, login_throttle: LoginThrottle | None = None) -> Starlette:
    """The relay; `login_throttle` replaces the default one (tests give it a clock)."""
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
        client = RoarkClient(settings)
        forwarder = Forwarder(outbox, client, settings, app.state.metrics)
        app.state.outbox = outbox
        app.state.forwarder = forwarder
        app.state.pass_through = PassThrough(settings.proxy_for)
        forwarder.start()
        reconcilers = Reconcilers(settings, outbox, app.state.metrics)
        app.state.reconcilers = reconcilers
        reconcilers.start()
        stop_retention = asyncio.Event()
        retention = asyncio.create_task(run_retention(outbox, settings, stop_retention),
                                        name="relay-retention")
        log.info("relay_started", version=__version__, schema_version=version,
                 upstream=settings.roark_base_url)
        try:
            yield
        finally:
            stop_retention.set()
            await retention
            await reconcilers.stop()
            await forwarder.stop()
            await client.aclose()
            await app.state.pass_through.aclose()
            await outbox.close()

    app = Starlette(
        routes=[
            Route("/webhooks/{provider:str}", receive_webhook, methods=["POST"]),
            Route("/webhooks/{provider:str}/{source:str}", receive_webhook, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *admin_routes(settings, login_throttle),
        ],
        exception_handlers={
            HTTPError: handle_http_error,
            HTTPException: handle_starlette_error,
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
    app.state.unverified_bodies = ByteBudget(settings.unverified_body_budget_bytes)
    app.state.verified_bodies = ByteBudget(settings.verified_body_budget_bytes)
    app.state.admin_auth = AdminAuth(settings.admin_token) if settings.admin_token else None
    app.state.started_monotonic = time.monotonic()
    return app
