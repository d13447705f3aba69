"""How the relay reaches other services (Roark's results, the team's server, the
providers' APIs, alert channels): aiohttp's pool of keep-alive connections behind httpx's
transport interface (httpx-aiohttp), so clients keep httpx's Request, Response and
exceptions, and tests can put httpx.MockTransport in its place. Deliveries go out over
relay.core.delivery_transport, which keeps the same behaviours at a fraction of the CPU.
"""

from __future__ import annotations

import email.utils
import functools
import math
import os
import ssl
from collections.abc import Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from relay.core.budget import BodyHold

#: Roark answers with short JSON; anything far larger is not an answer worth keeping.
MAX_RESPONSE_BYTES = 1024 * 1024

#: Idle connections are closed after this long: before the 5 s idle timeout of common
#: servers (uvicorn, Node), so a delivery is not sent into a connection being closed.
KEEPALIVE_SECONDS = 4.0

#: How long to wait on one address before racing the next (RFC 8305's recommendation).
HAPPY_EYEBALLS_SECONDS = 0.25
#: The longest connecting alone may take, within a request's own deadline: a host that
#: does not accept a connection in this time is down, however long its answers may take.
CONNECT_SECONDS = 5.0


def request_timeout(seconds: float) -> httpx.Timeout:
    """A request's deadline of `seconds`, of which connecting may take CONNECT_SECONDS."""
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_SECONDS))


class AnswerTooLarge(httpx.RemoteProtocolError):
    """The answer is larger than this client may hold: its own limit, or the budget the
    request named (`extensions["hold"]`, a relay.core.budget.BodyHold) has no room for it."""


class Transport(AiohttpTransport):
    """Reads each response whole, up to `max_response_bytes`, and raises httpx errors only.

    A request's read timeout is its whole deadline, answer included: a peer that sends
    its headers and then a byte every few seconds resets a timeout per read for ever,
    and kept deliveries in flight after it had recovered.

    It sends through the aiohttp session itself: httpx-aiohttp's own request method hands
    back a streaming response (an httpx stream around aiohttp's), and reading that into a
    bounded, whole response cost a sixth of the client's CPU per request in a profile.
    """

    def __init__(self, *, max_connections: int, proxy: str | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        ssl_context = httpx.create_ssl_context()  # honours SSL_CERT_FILE and SSL_CERT_DIR
        super().__init__(verify=ssl_context, client=lambda: _session(max_connections, ssl_context, proxy))
        self._max_response_bytes = max_response_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        deadline = timeout.get("read")
        try:
            with map_aiohttp_exceptions():
                async with self.client.request(
                    request.method, str(request.url), headers=request.headers.multi_items(),
                    data=await request.aread(), allow_redirects=False, auto_decompress=False, compress=False,
                    timeout=_client_timeout(timeout.get("connect"), deadline, timeout.get("pool")),
                ) as response:
                    content = await self._read(response, request.extensions.get("hold"))
        except aiohttp.ClientError as error:  # left unmapped by httpx-aiohttp: a malformed response
            raise httpx.RemoteProtocolError(str(error)) from error
        except TimeoutError as error:  # the deadline, which httpx-aiohttp leaves unmapped
            raise httpx.ReadTimeout(f"no whole answer within {deadline:g} s") from error
        return httpx.Response(response.status, headers=response.raw_headers, content=content,
                              request=request)

    async def _read(self, response: aiohttp.ClientResponse, hold: BodyHold | None) -> bytes:
        """The whole answer, counted against `hold` as it arrives (all at once when its
        length is announced: it is read in one call then)."""
        limit = self._max_response_bytes
        if response.content_length is not None:
            if response.content_length > limit:
                raise AnswerTooLarge(f"the answer's {response.content_length} bytes exceed {limit}")
            if hold is not None and not hold.grow(response.content_length):
                raise AnswerTooLarge(f"the relay holds as much of such answers as it may ({hold.pool.limit} bytes)")
            return await response.read()  # reads what Content-Length says, no more
        chunks, size = [], 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise AnswerTooLarge(f"the answer exceeds {limit} bytes")
            if hold is not None and not hold.grow(len(chunk)):
                raise AnswerTooLarge(f"the relay holds as much of such answers as it may ({hold.pool.limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)


@functools.lru_cache(maxsize=64)  # one per client's timeouts: made once, not per request
def _client_timeout(connect: float | None, deadline: float | None, pool: float | None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=deadline, sock_connect=connect, connect=pool)


def _session(max_connections: int, ssl_context: ssl.SSLContext, proxy: str | None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_SECONDS,
                                     happy_eyeballs_delay=HAPPY_EYEBALLS_SECONDS, ssl=ssl_context)
    return aiohttp.ClientSession(
        connector=connector,
        proxy=proxy,
        cookie_jar=aiohttp.DummyCookieJar(),  # Roark's answers carry no state worth keeping
        # Uncompressed answers only: a compressed one could not be bounded before inflating.
        # Said outright (no Accept-Encoding would mean any coding is welcome), and a
        # default header costs less per request than aiohttp's list of headers to skip.
        headers={"Accept-Encoding": "identity"},
    )


def describe_error(error: httpx.TransportError) -> str:
    """What went wrong, for an operator. httpx-aiohttp maps every aiohttp connection error,
    a connection the server dropped included, to httpx.ConnectTimeout: the aiohttp error
    it came from names what really happened."""
    cause = error.__cause__ if isinstance(error.__cause__, aiohttp.ClientError) else error
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def error_kind(error: httpx.TransportError) -> str:
    """What went wrong, without where: the error's name and the system's reason, for
    someone who must not learn the peer's address."""
    cause = error.__cause__ if isinstance(error.__cause__, aiohttp.ClientError) else error
    number = getattr(getattr(cause, "os_error", None), "errno", None)
    return f"{type(cause).__name__}: {os.strerror(number)}" if number else type(cause).__name__


def timed_out(error: httpx.TransportError) -> bool:
    """Whether the server was too slow, rather than unreachable. httpx-aiohttp's mapping
    cannot tell: it turns a refused connection into httpx.ConnectTimeout too."""
    if isinstance(error.__cause__, aiohttp.ClientError | OSError):
        return isinstance(error.__cause__, TimeoutError)
    return isinstance(error, httpx.TimeoutException)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = lowered.get("retry-after")
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - now)
