"""The HTTP protocol the relay serves with: uvicorn's httptools protocol with the bounds
it lacks (a time and size bound on every request head, a time bound on every body, a
cap on connections with the oldest idle one shed first, a gentle close)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from relay.core.errors import BadRequest, HTTPError, RequestHeadTooLarge, RequestTimeout, ServiceUnavailable
from relay.web.requests import BUSY_RETRY_AFTER_SECONDS, new_request_id

log = structlog.get_logger("relay.http.protocol")

#: Most bytes a request line plus headers may take, and most header lines. Providers
#: send well under 8 KiB in about twenty headers; every header held costs a few hundred
#: bytes of objects beyond its own, so the count is bounded as well as the bytes.
MAX_REQUEST_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
EXHAUSTED_LOG_INTERVAL_SECONDS = 10.0
#: A connection answered while its request body is still arriving (a 413 for a body too
#: large) is closed gently: the answer, then FIN, then whatever the client still sends is
#: read and thrown away until it hangs up, falls silent for LINGER_IDLE_SECONDS, or has
#: had LINGER_SECONDS or LINGER_BYTES. Closing at once, with its data unread, makes the
#: kernel send a reset, which destroys the answer before a client that writes its whole
#: body before reading (most do) gets to read it.
LINGER_SECONDS = 10.0
LINGER_IDLE_SECONDS = 1.0
LINGER_BYTES = 64 * 1024 * 1024


def _head_too_large() -> RequestHeadTooLarge:
    return RequestHeadTooLarge(f"request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes")


def _too_many_headers() -> RequestHeadTooLarge:
    return RequestHeadTooLarge(f"a request may carry at most {MAX_HEADERS} headers")


@dataclass
class ConnectionBounds:
    """What one server's connections share: their limits, the connections waiting for a
    request head (oldest first: the first to go when room is needed), and the bytes of
    unfinished heads they hold."""

    head_timeout: float
    body_timeout: float
    max_connections: int
    head_budget: int
    waiting: dict[Any, None] = field(default_factory=dict)
    head_bytes: int = 0
    logged_at: dict[str, float] = field(default_factory=dict)

    def say(self, event: str, now: float, **fields: object) -> None:
        """Log `event` at most once per EXHAUSTED_LOG_INTERVAL_SECONDS: under attack it
        would otherwise be logged for every connection."""
        if now - self.logged_at.get(event, float("-inf")) >= EXHAUSTED_LOG_INTERVAL_SECONDS:
            self.logged_at[event] = now
            log.warning(event, **fields)


class _LingeringTransport:
    """A connection's transport as uvicorn sees it, but closing through the protocol,
    which may linger first (see LINGER_SECONDS)."""

    def __init__(self, transport: Any, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol._close()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it lacks. uvicorn arms no timer
    until a first response is sent and its keep-alive timer is cancelled by any byte,
    so a client trickling a request head (slowloris), or sitting silent, holds its
    connection for ever; httptools buffers header bytes without limit, and uvicorn
    keeps every header as objects several times its size (thousands of tiny headers
    make a connection cost a large multiple of its bytes); and endpoints that read a
    body without a clock of their own (the login form) can be fed one byte at a time
    for ever.

    Here a request head must arrive within `head_timeout` of the connection opening
    or the previous response ending, and stay under MAX_REQUEST_HEAD_BYTES and
    MAX_HEADERS; the unfinished heads of all connections share `head_budget` bytes,
    past which the oldest are closed; a connection past `max_connections` makes room
    by closing the one that has waited longest for a head; and a body must arrive
    within `body_timeout` of its head. Refusals are ErrorResponses (408, 431, 503),
    and so are unparseable requests (400), which uvicorn answers in plain text. A
    request answered before its body arrived ends its connection with a bounded
    lingering close (LINGER_SECONDS), where uvicorn closed it under the client (a
    reset) or read the rest of the body, however long, to serve a next request."""

    bounds = ConnectionBounds(30.0, 31.0, 1000, 4 * 1024 * 1024)  # one per server: see uvicorn_config

    def connection_made(self, transport: Any) -> None:
        self._awaiting_head = False
        self._in_head = False
        self._head_held = 0  # bytes of the unfinished head, counted in bounds.head_bytes
        self._head_fields = self._header_count = 0
        self._refusal: HTTPError | None = None  # why the parser was stopped
        self._head_timer: Any = None
        self._body_timer: Any = None
        self._socket_transport = transport
        self._lingering = False
        self._linger_timer: Any = None
        self._linger_until = 0.0
        self._linger_heard = False
        self._linger_left = 0
        # No asyncio.Transport by type: it passes uvicorn the real one's attributes
        # (__getattr__) but for closing.
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        bounds = self.bounds
        if len(self.connections) > bounds.max_connections and not self._make_room():
            bounds.say("connections_exhausted", self.loop.time(), open=len(self.connections),
                       limit=bounds.max_connections,
                       consequence="new connections are answered 503 and closed")
            self._refuse(ServiceUnavailable(
                "the relay has as many connections open as it may; retry shortly",
                error_code="too_many_connections", retry_after_seconds=BUSY_RETRY_AFTER_SECONDS))
            return
        self._await_head()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request head (idle
        kept alive, or trickling one), so a new client gets in; False when every
        connection is busy with a request."""
        for oldest in self.bounds.waiting:
            if oldest is not self:
                self.bounds.say("connections_recycled", self.loop.time(), open=len(self.connections),
                                limit=self.bounds.max_connections,
                                consequence="the connections waiting longest for a request are closed")
                oldest._drop_waiting()
                return True
        return False

    def _drop_waiting(self) -> None:
        if self._head_held:  # part of a request came: say why it is dropped
            self._refuse(ServiceUnavailable(
                "the relay holds as many unfinished requests as it may; retry shortly",
                error_code="too_many_connections", retry_after_seconds=BUSY_RETRY_AFTER_SECONDS))
        else:
            self._head_done()
            self.transport.close()

    def _await_head(self) -> None:
        self._awaiting_head = True
        self.bounds.waiting.pop(self, None)
        self.bounds.waiting[self] = None  # the youngest
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.bounds.head_timeout, self._head_timed_out)

    def _head_done(self) -> None:
        self._awaiting_head = self._in_head = False
        self.bounds.waiting.pop(self, None)
        self.bounds.head_bytes -= self._head_held
        self._head_held = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _hold_head(self, size: int) -> None:
        """Count `size` more bytes of an unfinished head, refusing it past its own
        bound and closing the oldest unfinished heads past the server's."""
        self._head_held += size
        bounds = self.bounds
        bounds.head_bytes += size
        if self._head_held > MAX_REQUEST_HEAD_BYTES:
            self._refuse(_head_too_large())
            return
        if bounds.head_bytes > bounds.head_budget:
            bounds.say("head_budget_exhausted", self.loop.time(), held=bounds.head_bytes,
                       limit=bounds.head_budget,
                       consequence="the oldest unfinished request heads are answered 503 and closed")
            for oldest in [c for c in bounds.waiting if c._head_held]:
                if bounds.head_bytes <= bounds.head_budget:
                    break
                oldest._drop_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        self._body_done()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def _answered_early(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.response_complete and cycle.more_body

    def _close(self) -> None:
        if self._lingering:
            return  # it ends by itself, soon
        transport = self._socket_transport
        if self._answered_early() and not transport.is_closing() and transport.can_write_eof():
            self._linger()
        else:
            transport.close()

    def _linger(self) -> None:
        self._lingering = True
        self._head_done()
        self._body_done()
        self._unset_keepalive_if_required()
        self._socket_transport.write_eof()  # after the answer
        self.flow.resume_reading()
        self._linger_until = self.loop.time() + LINGER_SECONDS
        self._linger_left = LINGER_BYTES
        self._linger_heard = False
        self._linger_timer = self.loop.call_later(LINGER_IDLE_SECONDS, self._linger_check)

    def _linger_check(self) -> None:
        if self._linger_heard and self.loop.time() < self._linger_until:
            self._linger_heard = False
            self._linger_timer = self.loop.call_later(LINGER_IDLE_SECONDS, self._linger_check)
        else:
            self._socket_transport.close()

    def _body_done(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        # Endpoints that read their body without a clock (the login form, the admin
        # API) would keep such a connection for ever. The webhook endpoint's own 408
        # comes first.
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if not cycle.response_started:
            self._refuse(RequestTimeout(f"request body not received within {self.bounds.body_timeout:g} s"))
        else:
            self.transport.close()

    def _refuse(self, error: HTTPError) -> None:
        self._head_done()
        request_id = new_request_id()
        body = json.dumps(error.to_response_body(request_id)).encode()
        self.transport.write(b"".join([
            STATUS_LINE[error.status_code],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: " + request_id.encode() + b"\r\n",
            *(f"{name}: {value}\r\n".encode("latin-1") for name, value in error.headers.items()),
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers unparseable requests in plain text; the relay's every
        # refusal is an ErrorResponse.
        self._refuse(self._refusal or BadRequest(f"malformed HTTP request: {msg}",
                                                 error_code="invalid_http_request"))

    def on_url(self, url: bytes) -> None:
        self._count_head_field(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._stop_parsing(_too_many_headers())
        self._count_head_field(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head_field(self, size: int) -> None:
        # A head that arrives in one read is parsed before data_received counts it,
        # so the parsed fields count too.
        self._head_fields += size
        if self._head_fields > MAX_REQUEST_HEAD_BYTES:
            self._stop_parsing(_head_too_large())

    def _stop_parsing(self, refusal: HTTPError) -> None:
        # Raising in a callback stops the parser, which then asks for a 400 that
        # send_400_response turns into this refusal.
        self._refusal = refusal
        raise ValueError(refusal.message)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport.is_closing():
            return
        if self._in_head:  # part of a request arrived: say why it is dropped
            self._refuse(RequestTimeout(
                f"request headers not received within {self.bounds.head_timeout:g} s"))
        else:  # idle: nothing to answer
            self._head_done()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_heard = True
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._socket_transport.close()
            return
        super().data_received(data)
        # Still waiting for the head's end: the whole chunk is held as head (a
        # chunk that completes the head was given back with it).
        if self._awaiting_head and not self.transport.is_closing():
            self._hold_head(len(data))

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_fields = self._header_count = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()
        self._body_done()
        self._body_timer = self.loop.call_later(self.bounds.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._body_done()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._answered_early() and not self.transport.is_closing():
            self.transport.close()  # lingers; see LINGER_SECONDS
        pipelined = bool(self.pipeline)  # its head is already complete
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_head()
