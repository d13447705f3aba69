"""The one JSON policy for bodies the relay reads: msgspec, strict, nothing beside it.

msgspec refuses whatever the relay must not acknowledge, because it could not be sent on
as valid JSON or stored as text: NaN and Infinity, numbers out of range, unpaired UTF-16
surrogate escapes, invalid UTF-8, raw control characters in strings, trailing data, and
nesting deep enough to exhaust the stack. It keeps integers beyond 64 bits exact. The one
thing it refuses that senders do put first is a UTF-8 byte-order mark, which RFC 8259
(8.1) lets a parser ignore, so it is stripped before decoding.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.errors import BadRequest

UTF8_BOM = b"\xef\xbb\xbf"

_decode = msgspec.json.Decoder().decode


def loads(raw: bytes) -> Any:
    """The JSON document in `raw`; ValueError (msgspec.DecodeError is one) or
    RecursionError when it is not a document this policy accepts."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    return _decode(raw)


def parse_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body, or a BadRequest that says what is wrong."""
    try:
        document = loads(raw)
    except RecursionError:
        raise BadRequest("JSON nested too deeply", error_code="invalid_json") from None
    except ValueError as error:
        raise BadRequest(f"body is not valid JSON: {error}", error_code="invalid_json") from None
    if not isinstance(document, dict):
        raise BadRequest("body must be a JSON object", error_code="invalid_payload")
    return document


def dumps(document: Any) -> bytes:
    """Compact JSON; ValueError for what has no JSON form (msgspec's EncodeError is not
    a ValueError, so callers would otherwise have to know msgspec)."""
    try:
        return msgspec.json.encode(document)
    except msgspec.EncodeError as error:
        raise ValueError(str(error)) from error
