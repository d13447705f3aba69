"""What every provider's verifier shares: reading credential headers and the clock
window. Rejections are `Unauthorized` errors whose message says what is wrong without
quoting a secret, a token or a signature."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from relay.core.errors import Unauthorized
from relay.providers.base import BodyCheck

TOLERANCE_SECONDS = 300.0


def header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None and not value.isascii():
        raise Unauthorized(
            f"{name} header contains non-ASCII characters", error_code="malformed_signature"
        )
    return value


def require_header(headers: Mapping[str, str], name: str) -> str:
    value = header(headers, name)
    if value is None:
        raise Unauthorized(f"{name} header is missing", error_code="missing_signature")
    return value


def check_window(age_seconds: float, tolerance: float) -> None:
    if abs(age_seconds) > tolerance:
        raise Unauthorized(
            f"signature timestamp is outside the {tolerance:g} s window",
            error_code="stale_timestamp",
        )


def has_prefix(value: str, prefix: str) -> bool:
    # Prefixes such as "Bearer " name an auth scheme, which HTTP treats case-insensitively.
    return value[: len(prefix)].lower() == prefix.lower()


class MacCheck(BodyCheck):
    """The part of a verification that needs the body: MACs keyed with each secret, fed
    the body chunk by chunk as it arrives (no joined copy of a large body is made just to
    compute them). The request passes when one of them, finished with `suffix`, matches
    what the `header` presented."""

    def __init__(self, macs: Sequence[Any], suffix: bytes, presented: bytes, header: str, *,
                 hexadecimal: bool = False) -> None:
        self._macs = macs
        self._suffix = suffix
        self.signature = presented
        self._header = header
        self._hexadecimal = hexadecimal

    def update(self, chunk: bytes) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def verify(self) -> None:
        matched = False
        for mac in self._macs:
            mac.update(self._suffix)
            digest = mac.hexdigest().encode("ascii") if self._hexadecimal else mac.digest()
            matched |= hmac.compare_digest(digest, self.signature)
        if not matched:
            raise Unauthorized(f"{self._header} does not match the request body",
                               error_code="invalid_signature")
