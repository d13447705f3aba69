"""One attempt to deliver, to Roark or to a destination: the request sent over a pooled
transport and its whole answer read, reported in the form `relay.forwarding.retry.decide`
understands. Retrying is the forwarder's job (persisted per row), never this module's."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from relay.core.transport import describe_error
from relay.forwarding.retry import AttemptResult
from relay.outbox import Delivery

#: Bodies from this size up are turned into the request on a worker thread.
OFF_LOOP_BYTES = 1024 * 1024
#: How much of an upstream error is kept; Roark's ErrorResponse messages are short.
MAX_ERROR_TEXT = 500


@dataclass(frozen=True)
class Outcome:
    result: AttemptResult
    roark_call_id: str | None = None
    error: str | None = None  # what an operator should read: upstream message or transport error


def claimed_body(delivery: Delivery) -> bytes:
    """The body of a claimed delivery: a claim loads it, only listings leave it out."""
    assert delivery.body is not None
    return delivery.body


def error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:MAX_ERROR_TEXT]}".strip()
    if isinstance(body, dict) and "message" in body:
        code = body.get("error_code") or body.get("error_type") or "error"
        return f"HTTP {response.status_code} {code}: {str(body['message'])[:MAX_ERROR_TEXT]}"
    return f"HTTP {response.status_code}: {json.dumps(body)[:MAX_ERROR_TEXT]}"


async def send(transport: httpx.AsyncBaseTransport,
               request: httpx.Request) -> tuple[Outcome, httpx.Response | None]:
    """One attempt: what it came to, and the (whole, read) response when there was one.

    Requests carry their body as `stream=`, not `content=`: httpx then neither sets Host
    and Content-Length (the transport writes both from the URL and the body) nor copies
    the body again, on every delivery."""
    try:
        response = await transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
    except httpx.TransportError as error:
        message = describe_error(error)[:MAX_ERROR_TEXT]
        return Outcome(AttemptResult(None, error=message), error=message), None
    result = AttemptResult(response.status_code, response.headers)
    return Outcome(result, error=None if response.is_success else error_text(response)), response
