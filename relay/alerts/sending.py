"""Sending one message to one channel, and what to do when it did not go: a pure
decision (`next_try`), like deliveries', so it is tested without waiting.

A channel that does not take a message (no answer, 5xx, 408, 425, 429) gets it again,
backing off from RELAY_ALERT_RETRY_BASE_SECONDS and never sooner than its Retry-After;
one that refuses it (any other answer) is not asked again: Slack's 403 `invalid_token`
or 404 `no_service` do not heal by retrying. Either way the status page shows the
channel failing, with the answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from relay import __version__
from relay.core.backoff import RetryPolicy, backoff_delay
from relay.core.transport import Transport, describe_error, parse_retry_after, request_timeout
from relay.destinations import Channel
from relay.forwarding.retry import RETRYABLE_STATUSES

#: Of an answer, what an operator is shown.
SHOWN_ANSWER_CHARS = 200
#: A channel's answers are a word ("ok") or a short error.
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Sent:
    """How one send went: `status` None when nothing answered."""

    status: int | None
    answer: str
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status in RETRYABLE_STATUSES

    def describe(self) -> str:
        said = f"answered {self.status}" if self.status is not None else "unreachable"
        return f"{said}: {self.answer}" if self.answer else said


def next_try(policy: RetryPolicy, attempt: int, sent: Sent, now: float,
             rand: Callable[[], float] = random.random) -> float | None:
    """When to send again after the `attempt`-th try (1-based) went as `sent`; None: never
    (it went, the channel refused it, or the attempts are spent)."""
    if sent.ok or not sent.retryable or attempt >= policy.max_attempts:
        return None
    delay = backoff_delay(policy, attempt, rand)
    if sent.retry_after is not None:
        delay = max(delay, min(sent.retry_after, policy.max_retry_after))
    return now + delay


class ChannelClient:
    """POSTs to one channel: Slack's JSON as it is, a webhook channel's signed."""

    def __init__(self, channel: Channel, timeout: float, proxy: str | None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.channel = channel
        self._client = httpx.AsyncClient(
            transport=transport or Transport(max_connections=4, proxy=proxy, max_response_bytes=MAX_ANSWER_BYTES),
            timeout=request_timeout(timeout))

    async def send(self, message_id: str, body: bytes, now: float | None = None) -> Sent:
        headers = {"content-type": "application/json", "user-agent": f"roark-relay/{__version__}"}
        if self.channel.format == "webhook":
            timestamp = int(time.time() if now is None else now)
            headers |= {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
                        "webhook-signature": self.channel.sign(message_id, timestamp, body)}
        try:
            response = await self._client.post(self.channel.url, content=body, headers=headers)
        except httpx.TransportError as error:
            return Sent(None, describe_error(error))
        answer = " ".join(response.text.split())[:SHOWN_ANSWER_CHARS]
        return Sent(response.status_code, answer, parse_retry_after(response.headers, time.time()))

    async def aclose(self) -> None:
        await self._client.aclose()
