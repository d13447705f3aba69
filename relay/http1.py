"""A lean HTTP/1.1 transport for httpx: keep-alive connections on asyncio protocols,
responses parsed by httptools (the parser uvicorn uses).

Why not httpx's own transport: httpcore on anyio streams spent about 2 ms of CPU per
request on the benchmark machine, and scans its whole pool (polling every idle socket)
on each request and each response, so forwarding with 256 connections topped out below
200 deliveries/s (BENCHMARKS.md). This one costs a small fraction of that. It does what
the Roark client needs and no more: requests with their body in memory, responses read
whole (up to `max_response_bytes`), HTTP or HTTPS, one pool of keep-alive connections
per origin, a timeout for connecting and one for the whole exchange. It speaks httpx's
transport interface, so the client keeps httpx's Request, Response and exceptions, and
tests can put httpx.MockTransport in its place.
"""

from __future__ import annotations

import asyncio
import ssl

import httptools
import httpx

#: Roark answers with short JSON; anything far larger is not an answer worth keeping.
MAX_RESPONSE_BYTES = 1024 * 1024

Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its response read whole."""

    def __init__(self, max_response_bytes: int) -> None:
        self._max = max_response_bytes
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[httpx.Response] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._status = 0
        self._until_close = False  # a body without length or chunking ends with the connection
        self.open = True
        self.reusable = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked for: the connection is not usable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {error}"))

    def eof_received(self) -> None:
        self.open = False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._until_close and self._status:
            self.on_message_complete()
        else:
            self._fail(httpx.ReadError("connection closed before a whole response arrived"
                                       + (f": {exc}" if exc else "")))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        names = {name.lower() for name, _ in self._headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max:
            self._fail(httpx.RemoteProtocolError(f"response body exceeds {self._max} bytes"))
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = self.open and self._parser.should_keep_alive() and not self._until_close
        if waiter is not None and not waiter.done():
            waiter.set_result(httpx.Response(self._status, headers=self._headers,
                                             content=b"".join(self._body)))

    # the client side

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    async def exchange(self, head: bytes, body: bytes, timeout: float | None) -> httpx.Response:
        self._headers, self._body, self._size, self._status = [], [], 0, 0
        self._until_close = self.reusable = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.writelines((head, body))  # no copy of a large body
        try:
            async with asyncio.timeout(timeout):
                return await self._waiter
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout(f"no whole response within {timeout:g} s") from None

    def close(self) -> None:
        self.open = self.reusable = False
        if self._transport is not None:
            self._transport.close()


class Transport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._max_response_bytes = max_response_bytes
        self._ssl: ssl.SSLContext | None = None  # made on the first HTTPS connection
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        head = b"".join([request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n",
                         *(b"%s: %s\r\n" % pair for pair in request.headers.raw), b"\r\n"])
        body = await request.aread()
        async with self._slots:
            connection = self._reuse(origin) or await self._connect(origin, timeouts.get("connect"))
            try:
                response = await connection.exchange(head, body, timeouts.get("read"))
            except BaseException:
                connection.close()
                raise
            if connection.reusable and not self._closed:
                self._idle.setdefault(origin, []).append(connection)
            else:
                connection.close()
        response.request = request
        return response

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin, [])
        while idle:
            connection = idle.pop()  # the most recently used is the least likely closed
            if connection.open:
                return connection
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        if scheme == "https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # certifi, SSL_CERT_FILE: as httpx does
        tls = scheme == "https"
        try:
            async with asyncio.timeout(timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self._max_response_bytes), host, port,
                    ssl=self._ssl if tls else None, server_hostname=host if tls else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g} s") from None
        except OSError as error:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise httpx.ConnectError(str(error) or type(error).__name__) from None
        return connection

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
