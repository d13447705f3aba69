"""The one JSON policy for bodies the relay reads: msgspec, strict, nothing beside it.

msgspec refuses whatever the relay must not acknowledge, because it could not be sent on
as valid JSON or stored as text: NaN and Infinity, numbers out of range, unpaired UTF-16
surrogate escapes, invalid UTF-8, raw control characters in strings, trailing data, and
nesting deep enough to exhaust the stack. It keeps integers beyond 64 bits exact. The one
thing it refuses that senders do put first is a UTF-8 byte-order mark, which RFC 8259
(8.1) lets a parser ignore, so it is stripped before decoding.
"""

from __future__ import annotations

import decimal
from typing import Any

import msgspec

from relay.core.errors import BadRequest

UTF8_BOM = b"\xef\xbb\xbf"

_decoders: dict[Any, msgspec.json.Decoder] = {}
_EXACT = msgspec.json.Decoder(float_hook=decimal.Decimal)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


def without_bom(raw: bytes) -> bytes:
    return raw[len(UTF8_BOM):] if raw.startswith(UTF8_BOM) else raw


def loads(raw: bytes) -> Any:
    """The JSON document in `raw`; ValueError (msgspec.DecodeError is one) or
    RecursionError when it is not a document this policy accepts."""
    return _decoder(Any).decode(without_bom(raw))


def loads_as(raw: bytes | msgspec.Raw, into: Any) -> Any:
    """A part of a document (or one without a BOM) decoded into the msgspec type `into`;
    ValueError when it does not fit."""
    return _decoder(into).decode(raw)


def parse(raw: bytes, into: Any = dict[str, Any]) -> Any:
    """A request body decoded into `into` (a msgspec type, by default a JSON object; a
    Struct decodes only its own fields and skips the rest unbuilt), or a BadRequest that
    says what is wrong."""
    try:
        return _decoder(into).decode(without_bom(raw))
    except RecursionError:
        raise BadRequest("JSON nested too deeply", error_code="invalid_json") from None
    except msgspec.ValidationError as error:
        problem, _, path = str(error).partition(" - at `$")
        if not problem.startswith("Expected"):  # e.g. a number out of range
            raise BadRequest(f"body is not valid JSON: {error}", error_code="invalid_json") from None
        if not path:
            raise BadRequest("body must be a JSON object", error_code="invalid_payload") from None
        parameter = path.rstrip("`").lstrip(".")
        raise BadRequest(f"{parameter}: {problem}", error_code="invalid_payload",
                         parameter=parameter) from None
    except ValueError as error:
        raise BadRequest(f"body is not valid JSON: {error}", error_code="invalid_json") from None


def loads_exact(raw: bytes | msgspec.Raw) -> Any:
    """A document to be changed and sent on with `dumps`: every number as written (floats
    as Decimal), so 0.1 stays 0.1 and 1e400, which JSON allows, does not become an error."""
    return _EXACT.decode(raw)


def dumps(document: Any) -> bytes:
    """Compact JSON; ValueError for what has no JSON form (msgspec's EncodeError is not
    a ValueError, so callers would otherwise have to know msgspec)."""
    try:
        return _ENCODER.encode(document)
    except msgspec.EncodeError as error:
        raise ValueError(str(error)) from error


def _decoder(into: Any) -> msgspec.json.Decoder:
    decoder = _decoders.get(into)
    if decoder is None:
        decoder = _decoders[into] = msgspec.json.Decoder(into)
    return decoder
