"""What every provider's verifier shares: reading credential headers and the clock
window. Rejections are `Unauthorized` errors whose message says what is wrong without
quoting a secret, a token or a signature."""

from __future__ import annotations

from collections.abc import Mapping

from relay.errors import Unauthorized

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
