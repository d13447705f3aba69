"""Receiving a webhook: bound the body, verify it, store it durably, then acknowledge.

The order matters. Whatever the headers alone condemn (no credential, a malformed or
stale signature, a wrong shared token) is refused before a byte of the body is read.
The body is capped, timed and counted against the process's body budget as it arrives;
the signature is computed over the exact bytes received, chunk by chunk, before any
parsing; and the 200 is sent only after the outbox commit that holds the webhook. If
the store cannot take the write the provider gets 503 + Retry-After and sends it again
later: a 2xx never stands for data the relay does not hold.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from relay.web.budget import BodyHold
from relay.destinations import owed
from relay.core.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    HTTPError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    StoreUnavailable,
    UnsupportedMediaType,
)
from relay.outbox import NewDelivery
from relay.providers import PROVIDERS, Provider
from relay.providers.signing import TOLERANCE_SECONDS
from relay.web.responses import JSONResponse
from relay.settings import Settings
from relay.http.sources import source_properties

log = structlog.get_logger("relay.http.ingest")

#: Longest a webhook waits for its commit before it is answered 503 (providers time out
#: webhooks after 10-20 s; a 503 with Retry-After is better than a timeout).
STORE_WAIT_SECONDS = 5.0
#: Bodies held are released within seconds, so a provider's retry soon finds room.
OVERLOAD_RETRY_AFTER_SECONDS = 2


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
                    raise _overloaded()
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


def _overloaded() -> ServiceUnavailable:
    return ServiceUnavailable("the relay is holding as many request bodies as it may; retry shortly",
                              error_code="overloaded", retry_after_seconds=OVERLOAD_RETRY_AFTER_SECONDS,
                              headers={"Connection": "close"})


def check_content_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            "webhooks must be sent as application/json", parameter="content-type"
        )


async def receive_webhook(request: Request) -> Response:
    state = request.app.state
    provider = PROVIDERS.get(request.path_params["provider"])
    if provider is None:
        raise NotFound(f"no webhook endpoint for {request.path_params['provider']!r}")
    started = time.perf_counter()
    fields = {"request_id": request.state.request_id, "provider": provider.name}
    hold = BodyHold(state.unverified_bodies, client_key(request))
    try:
        outcome, response = await _receive(request, provider, hold, fields)
    except HTTPError as error:
        outcome = ("unavailable" if isinstance(error, ServiceUnavailable) else
                   "unanswered" if isinstance(error, (BadGateway, GatewayTimeout)) else "rejected")
        state.metrics.webhooks.labels(provider.name, outcome).inc()
        log.info("webhook_received", outcome=outcome, status=error.status_code,
                 error_code=error.error_code,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
        raise
    finally:
        hold.release()
    state.metrics.webhooks.labels(provider.name, outcome).inc()
    log.info("webhook_received", outcome=outcome, status=response.status_code,
             duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
    return response


async def _receive(
    request: Request, provider: Provider, hold: BodyHold, fields: dict[str, Any]
) -> tuple[str, Response]:
    state = request.app.state
    settings: Settings = state.settings
    properties = source_properties(
        settings.sources, request.path_params.get("source"),
        # Parsed only when there is one: most webhook URLs carry none.
        request.query_params.multi_items() if request.scope["query_string"] else [],
        settings.query_properties,
    )
    check_content_type(request)
    config = settings.providers[provider.name]
    # What the headers alone condemn is refused before a byte of the body is held.
    check = None
    if provider.name not in settings.insecure_skip_verification:
        check = provider.check_headers(config, request.headers, time.time())
        # None: the headers proved it (a shared token), so the body is as good as verified.
        if check is None and not hold.move_to(state.verified_bodies):
            raise _overloaded()
    utf8 = codecs.getincrementaldecoder("utf-8")()

    def take(chunk: bytes) -> None:
        if check is not None:
            check.update(chunk)
        utf8.decode(chunk)  # JSON is UTF-8; checked as it streams, without a decoded copy

    try:
        raw_body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds,
                                   hold, take, state.body_pace)
        if check is not None:
            check.verify()
        utf8.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise BadRequest(f"body is not valid UTF-8: {error.reason} at byte {error.start}",
                         error_code="invalid_json") from None
    if not hold.move_to(state.verified_bodies):
        raise _overloaded()
    envelope = provider.envelope(raw_body)
    fields.update(event_type=envelope.event, call_id=envelope.call_id)
    if envelope.event in provider.request_response and (url := provider.answer_url(config)):
        # Answered by the team's server, while the provider waits; nothing is stored.
        started = time.perf_counter()
        status = "unanswered"
        try:
            answer = await state.pass_through.answer(
                url, raw_body, request.headers.raw, client=request.client.host if request.client else None,
                scheme=request.url.scheme, deadline=provider.answer_deadline(config, envelope.event),
                # A shared token is the credential the team's server checks too; a
                # signature is what tells a replay from the provider's own message.
                keep_authorization=check is None, request_id=request.state.request_id,
                signature=None if check is None else check.signature, signature_window=2 * TOLERANCE_SECONDS)
            status = str(answer.status_code)
        finally:
            state.metrics.passed_through.labels(provider.name, envelope.event, status).inc()
            state.metrics.pass_through_seconds.labels(provider.name, envelope.event).observe(
                time.perf_counter() - started)
        return "passed_through", answer
    destinations = owed(settings.destinations, provider.name, envelope.event)
    if not destinations:
        return "ignored", JSONResponse({"data": {
            "status": "ignored",
            "reason": f"only {', '.join(sorted(provider.roark_events))} is forwarded to Roark, "
                      "and no destination (RELAY_DESTINATIONS) asks for this event",
        }})
    credentials = None
    if any(d.original_headers and d.name in destinations for d in settings.destinations):
        names = provider.credential_headers(config)
        credentials = {name: value for name, value in request.headers.items() if name in names} or None
    try:
        # Bounded: while the store is locked, the commit queues behind the forwarder's
        # writes, each waiting out SQLite's busy timeout, and the storage-fault suite saw
        # 503s take 12 s, past providers' timeouts. The commit itself goes on; if it lands
        # after this 503, the provider's retry is answered as a duplicate.
        inserted = await state.outbox.insert(NewDelivery(
            provider=provider.name,
            event=envelope.event,
            call_id=envelope.call_id,
            dedupe_key=envelope.dedupe_key,
            body=raw_body,
            received_at=time.time(),
            request_id=request.state.request_id,
            properties=properties or None,
            destinations=destinations,
            credentials=credentials,
        ), timeout=STORE_WAIT_SECONDS)
    except (StoreUnavailable, TimeoutError) as error:
        reason = str(error) or f"no commit within {STORE_WAIT_SECONDS:g} s"
        log.error("store_unavailable", error=reason, **fields)
        raise ServiceUnavailable(
            "the relay cannot store webhooks right now; retry later",
            error_code="store_unavailable",
            retry_after_seconds=settings.store_retry_after_seconds,
        ) from None
    fields["delivery_id"] = inserted.delivery_id
    if not inserted.duplicate:
        state.forwarders.wake()
    outcome = "duplicate" if inserted.duplicate else "accepted"
    return outcome, JSONResponse({"data": {"status": outcome, "delivery_id": inserted.delivery_id,
                                           "deliveries": dict(inserted.deliveries)}})
