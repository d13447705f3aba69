"""Sending one delivery to one of the team's destinations: the provider's body exactly as
received, signed the Standard Webhooks way, one attempt (retrying is the forwarder's).

Headers: `webhook-id` (the same on every attempt and replay of a webhook, so the
receiver can drop what it already has), `webhook-timestamp` (this attempt's unix
seconds), `webhook-signature`, and `x-relay-provider`, `x-relay-event`,
`x-relay-call-id` (when the webhook names a call). With `original_headers` the
provider's own authentication headers follow too, as they arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from urllib.parse import quote

import httpx

from relay import __version__
from relay.core.delivery_transport import DeliveryTransport
from relay.destinations.config import Destination
from relay.forwarding.attempt import OFF_LOOP_BYTES, Outcome, claimed_body, post
from relay.forwarding.retry import destination_receiver
from relay.outbox import Delivery

#: What a header value carries as it is: printable ASCII, but for the escape itself.
_PLAIN = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(text: str) -> str:
    """`text` as a header value: as it is when printable ASCII, else percent-encoded
    (UTF-8). A provider's call id or event name may hold any printable character, and a
    header cannot carry them as they are."""
    return text if text.isascii() and text.isprintable() else quote(text, safe=_PLAIN)


def _as_sent(credentials: Mapping[str, str]) -> dict[str, str]:
    """The provider's headers as they arrived. Stored decoded as latin-1, they are sent as
    text an HTTP client writes as UTF-8: so they read as UTF-8 when they were (what httpx
    did with them before, too), as latin-1 otherwise."""
    sent = {}
    for name, value in credentials.items():
        raw = value.encode("latin-1")
        try:
            sent[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            sent[name] = value
    return sent


def message_id(provider: str, dedupe_key: str) -> str:
    """Named after what the relay deduplicates on, so a webhook keeps its id however
    often the provider sent it, on every attempt, replay and relay instance."""
    digest = hashlib.sha256(f"{provider}\n{dedupe_key}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


class DestinationClient:
    def __init__(self, destination: Destination, proxy: str | None,
                 transport: DeliveryTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self.destination = destination
        self.receiver = destination_receiver(destination.name)
        self._transport = transport or DeliveryTransport(max_connections=destination.concurrency, proxy=proxy)
        self._url = destination.url

    async def deliver(self, delivery: Delivery, now: float) -> Outcome:
        msg_id, timestamp = message_id(delivery.provider, delivery.dedupe_key), int(now)
        body = claimed_body(delivery)
        if len(body) < OFF_LOOP_BYTES:
            signature = self.destination.sign(msg_id, timestamp, body)
        else:  # a body of many MB: hashed on a worker thread, the loop keeps answering
            signature = await asyncio.to_thread(self.destination.sign, msg_id, timestamp, body)
        headers: dict[str, str] = {
            **(_as_sent(delivery.credentials or {}) if self.destination.original_headers else {}),
            "content-type": "application/json",
            "user-agent": f"roark-relay/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "x-relay-provider": delivery.provider,
            "x-relay-event": header_value(delivery.event),
        }
        if delivery.call_id is not None:
            headers["x-relay-call-id"] = header_value(delivery.call_id)
        if delivery.request_id:
            headers["x-request-id"] = delivery.request_id
        outcome, _ = await post(self._transport, self._url, list(headers.items()), body,
                                  self.destination.timeout_seconds)
        return outcome

    async def aclose(self) -> None:
        await self._transport.aclose()
