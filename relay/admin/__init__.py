"""Operators' status page and admin API.

    GET  /status                         summary, filters, failed deliveries (HTML)
    GET  /status/deliveries/{id}         one delivery: attempts, masked payload (HTML)
    POST /status/replay                  replay selected / all failed (form, CSRF)
    POST /status/destinations/{name}/resume  resume a destination stopped by a 410 (form, CSRF)
    POST /status/alerts/{id}/acknowledge  stop an alert's reminders (form, CSRF)
    POST /status/alerts/mute             mute a subject's alert messages for a while (form, CSRF)
    GET  /login, POST /login, POST /logout
    GET  /admin/api/summary              JSON, Bearer only
    GET  /admin/api/deliveries           ?state=&provider=&destination=&call_id=&cursor=&limit=
    GET  /admin/api/deliveries/{id}
    POST /admin/api/deliveries/{id}/replay
    POST /admin/api/replay               {"ids": [...]} or {"all_failed": true, ...}
    POST /admin/api/destinations/{name}/resume
    GET  /admin/api/alerts               open alerts, the last week's, the channels
    POST /admin/api/alerts/{id}/acknowledge
    GET  /admin/openapi.json             the API's OpenAPI 3.1 document (Bearer or session)

Without RELAY_ADMIN_TOKEN all of these answer 404: disabled, never open.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import BaseRoute, Route, request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.admin.api import AdminApi, api_routes
from relay.admin.auth import BEARER_CHALLENGE, SECURITY_HEADERS, AdminAuth
from relay.admin.openapi import openapi_document
from relay.admin.operations import Operations
from relay.admin.pages import StatusPages, page_routes
from relay.admin.throttle import LoginThrottle
from relay.core.errors import NotFound, Unauthorized
from relay.core.redaction import Redactor
from relay.settings import Settings
from relay.web.responses import JSONResponse

DISABLED_PATHS = ("/status", "/status/{rest:path}", "/login", "/logout", "/admin/{rest:path}")


HSTS = (b"strict-transport-security", b"max-age=31536000")


class Hardened:
    """An endpoint whose every answer, refusals included, carries the security headers
    (no caching, strict CSP, nosniff, no framing), and HSTS when it came over HTTPS.
    HTTPS as uvicorn sees it: TLS to the relay itself, or a proxy's X-Forwarded-Proto
    when uvicorn trusts that proxy (FORWARDED_ALLOW_IPS)."""

    def __init__(self, endpoint: ASGIApp) -> None:
        self.app = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode("latin-1").lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if scope.get("scheme") == "https":
                    headers.append(HSTS)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_hardened)


def _hardened(routes: list[Route]) -> list[BaseRoute]:
    return [Route(r.path, Hardened(request_response(r.endpoint)), methods=sorted(r.methods or ()))
            for r in routes]


async def _disabled(request: Request) -> JSONResponse:
    raise NotFound("the status page and admin API are disabled until RELAY_ADMIN_TOKEN is set",
                   error_code="admin_disabled")


def admin_routes(settings: Settings, auth: AdminAuth | None, operations: Operations,
                 throttle: LoginThrottle | None = None) -> list[BaseRoute]:
    """Routes of the status page and admin API; 404s for all of them when there is no
    `auth` (RELAY_ADMIN_TOKEN is unset). `throttle` limits failed logins (a fresh one if
    None)."""
    if auth is None:
        endpoint = Hardened(request_response(_disabled))
        return [Route(path, endpoint, methods=None) for path in DISABLED_PATHS]  # any method
    redactor = Redactor(settings.redact_keys)
    document = openapi_document()

    async def openapi(request: Request) -> JSONResponse:
        if await auth.authenticate(request) is None:
            raise Unauthorized("send the admin token as 'Authorization: Bearer <RELAY_ADMIN_TOKEN>'",
                               headers=dict(BEARER_CHALLENGE))
        return JSONResponse(document)

    return _hardened([
        *page_routes(StatusPages(auth, redactor, throttle if throttle is not None else LoginThrottle(), operations)),
        *api_routes(AdminApi(auth, redactor, operations, settings.body_timeout_seconds)),
        Route("/admin/openapi.json", openapi, methods=["GET"]),
    ])
