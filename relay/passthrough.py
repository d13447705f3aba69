"""Passing a provider's request-response messages through to the team's own server.

VAPI sends every server message of an assistant to one URL, and some of them wait for an
answer only the team's application can give (which assistant to use, a tool's result,
where to transfer). With the relay at that URL, such a message is verified like any
webhook, then POSTed to the team's server with its raw body and the provider's own
headers (so that server verifies the provider's credential exactly as before), and the
answer (status, body, content type) goes back unchanged. Nothing of it is stored.

The provider gives up after a deadline (7.5 s for VAPI's assistant-request), so the
relay answers first: 504 when the team's server is too slow, 502 when it cannot be
reached. These requests have their own connection pool: a slow team server never holds
up the webhooks the relay stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import httpx
from starlette.responses import Response

from relay.errors import BadGateway, GatewayTimeout
from relay.transport import Transport, describe_error, timed_out

#: Answers can carry a whole assistant configuration, but not more.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
MAX_CONNECTIONS = 64
#: Headers that describe one connection, not the message: never passed on (RFC 9110 7.6.1),
#: nor the ones the relay's own request sets anew.
_NOT_PASSED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
    "accept-encoding",
})


class PassThrough:
    def __init__(self, proxy_for: Callable[[str], str | None]) -> None:
        self._proxy_for = proxy_for
        self._transports: dict[str, Transport] = {}

    async def answer(self, url: str, raw_body: bytes, headers: Mapping[str, str],
                     deadline: float) -> Response:
        """The team's server's answer to this message, or BadGateway / GatewayTimeout."""
        request = httpx.Request(
            "POST", url, content=raw_body,
            headers=[(name, value) for name, value in headers.items() if name.lower() not in _NOT_PASSED],
            extensions={"timeout": httpx.Timeout(deadline).as_dict()},
        )
        try:
            async with asyncio.timeout(deadline):
                answer = await self._transport(url).handle_async_request(request)
                content = await answer.aread()
        except (TimeoutError, httpx.TransportError) as error:
            if isinstance(error, TimeoutError) or timed_out(error):
                raise GatewayTimeout(f"your server did not answer within {deadline:g} s") from None
            raise BadGateway(f"your server could not be reached: {describe_error(error)}") from None
        media_type = answer.headers.get("content-type")
        return Response(content, status_code=answer.status_code, media_type=media_type)

    def _transport(self, url: str) -> Transport:
        # One pool per server URL: a proxy, if any, is chosen per URL.
        if url not in self._transports:
            self._transports[url] = Transport(max_connections=MAX_CONNECTIONS, proxy=self._proxy_for(url),
                                              max_response_bytes=MAX_ANSWER_BYTES)
        return self._transports[url]

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
