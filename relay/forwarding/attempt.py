"""One attempt to deliver, to Roark or to a destination: the request sent over the
delivery transport's pool (relay.core.delivery_transport) and its whole answer read,
reported in the form `relay.forwarding.retry.decide` understands. Retrying is the
forwarder's job (persisted per row), never this module's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from relay.core.delivery_transport import Answer, DeliveryTransport, SendFailed
from relay.core.transport import describe_error, request_timeout
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


def error_text(answer: Answer) -> str:
    try:
        body = answer.json()
    except ValueError:
        text = answer.content.decode("utf-8", "replace")
        return f"HTTP {answer.status}: {text[:MAX_ERROR_TEXT]}".strip()
    if isinstance(body, dict) and "message" in body:
        code = body.get("error_code") or body.get("error_type") or "error"
        return f"HTTP {answer.status} {code}: {str(body['message'])[:MAX_ERROR_TEXT]}"
    return f"HTTP {answer.status}: {json.dumps(body)[:MAX_ERROR_TEXT]}"


async def post(transport: DeliveryTransport | httpx.AsyncBaseTransport, url: str,
               headers: Sequence[tuple[str, str]], body: bytes, deadline: float) -> tuple[Outcome, Answer | None]:
    """One attempt, whose whole answer must come within `deadline` seconds: what it came
    to, and the whole answer when there was one.

    A test's transport (httpx.MockTransport) gets an httpx Request, as httpx would send it."""
    try:
        if isinstance(transport, DeliveryTransport):
            answer = await transport.post(url, headers, body, deadline)
        else:
            answer = await _through_httpx(transport, url, headers, body, deadline)
    except (SendFailed, httpx.TransportError) as error:
        message = (str(error) if isinstance(error, SendFailed) else describe_error(error))[:MAX_ERROR_TEXT]
        return Outcome(AttemptResult(None, error=message), error=message), None
    result = AttemptResult(answer.status, answer.headers)
    return Outcome(result, error=None if answer.is_success else error_text(answer)), answer


async def _through_httpx(transport: httpx.AsyncBaseTransport, url: str, headers: Sequence[tuple[str, str]],
                         body: bytes, deadline: float) -> Answer:
    request = httpx.Request("POST", url, headers=list(headers), content=body,
                            extensions={"timeout": request_timeout(deadline).as_dict()})
    response = await transport.handle_async_request(request)
    try:
        content = await response.aread()
    finally:
        await response.aclose()
    return Answer(response.status_code, response.headers, content)
