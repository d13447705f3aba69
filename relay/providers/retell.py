"""Retell: `{"event": ..., "call": {...}}` webhooks, signed with the account's API key.

The `x-retell-signature` header is `v=<ms timestamp>,d=<hex HMAC-SHA256>`, the HMAC
covering the raw body (UTF-8 text; the relay refuses any other as invalid JSON)
followed directly by the decimal timestamp; a signature more than five minutes from now
is stale. Roark's `POST /v1/retell/call`
takes the whole envelope of a `call_ended` webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from relay.core import jsonbody
from relay.core.envvars import Secret, Secrets, Url, setting
from relay.core.errors import Unauthorized
from relay.providers.base import NO_OBJECT, BodyCheck, Provider, RoarkEndpoint, nested_id
from relay.providers.retell_calls import RetellCalls
from relay.providers.signing import TOLERANCE_SECONDS, MacCheck, check_window, require_header

# Leading zeros are refused so the digits Retell signed are exactly str(int(digits)).
# Twenty digits is far beyond any real timestamp and keeps int() cheap on hostile input.
_SIGNATURE = re.compile(r"v=([1-9][0-9]{0,19}),d=([0-9a-f]{64})")


@dataclass(frozen=True)
class RetellSettings:
    api_keys: tuple[Secret, ...] = setting(
        "RETELL_API_KEY", (), Secrets(),
        """Your Retell API key (the one with the webhook badge); verifies
        x-retell-signature. Without it every Retell webhook is refused with 401. The first
        key also lets the relay list the calls that ended and queue those whose
        call_ended never came (see RELAY_RECONCILE_INTERVAL_SECONDS).""",
        example="", section="Retell")
    api_base_url: str = setting(
        "RETELL_API_BASE_URL", "https://api.retellai.com", Url(), "Retell's API, for reconciliation.")


def digest(api_key: str, raw_body: bytes, timestamp_ms: int) -> str:
    """The hex digest Retell puts after `d=`: over the body's bytes, which for the UTF-8
    text Retell signs are the text's own, then the timestamp's digits."""
    mac = hmac.new(api_key.encode("utf-8"), raw_body, hashlib.sha256)
    mac.update(str(timestamp_ms).encode("ascii"))
    return mac.hexdigest()


def sign(api_key: str, raw_body: bytes, timestamp_ms: int) -> str:
    """The `x-retell-signature` header value Retell would send for this body."""
    return f"v={timestamp_ms},d={digest(api_key, raw_body, timestamp_ms)}"


def check_signature_headers(
    api_keys: Sequence[str], headers: Mapping[str, str], now: float, tolerance: float = TOLERANCE_SECONDS
) -> MacCheck:
    """Refuse what the headers alone condemn (no key, no or malformed signature, stale
    timestamp) before a byte of the body is read; what is left needs the body."""
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
    macs = [hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256) for key in keys]
    return MacCheck(macs, str(timestamp_ms).encode("ascii"), match[2].encode("ascii"),
                    "x-retell-signature", hexadecimal=True)


def verify_signature(
    api_keys: Sequence[str],
    raw_body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Accept the request if `x-retell-signature` was made with any of `api_keys`."""
    check_signature_headers(api_keys, headers, now, tolerance).verify_body(raw_body)


class _Call(msgspec.Struct):
    id: Any = msgspec.field(default=None, name="call_id")


class RetellHead(msgspec.Struct):
    event: Any = None
    call: msgspec.Raw = NO_OBJECT


class Retell(Provider):
    name = "retell"
    title = "Retell"
    Settings = RetellSettings
    secret_variables = "RETELL_API_KEY"
    api_key_variable = "RETELL_API_KEY"
    roark = RoarkEndpoint("/v1/retell/call", "retell_call_ended_payload", "retellCallEndedPayload")
    events = frozenset({"call_started", "call_ended", "call_analyzed", "transcript_updated",
                        "transfer_started", "transfer_bridged", "transfer_cancelled",
                        "transfer_ended"})
    roark_events = frozenset({"call_ended"})
    once_per_call = frozenset({"call_started", "call_ended", "call_analyzed"})

    def configured(self, config: RetellSettings) -> bool:
        return bool(config.api_keys)

    def call_source(self, config: RetellSettings) -> RetellCalls | None:
        if not config.api_keys:
            return None
        return RetellCalls(config.api_base_url, config.api_keys[0], self.api_key_variable)

    def check_headers(self, config: RetellSettings, headers: Mapping[str, str],
                      now: float) -> BodyCheck:
        if not config.api_keys:
            raise Unauthorized(
                "Retell webhooks are refused: RETELL_API_KEY is not configured on this relay",
                error_code="provider_not_configured",
            )
        return check_signature_headers([key.reveal() for key in config.api_keys], headers, now)

    Head = RetellHead

    def credential_headers(self, config: RetellSettings) -> frozenset[str]:
        return frozenset({"x-retell-signature"})

    def sign(self, config: RetellSettings, raw_body: bytes, now: float) -> dict[str, str]:
        if not config.api_keys:
            raise ValueError("RETELL_API_KEY is not set")
        return {"x-retell-signature": sign(config.api_keys[0].reveal(), raw_body, int(now * 1000))}

    def event_and_call_id(self, head: RetellHead) -> tuple[object, object]:
        return head.event, nested_id(head.call, _Call)

    def roark_payload(self, raw_body: bytes) -> msgspec.Raw:
        return msgspec.Raw(jsonbody.without_bom(raw_body))  # Roark takes the whole envelope


RETELL = Retell()
