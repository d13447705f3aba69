"""Passing a provider's request-response messages through to the team's own server.

VAPI sends every server message of an assistant to one URL, and some of them wait for an
answer only the team's application can give (which assistant to use, a tool's result,
where to transfer). With the relay at that URL, such a message is verified like any
webhook, then POSTed to the team's server with its raw body and the provider's own
headers (so that server verifies the provider's credential exactly as before), and the
answer (status, body, content type) goes back unchanged. Nothing of it is stored.

What the team's server is told of the connection is the relay's to say: the caller's
`X-Forwarded-*`, `Forwarded`, `X-Real-IP` and `Via` are replaced by the relay's own
(the caller's address as the relay sees it, the scheme, the relay as a hop), `Cookie`
is dropped, and `Authorization` goes on only when it is the credential the relay
verified. A message whose signature was seen before within its time window is refused:
the signature is the only thing that tells a replay from the provider's own request,
and passing it on would let anyone who captured one make the team's server act twice.

The provider gives up after a deadline (7.5 s for VAPI's assistant-request), so the
relay answers first: 504 when the team's server is too slow or every connection to it
is busy, 502 when it cannot be reached or its answer is larger than the relay may hold,
503 when the answers held at once already fill RELAY_PASS_THROUGH_BUDGET_BYTES. These
requests have their own connection pool: a slow team server never holds up the webhooks
the relay stores.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import httpx
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from relay.core.budget import BodyHold, ByteBudget
from relay.core.errors import BadGateway, GatewayTimeout, ServiceUnavailable, Unauthorized
from relay.core.transport import AnswerTooLarge, Transport, describe_error, error_kind, timed_out
from relay.web.requests import BUSY_RETRY_AFTER_SECONDS

log = structlog.get_logger("relay.http.passthrough")

#: Answers can carry a whole assistant configuration, but not more.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Headers that describe one connection, not the message: never passed on (RFC 9110 7.6.1),
#: nor the ones the relay's own request sets anew, nor what a caller could say about
#: where it came from, nor cookies (a provider sends none).
_NOT_PASSED = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
    b"accept-encoding", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
    b"forwarded", b"x-real-ip", b"via", b"cookie",
})
#: Signatures remembered at most: an attacker cannot make new valid ones, so only the
#: provider's own messages of the last window are here, and past this many the oldest go.
MAX_SIGNATURES = 100_000


class HeldResponse(Response):
    """The team's answer, holding its bytes of the answer budget until it is sent."""

    def __init__(self, content: bytes, status_code: int, media_type: str | None, hold: BodyHold) -> None:
        super().__init__(content, status_code=status_code, media_type=media_type)
        self.hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hold.release()


class Signatures:
    """Signatures seen within their window, to refuse a replay of a signed message."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: OrderedDict[bytes, float] = OrderedDict()  # oldest first

    def first_use(self, signature: bytes, window: float) -> bool:
        """Remember `signature` for `window` seconds; False when it is remembered already."""
        now = self._clock()
        while self._until and (next(iter(self._until.values())) <= now or len(self._until) >= MAX_SIGNATURES):
            self._until.popitem(last=False)
        if signature in self._until:
            return False
        self._until[signature] = now + window
        return True

    def forget(self, signature: bytes) -> None:
        """The message was not answered: the provider may send it again."""
        self._until.pop(signature, None)


class PassThrough:
    def __init__(self, proxy_for: Callable[[str], str | None], budget: ByteBudget, max_connections: int) -> None:
        self._proxy_for = proxy_for
        self._budget = budget
        self._max_connections = max_connections
        self._transports: dict[str, Transport] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self.signatures = Signatures()

    async def answer(self, url: str, raw_body: bytes, headers: Sequence[tuple[bytes, bytes]], *,
                     client: str | None, scheme: str, deadline: float, keep_authorization: bool,
                     request_id: str | None = None, signature: bytes | None = None,
                     signature_window: float = 0.0) -> Response:
        """The team's server's answer to this message, or an HTTPError saying why none.
        `signature`: what authenticated it, refused when seen within `signature_window`."""
        if signature is not None and not self.signatures.first_use(signature, signature_window):
            raise Unauthorized("this signature was used already: a message is passed on once",
                               error_code="replayed_signature")
        try:
            return await self._answer(url, raw_body, headers, client, scheme, deadline, keep_authorization,
                                      request_id)
        except BaseException:
            if signature is not None:  # nothing reached the team's server as an answer
                self.signatures.forget(signature)
            raise

    async def _answer(self, url: str, raw_body: bytes, headers: Sequence[tuple[bytes, bytes]],
                      client: str | None, scheme: str, deadline: float, keep_authorization: bool,
                      request_id: str | None) -> Response:
        if self._budget.held >= self._budget.limit:
            raise ServiceUnavailable(
                "the relay holds as many answers from your server as it may "
                "(RELAY_PASS_THROUGH_BUDGET_BYTES); retry shortly",
                error_code="overloaded", retry_after_seconds=BUSY_RETRY_AFTER_SECONDS)
        hold = BodyHold(self._budget)
        passed = [(name, value) for name, value in headers if name not in _NOT_PASSED
                  and (keep_authorization or name != b"authorization")]
        passed += [(b"x-forwarded-proto", scheme.encode()), (b"via", b"1.1 roark-relay")]
        if client is not None:
            passed.append((b"x-forwarded-for", client.encode()))
        request = httpx.Request("POST", url, content=raw_body, headers=passed, extensions={
            "timeout": httpx.Timeout(deadline).as_dict(), "hold": hold})
        slots = self._slots.setdefault(url, asyncio.Semaphore(self._max_connections))
        connected = False
        try:
            async with asyncio.timeout(deadline):
                await slots.acquire()
                connected = True
                try:
                    answer = await self._transport(url).handle_async_request(request)
                finally:
                    slots.release()
        except AnswerTooLarge as error:
            hold.release()
            raise BadGateway(f"your server's answer was not passed on: {error}",
                             error_code="answer_too_large") from None
        except (TimeoutError, httpx.TransportError) as error:
            hold.release()
            if not connected:
                raise GatewayTimeout(
                    f"all {self._max_connections} connections to your server stayed busy for {deadline:g} s "
                    "(RELAY_PASS_THROUGH_CONNECTIONS)", error_code="connections_busy") from None
            if isinstance(error, TimeoutError) or timed_out(error):
                raise GatewayTimeout(f"your server did not answer within {deadline:g} s") from None
            # The address of the team's server is the operator's to know, not the caller's.
            log.warning("pass_through_unreachable", request_id=request_id, error=describe_error(error))
            raise BadGateway(f"your server could not be reached ({error_kind(error)}); the relay's "
                             "log has the details under this request id") from None
        except BaseException:
            hold.release()
            raise
        return HeldResponse(answer.content, answer.status_code, answer.headers.get("content-type"), hold)

    def _transport(self, url: str) -> Transport:
        # One pool per server URL: a proxy, if any, is chosen per URL.
        if url not in self._transports:
            self._transports[url] = Transport(max_connections=self._max_connections, proxy=self._proxy_for(url),
                                              max_response_bytes=MAX_ANSWER_BYTES)
        return self._transports[url]

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
