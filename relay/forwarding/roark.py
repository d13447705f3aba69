"""The Roark API client: the request Roark's spec defines for a stored webhook, sent over
one shared pool of keep-alive connections (relay.core.delivery_transport) with a deadline,
one attempt at a time (relay.forwarding.attempt)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from relay import __version__
from relay.core import jsonbody
from relay.core.delivery_transport import DeliveryTransport
from relay.core.redaction import Redactor
from relay.forwarding.attempt import OFF_LOOP_BYTES, Outcome, claimed_body, post
from relay.forwarding.retry import ROARK_RECEIVER, AttemptResult
from relay.outbox import Delivery
from relay.providers import PROVIDERS, Provider
from relay.settings import Settings


def roark_body(
    provider: Provider,
    raw_body: bytes,
    properties: Mapping[str, Any],
    field_case: str = "snake",
    strip_secrets: Redactor | None = None,
) -> bytes:
    """The JSON body Roark's spec defines for this stored webhook; ValueError (or
    RecursionError) when it cannot be made, which no retry would change.

    The payload is carried over as the bytes received, not decoded and encoded again:
    a large report costs a copy, not a parse, and stripping cuts the fields it removes
    out of the text."""
    payload = provider.roark_payload(raw_body)
    if strip_secrets is not None:
        payload = strip_secrets.strip_json(payload)
    camel = field_case == "camel"
    body: dict[str, Any] = {
        provider.roark.camel_payload_field if camel else provider.roark.payload_field: payload,
        "skipAlreadyImported" if camel else "skip_already_imported": True,
    }
    if properties:
        body["properties"] = dict(properties)
    return jsonbody.dumps(body)


def roark_call_id(response_json: object) -> str | None:
    """Roark's id for the imported call, from `{"data": {"call_id": ...}}` (or `callId`)."""
    if isinstance(response_json, dict) and isinstance(response_json.get("data"), dict):
        data = response_json["data"]
        value = data.get("call_id", data.get("callId"))
        return value if isinstance(value, str) else None
    return None


class RoarkClient:
    """Sends through the transport directly (relay.forwarding.attempt.post): httpx's client
    layer (URL merging, cookies, redirects, event hooks), and even its Request and
    Response, cost more CPU per delivery than the sending itself, and the relay needs
    none of it (redirects are answered by pausing, not followed)."""

    receiver = ROARK_RECEIVER

    def __init__(self, settings: Settings,
                 transport: DeliveryTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._strip_secrets = Redactor(settings.redact_keys) if settings.strip_secrets_upstream else None
        self._transport = transport or DeliveryTransport(
            max_connections=settings.forward_concurrency, proxy=settings.roark_proxy)
        # Settings read for forwarding (Settings.from_env) require it.
        assert settings.roark_api_key is not None
        base = settings.roark_base_url.rstrip("/")
        self._urls = {name: base + p.roark.path for name, p in PROVIDERS.items()}
        self._headers = [
            ("Authorization", f"Bearer {settings.roark_api_key.reveal()}"),
            ("User-Agent", f"roark-relay/{__version__}"),
            ("Content-Type", "application/json"),
        ]

    async def deliver(self, delivery: Delivery, now: float) -> Outcome:
        provider = PROVIDERS[delivery.provider]
        stored = claimed_body(delivery)
        arguments = (
            provider,
            stored,
            # The webhook URL's own properties win over the relay-wide ones.
            {**self._settings.roark_properties, **(delivery.properties or {})},
            self._settings.roark_field_case,
            self._strip_secrets,
        )
        try:
            if len(stored) < OFF_LOOP_BYTES:
                body = roark_body(*arguments)
            else:
                # Hundreds of milliseconds for a report of many MB: on a worker thread, the
                # event loop gets the interpreter back between its steps and keeps
                # answering webhooks and /health meanwhile.
                body = await asyncio.to_thread(roark_body, *arguments)
        except (ValueError, RecursionError) as error:
            # Verified and parsed at ingest, so this is a payload no retry will fix.
            message = f"payload cannot be encoded for Roark: {type(error).__name__}"
            return Outcome(AttemptResult(None, error=message, permanent=True), error=message)
        # The request id lets Roark's support and our logs name the same webhook.
        headers = [*self._headers, ("X-Request-ID", delivery.request_id)] if delivery.request_id else self._headers
        outcome, answer = await post(self._transport, self._urls[delivery.provider], headers, body,
                                    self._settings.roark_timeout_seconds)
        if answer is not None and answer.is_success:
            try:
                call_id = roark_call_id(answer.json())
            except ValueError:
                call_id = None
            return Outcome(outcome.result, roark_call_id=call_id)
        return outcome

    async def aclose(self) -> None:
        await self._transport.aclose()
