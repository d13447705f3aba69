"""Retell: `{"event": ..., "call": {...}}` webhooks, signed with the account's API key.

The `x-retell-signature` header is `v=<ms timestamp>,d=<hex HMAC-SHA256>`, the HMAC
covering the raw body (as UTF-8 text) followed directly by the decimal timestamp; a
signature more than five minutes from now is stale. Roark's `POST /v1/retell/call`
takes the whole envelope of a `call_ended` webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.envvars import Secret, Secrets, setting
from relay.errors import Unauthorized
from relay.providers.base import Provider, RoarkEndpoint
from relay.providers.signing import TOLERANCE_SECONDS, check_window, require_header

# Leading zeros are refused so the digits Retell signed are exactly str(int(digits)).
# Twenty digits is far beyond any real timestamp and keeps int() cheap on hostile input.
_SIGNATURE = re.compile(r"v=([1-9][0-9]{0,19}),d=([0-9a-f]{64})")


@dataclass(frozen=True)
class RetellSettings:
    api_keys: tuple[Secret, ...] = setting(
        "RETELL_API_KEY", (), Secrets(),
        """Your Retell API key (the one with the webhook badge); verifies
        x-retell-signature. Without it every Retell webhook is refused with 401.""",
        example="", section="Retell")


def digest(api_key: str, raw_body: bytes, timestamp_ms: int) -> str:
    """The hex digest Retell puts after `d=`.

    Raises UnicodeDecodeError when `raw_body` is not UTF-8: Retell's scheme is defined on
    the body as text, so such a body has no valid signature.
    """
    message = raw_body.decode("utf-8") + str(timestamp_ms)
    return hmac.new(api_key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(api_key: str, raw_body: bytes, timestamp_ms: int) -> str:
    """The `x-retell-signature` header value Retell would send for this body."""
    return f"v={timestamp_ms},d={digest(api_key, raw_body, timestamp_ms)}"


def verify_signature(
    api_keys: Sequence[str],
    raw_body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Accept the request if `x-retell-signature` was made with any of `api_keys`."""
    if isinstance(api_keys, str):
        raise TypeError("api_keys must be a sequence of keys, not a single string")
    # An empty key is a configuration gap, not a key anybody should be able to sign with.
    keys = [key for key in api_keys if key]
    if not keys:
        raise Unauthorized("no Retell API key is configured", error_code="provider_not_configured")

    match = _SIGNATURE.fullmatch(require_header(headers, "x-retell-signature"))
    if match is None:
        raise Unauthorized(
            "x-retell-signature header must be v=<ms timestamp>,d=<64 lowercase hex digits>",
            error_code="malformed_signature",
        )
    timestamp_ms = int(match[1])
    check_window(now - timestamp_ms / 1000, tolerance)

    presented = match[2].encode("ascii")
    try:
        matched = any(
            hmac.compare_digest(digest(key, raw_body, timestamp_ms).encode("ascii"), presented)
            for key in keys
        )
    except UnicodeDecodeError:
        raise Unauthorized(
            "request body is not valid UTF-8, so it cannot carry a Retell signature",
            error_code="invalid_signature",
        ) from None
    if not matched:
        raise Unauthorized(
            "x-retell-signature does not match the request body", error_code="invalid_signature"
        )


class Retell(Provider):
    name = "retell"
    title = "Retell"
    Settings = RetellSettings
    secret_variables = "RETELL_API_KEY"
    roark = RoarkEndpoint("/v1/retell/call", "retell_call_ended_payload", "retellCallEndedPayload")
    events = frozenset({"call_started", "call_ended", "call_analyzed", "transcript_updated",
                        "transfer_started", "transfer_bridged", "transfer_cancelled",
                        "transfer_ended"})
    roark_events = frozenset({"call_ended"})
    once_per_call = frozenset({"call_started", "call_ended", "call_analyzed"})

    def configured(self, config: RetellSettings) -> bool:
        return bool(config.api_keys)

    def verify(self, config: RetellSettings, raw_body: bytes, headers: Mapping[str, str],
               now: float) -> None:
        if not config.api_keys:
            raise Unauthorized(
                "Retell webhooks are refused: RETELL_API_KEY is not configured on this relay",
                error_code="provider_not_configured",
            )
        verify_signature([key.reveal() for key in config.api_keys], raw_body, headers, now)

    def event_and_call_id(self, document: dict[str, Any]) -> tuple[object, object]:
        call = document.get("call")
        return document.get("event"), call.get("call_id") if isinstance(call, dict) else None

    def roark_payload(self, document: dict[str, Any]) -> Any:
        return document


RETELL = Retell()
