"""Receiving a webhook: bound the body, verify it, store it durably, then acknowledge.

The order matters. The body is capped and timed before it is read whole; the signature
is checked against the exact bytes received, before any parsing; and the 200 is sent
only after the outbox commit that holds the webhook. If the store cannot take the write
the provider gets 503 + Retry-After and sends it again later: a 2xx never stands for
data the relay does not hold.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from relay.errors import (
    BadRequest,
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
from relay.settings import Settings
from relay.sources import source_properties

log = structlog.get_logger("relay.ingest")

#: Longest a webhook waits for its commit before it is answered 503 (providers time out
#: webhooks after 10-20 s; a 503 with Retry-After is better than a timeout).
STORE_WAIT_SECONDS = 5.0


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The whole body, refusing more than `max_bytes` and clients slower than `timeout`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # isascii too: headers decode as latin-1, where "²" is a digit int() refuses (a
        # 500; uvicorn's parser stops it first, but the app must not rely on that).
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("Content-Length is not a number", parameter="content-length")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"body exceeds the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"body exceeds the {max_bytes}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        # Close the connection too: kept alive, the client could go on trickling the
        # rest of this body into a connection nobody reads a request from any more.
        raise RequestTimeout(f"body not received within {timeout:g} s",
                             headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise BadRequest("client disconnected before sending the whole body") from None
    return b"".join(chunks)


def check_content_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            "webhooks must be sent as application/json", parameter="content-type"
        )


def verify(settings: Settings, provider: Provider, raw_body: bytes, request: Request) -> None:
    if provider.name not in settings.insecure_skip_verification:
        provider.verify(settings.providers[provider.name], raw_body, request.headers, time.time())


async def receive_webhook(request: Request) -> JSONResponse:
    state = request.app.state
    settings: Settings = state.settings
    provider = PROVIDERS.get(request.path_params["provider"])
    if provider is None:
        raise NotFound(f"no webhook endpoint for {request.path_params['provider']!r}")
    started = time.perf_counter()
    fields = {"request_id": request.state.request_id, "provider": provider.name}
    try:
        properties = source_properties(
            settings.sources, request.path_params.get("source"), request.query_params.multi_items(),
            settings.query_properties,
        )
        check_content_type(request)
        raw_body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
        verify(settings, provider, raw_body, request)
        envelope = provider.envelope(raw_body)
        fields.update(event_type=envelope.event, call_id=envelope.call_id)
        if envelope.event not in provider.roark_events:
            outcome, data = "ignored", {
                "status": "ignored",
                "reason": f"only {', '.join(sorted(provider.roark_events))} is forwarded to Roark",
            }
        else:
            try:
                # Bounded: while the store is locked, the commit queues behind the
                # forwarder's writes, each waiting out SQLite's busy timeout, and the
                # storage-fault suite saw 503s take 12 s, past providers' timeouts. The
                # commit itself goes on (shielded in the outbox); if it lands after this
                # 503, the provider's retry is answered as a duplicate.
                async with asyncio.timeout(STORE_WAIT_SECONDS):
                    inserted = await state.outbox.insert(NewDelivery(
                        provider=provider.name,
                        event=envelope.event,
                        call_id=envelope.call_id,
                        dedupe_key=envelope.dedupe_key,
                        body=raw_body,
                        received_at=time.time(),
                        request_id=request.state.request_id,
                        properties=properties or None,
                    ))
            except (StoreUnavailable, TimeoutError) as error:
                reason = str(error) or f"no commit within {STORE_WAIT_SECONDS:g} s"
                log.error("store_unavailable", error=reason, **fields)
                raise ServiceUnavailable(
                    "the relay cannot store webhooks right now; retry later",
                    error_code="store_unavailable",
                    retry_after_seconds=settings.store_retry_after_seconds,
                ) from None
            outcome = "duplicate" if inserted.duplicate else "accepted"
            data = {"status": outcome, "delivery_id": inserted.delivery_id}
            fields["delivery_id"] = inserted.delivery_id
            if not inserted.duplicate:
                state.forwarder.wake()
    except HTTPError as error:
        outcome = "unavailable" if isinstance(error, ServiceUnavailable) else "rejected"
        state.metrics.webhooks.labels(provider.name, outcome).inc()
        log.info("webhook_received", outcome=outcome, status=error.status_code,
                 error_code=error.error_code,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
        raise
    state.metrics.webhooks.labels(provider.name, outcome).inc()
    log.info("webhook_received", outcome=outcome, status=200,
             duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
    return JSONResponse({"data": data})
