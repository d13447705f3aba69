"""What every HTTP request gets, whichever surface answers it: an id (echoed when the
caller sent a plain one), and refusals rendered as Roark's ErrorResponse JSON with it."""

from __future__ import annotations

import random
import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.core.errors import HTTPError, ServiceUnavailable
from relay.web.responses import JSONResponse

REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is echoed only if it is plainly an id, never arbitrary text.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: What a client is told to wait when the outbox cannot take a request right now.
STORE_RETRY_AFTER_SECONDS = 5
#: ...and when the relay holds as much as it may (request bodies, connections, answers
#: passed through): those are released within seconds, so a retry soon finds room.
BUSY_RETRY_AFTER_SECONDS = 2


def new_request_id() -> str:
    # Unique enough to find a request in the logs, and not a secret: no syscall for
    # it (secrets.token_hex costs a getrandom call per request).
    return f"req_{random.getrandbits(64):016x}"


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(request: Request, error: HTTPError) -> JSONResponse:
    return JSONResponse(error.to_response_body(request_id(request)), status_code=error.status_code,
                        headers=error.headers)


def store_unavailable(message: str) -> ServiceUnavailable:
    """The answer when the outbox cannot do what a request needs right now: try again soon."""
    return ServiceUnavailable(message, error_code="store_unavailable", retry_after_seconds=STORE_RETRY_AFTER_SECONDS)


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
        this_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = this_id
        body_pending = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"

        async def receive_watching() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending = False
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(REQUEST_ID_HEADER.encode(), this_id.encode())]
                given = message.get("headers", [])
                if body_pending and not any(name.lower() == b"connection" for name, _ in given):
                    extra.append((b"connection", b"close"))
                message["headers"] = [*given, *extra]
            await send(message)

        await self.app(scope, receive_watching if body_pending else receive, send_with_id)
