"""Request bodies read within bounds: a size, a deadline, a minimum pace, and a budget of
bytes the process holds at once (relay.core.budget), counted as they arrive. A refusal
closes the connection: kept alive, the client could go on sending the rest of the body
into a connection nobody reads a request from any more."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from relay.core.budget import BodyHold
from relay.core.errors import BadRequest, PayloadTooLarge, RequestTimeout, ServiceUnavailable
from relay.settings import Settings
from relay.web.requests import BUSY_RETRY_AFTER_SECONDS


def check_declared_length(request: Request, max_bytes: int) -> None:
    """Refuse a body announced too large before a byte of it is read."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    # isascii too: headers decode as latin-1, where "²" is a digit int() refuses (a
    # 500; uvicorn's parser stops it first, but the app must not rely on that).
    if not (declared.isascii() and declared.isdigit()):
        raise BadRequest("Content-Length is not a number", parameter="content-length")
    if int(declared) > max_bytes:
        raise PayloadTooLarge(f"body exceeds the {max_bytes}-byte limit")


async def read_body(
    request: Request,
    max_bytes: int,
    timeout: float,
    hold: BodyHold | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
    pace: Pace | None = None,
) -> bytes:
    """The whole body, refusing more than `max_bytes`, clients slower than `timeout` (or
    than `pace`), and bodies `hold`'s budget has no room for (503: the provider tries
    again later). `on_chunk` sees each chunk as it arrives."""
    check_declared_length(request, max_bytes)
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    window_ends = window_bytes = 0.0
    try:
        async with asyncio.timeout_at(deadline) as clock:
            if pace is not None:
                window_ends = loop.time() + pace.window
                clock.reschedule(min(deadline, window_ends))
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"body exceeds the {max_bytes}-byte limit")
                if hold is not None and not hold.grow(len(chunk)):
                    raise overloaded()
                if on_chunk is not None:
                    on_chunk(chunk)
                chunks.append(chunk)
                if pace is not None:
                    window_bytes += len(chunk)
                    if window_bytes >= pace.window_bytes:  # this window's due: the next begins
                        window_bytes, window_ends = 0.0, loop.time() + pace.window
                        clock.reschedule(min(deadline, window_ends))
    except TimeoutError:
        # Close the connection too: kept alive, the client could go on trickling the
        # rest of this body into a connection nobody reads a request from any more.
        why = (f"body arriving slower than {pace.bytes_per_second} bytes per second"
               if pace is not None and window_ends < deadline else f"body not received within {timeout:g} s")
        raise RequestTimeout(why, headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise BadRequest("client disconnected before sending the whole body") from None
    return b"".join(chunks)


@dataclass(frozen=True)
class Pace:
    """The slowest a body may arrive: `bytes_per_second` over every `window` seconds. A
    client that trickles holds a connection and its bytes of the budget; providers send
    from data centres at many times this."""

    bytes_per_second: int
    window: float

    @property
    def window_bytes(self) -> float:
        return self.bytes_per_second * self.window

    @classmethod
    def of(cls, settings: Settings) -> Pace | None:
        if settings.body_min_bytes_per_second <= 0:
            return None
        return cls(settings.body_min_bytes_per_second, settings.body_rate_window_seconds)


def client_key(request: Request) -> str | None:
    """Who shares one client's part of a budget: its address, or for IPv6 its /64, which
    one host is commonly given whole."""
    if request.client is None:
        return None
    host = request.client.host
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host, 64), strict=False))
    except ValueError:
        return host


def overloaded() -> ServiceUnavailable:
    return ServiceUnavailable("the relay is holding as many request bodies as it may; retry shortly",
                              error_code="overloaded", retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
                              headers={"Connection": "close"})
