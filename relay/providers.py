"""What the relay knows about each provider's webhooks and Roark's matching endpoint.

Inbound: which event a verified body carries, its call id, and whether Roark wants it
(VAPI `end-of-call-report`, Retell `call_ended`). Outbound: the exact request body
Roark's spec defines for a stored webhook.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from relay.errors import BadRequest
from relay.redaction import Redactor

#: Longer "ids" are not ids; such payloads dedupe by content hash instead.
MAX_CALL_ID_LENGTH = 256


@dataclass(frozen=True)
class Provider:
    name: str
    forwarded_event: str
    upstream_path: str
    payload_field: str
    camel_payload_field: str


VAPI = Provider(
    "vapi", "end-of-call-report", "/v1/vapi/call",
    "vapi_end_of_call_report_payload", "vapiEndOfCallReportPayload",
)
RETELL = Provider(
    "retell", "call_ended", "/v1/retell/call",
    "retell_call_ended_payload", "retellCallEndedPayload",
)
PROVIDERS = {p.name: p for p in (VAPI, RETELL)}


@dataclass(frozen=True)
class Envelope:
    """The facts the relay needs from a verified webhook body."""

    event: str
    call_id: str | None
    content_hash: str

    def dedupe_key(self) -> str:
        if self.call_id is not None:
            return f"{self.event}:{self.call_id}"
        return f"{self.event}:sha256:{self.content_hash}"


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def reject_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# A \uD800-\uDFFF escape: the only way a JSON text can carry an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _reject_unpaired_surrogates(raw_body: bytes, document: object) -> None:
    """An unpaired surrogate escape (say "\\ud800") parses, but the text it makes has no
    UTF-8 form: storing it as a call id crashed the insert (a 500), and anywhere else it
    was acknowledged, then failed for good when the forwarder encoded it for Roark. The
    hostile-input suite found both; such a body is refused while the sender can fix it.
    Only bodies with such an escape pay for the check (valid pairs are common enough)."""
    if _SURROGATE_ESCAPE.search(raw_body) is None:
        return
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("an unpaired UTF-16 surrogate escape is not valid Unicode") from None


def parse_json_object(raw_body: bytes) -> dict[str, Any]:
    # NaN, Infinity and overflowing floats parse in Python but would turn into invalid
    # JSON on the way to Roark, so they are refused here, while the sender can still retry.
    try:
        document = _loads(raw_body)
    except RecursionError:
        raise BadRequest("JSON nested too deeply", error_code="invalid_json") from None
    except ValueError as error:  # also UnicodeDecodeError for invalid UTF-8
        raise BadRequest(f"body is not valid JSON: {error}", error_code="invalid_json") from None
    if not isinstance(document, dict):
        raise BadRequest("body must be a JSON object", error_code="invalid_payload")
    return document


def _loads(raw_body: bytes) -> Any:
    """The JSON document in `raw_body`, or ValueError (RecursionError when too deep).

    msgspec, a fifth of the stdlib's cost per webhook, refuses everything the strict
    path refuses (NaN, Infinity, overflowing numbers, unpaired surrogates, invalid UTF-8,
    control characters) and keeps big integers exact. The strict path decides whatever it
    refuses: that gives the sender a clear reason, and accepts a leading BOM."""
    try:
        return msgspec.json.decode(raw_body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    # Decoded as UTF-8 explicitly (RFC 8259 8.1): json.loads would also guess UTF-16
    # and UTF-32, whose escapes the surrogate check would not see.
    document = json.loads(raw_body.decode("utf-8-sig"), parse_float=_finite_float,
                          parse_constant=reject_json_constant)
    _reject_unpaired_surrogates(raw_body, document)
    return document


def _call_id(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    # Control characters (NUL above all, which PostgreSQL text refuses) make it no id.
    return text if 0 < len(text) <= MAX_CALL_ID_LENGTH and text.isprintable() else None


def _event(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 100 or not value.isprintable():
        raise BadRequest(f"{field} must be a short, printable, non-empty string", error_code="invalid_payload",
                         parameter=field)
    return value


def parse_envelope(provider: Provider, raw_body: bytes) -> Envelope:
    document = parse_json_object(raw_body)
    content_hash = hashlib.sha256(raw_body).hexdigest()
    if provider is VAPI:
        message = document.get("message")
        if not isinstance(message, dict):
            raise BadRequest('VAPI body must be {"message": {...}}', error_code="invalid_payload",
                             parameter="message")
        call = message.get("call")
        call_id = _call_id(call.get("id")) if isinstance(call, dict) else None
        return Envelope(_event(message.get("type"), "message.type"), call_id, content_hash)
    call = document.get("call")
    call_id = _call_id(call.get("call_id")) if isinstance(call, dict) else None
    return Envelope(_event(document.get("event"), "event"), call_id, content_hash)


def upstream_body(
    provider: Provider,
    raw_body: bytes,
    properties: Mapping[str, Any],
    field_case: str = "snake",
    strip_secrets: Redactor | None = None,
) -> bytes:
    """The JSON body Roark's spec defines for this stored webhook; ValueError (or
    RecursionError) when it cannot be made, which no retry would change."""
    document = _loads(raw_body)
    if strip_secrets is not None:
        document = strip_secrets.strip(document)
    # VAPI's endpoint takes the unwrapped message; Retell's takes the whole envelope.
    payload = document["message"] if provider is VAPI else document
    camel = field_case == "camel"
    body: dict[str, Any] = {
        provider.camel_payload_field if camel else provider.payload_field: payload,
        "skipAlreadyImported" if camel else "skip_already_imported": True,
    }
    if properties:
        body["properties"] = dict(properties)
    try:
        return msgspec.json.encode(body)
    except msgspec.EncodeError as error:
        raise ValueError(str(error)) from error


def roark_call_id(response_json: object) -> str | None:
    """Roark's id for the imported call, from `{"data": {"call_id": ...}}` (or `callId`)."""
    if isinstance(response_json, dict) and isinstance(response_json.get("data"), dict):
        data = response_json["data"]
        value = data.get("call_id", data.get("callId"))
        return value if isinstance(value, str) else None
    return None
