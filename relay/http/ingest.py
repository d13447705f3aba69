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

import codecs
import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from relay.core.budget import BodyHold
from relay.core.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    HTTPError,
    NotFound,
    ServiceUnavailable,
    StoreUnavailable,
    UnsupportedMediaType,
)
from relay.destinations import owed
from relay.http.services import Services
from relay.http.sources import source_properties
from relay.outbox import NewDelivery
from relay.providers import PROVIDERS, Provider
from relay.providers.signing import TOLERANCE_SECONDS
from relay.web.bodies import client_key, overloaded, read_body
from relay.web.requests import store_unavailable
from relay.web.responses import JSONResponse

log = structlog.get_logger("relay.http.ingest")

#: Longest a webhook waits for its commit before it is answered 503 (providers time out
#: webhooks after 10-20 s; a 503 with Retry-After is better than a timeout).
STORE_WAIT_SECONDS = 5.0


def check_content_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            "webhooks must be sent as application/json", parameter="content-type"
        )


class Ingest:
    """The webhook endpoint (POST /webhooks/PROVIDER[/SOURCE]), handed its services."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def receive(self, request: Request) -> Response:
        services = self.services
        provider = PROVIDERS.get(request.path_params["provider"])
        if provider is None:
            raise NotFound(f"no webhook endpoint for {request.path_params['provider']!r}")
        started = time.perf_counter()
        fields = {"request_id": request.state.request_id, "provider": provider.name}
        hold = BodyHold(services.unverified_bodies, client_key(request))
        try:
            outcome, response = await self._receive(request, provider, hold, fields)
        except HTTPError as error:
            outcome = ("unavailable" if isinstance(error, ServiceUnavailable) else
                       "unanswered" if isinstance(error, (BadGateway, GatewayTimeout)) else "rejected")
            services.metrics.webhooks.labels(provider.name, outcome).inc()
            log.info("webhook_received", outcome=outcome, status=error.status_code,
                     error_code=error.error_code,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
            raise
        finally:
            hold.release()
        services.metrics.webhooks.labels(provider.name, outcome).inc()
        log.info("webhook_received", outcome=outcome, status=response.status_code,
                 duration_ms=round((time.perf_counter() - started) * 1000, 2), **fields)
        return response

    async def _receive(
        self, request: Request, provider: Provider, hold: BodyHold, fields: dict[str, Any]
    ) -> tuple[str, Response]:
        services = self.services
        settings = services.settings
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
            if check is None and not hold.move_to(services.verified_bodies):
                raise overloaded()
        utf8 = codecs.getincrementaldecoder("utf-8")()

        def take(chunk: bytes) -> None:
            if check is not None:
                check.update(chunk)
            utf8.decode(chunk)  # JSON is UTF-8; checked as it streams, without a decoded copy

        try:
            raw_body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds,
                                       hold, take, services.body_pace)
            if check is not None:
                check.verify()
            utf8.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise BadRequest(f"body is not valid UTF-8: {error.reason} at byte {error.start}",
                             error_code="invalid_json") from None
        if not hold.move_to(services.verified_bodies):
            raise overloaded()
        envelope = provider.envelope(raw_body)
        fields.update(event_type=envelope.event, call_id=envelope.call_id)
        if envelope.event in provider.request_response and (url := provider.answer_url(config)):
            # Answered by the team's server, while the provider waits; nothing is stored.
            started = time.perf_counter()
            status = "unanswered"
            try:
                answer = await services.pass_through.answer(
                    url, raw_body, request.headers.raw, client=request.client.host if request.client else None,
                    scheme=request.url.scheme, deadline=provider.answer_deadline(config, envelope.event),
                    # A shared token is the credential the team's server checks too; a
                    # signature is what tells a replay from the provider's own message.
                    keep_authorization=check is None, request_id=request.state.request_id,
                    signature=None if check is None else check.signature, signature_window=2 * TOLERANCE_SECONDS)
                status = str(answer.status_code)
            finally:
                services.metrics.passed_through.labels(provider.name, envelope.event, status).inc()
                services.metrics.pass_through_seconds.labels(provider.name, envelope.event).observe(
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
            # Bounded: while the store is locked, the commit queues behind other writes, each
            # waiting out the busy timeout, longer than providers wait for an answer. The
            # commit itself goes on; if it lands after this 503, the provider's retry is
            # answered as a duplicate.
            inserted = await services.outbox.insert(NewDelivery(
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
            raise store_unavailable("the relay cannot store webhooks right now; retry later") from None
        fields["delivery_id"] = inserted.delivery_id
        if not inserted.duplicate:
            services.forwarders.wake()
        outcome = "duplicate" if inserted.duplicate else "accepted"
        return outcome, JSONResponse({"data": {"status": outcome, "delivery_id": inserted.delivery_id,
                                               "deliveries": dict(inserted.deliveries)}})
