"""VAPI's webhook credentials, either of which the customer may configure (both at once
during a migration): a shared token (legacy `X-Vapi-Secret: <token>` or `Authorization:
Bearer <token>`, header and prefix configurable), or an HMAC signature in `x-signature`
over `{timestamp}.{body}` with the timestamp in `x-timestamp` (seconds or milliseconds:
VAPI does not say), algorithm, encoding, prefix, payload template and secret encoding
configurable, within ±5 minutes. Pure functions of (scheme, raw body, headers, now)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.core.errors import Unauthorized
from relay.providers.signing import (
    TOLERANCE_SECONDS,
    MacCheck,
    check_window,
    has_prefix,
    header,
    require_header,
)

_TIMESTAMP = re.compile(r"[0-9]{1,20}")
# bytes.fromhex alone would also accept whitespace between the digits.
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
# VAPI does not document its timestamp unit: 10**11 seconds is the year 5138, while
# 10**11 milliseconds is 1973, so larger values can only be milliseconds.
_MILLISECONDS_ABOVE = 10**11

ALGORITHMS = ("sha256", "sha512", "sha1")
ENCODINGS = ("hex", "base64")
# When a request fails in several ways, the later code in this order explains it best.
_SPECIFICITY = ("missing_signature", "malformed_signature", "stale_timestamp", "invalid_signature")


def _secret_tuple(values: Sequence[str], name: str) -> tuple[str, ...]:
    # A lone string would otherwise be read as a sequence of one-character secrets.
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a single string")
    values = tuple(values)
    if not values or not all(isinstance(value, str) and value for value in values):
        raise ValueError(f"{name} must hold at least one secret, and no empty ones")
    return values


# --- shared token ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenScheme:
    """A VAPI bearer or legacy secret credential.

    `header=None` accepts both `X-Vapi-Secret: <token>` and `Authorization: Bearer <token>`.
    With a header, `prefix=None` means "Bearer " for Authorization and no prefix otherwise.
    """

    # Schemes end up in settings that get logged; repr must not show the secrets.
    tokens: tuple[str, ...] = field(repr=False)
    header: str | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", _secret_tuple(self.tokens, "tokens"))
        # The two default headers each have a fixed prefix; a custom one would be ambiguous.
        if self.header is None and self.prefix is not None:
            raise ValueError("a token prefix needs a header name to apply to")

    def expected_headers(self) -> tuple[tuple[str, str], ...]:
        """(header name, required prefix) pairs a token may arrive in."""
        if self.header is None:
            return (("X-Vapi-Secret", ""), ("Authorization", "Bearer "))
        if self.prefix is not None:
            return ((self.header, self.prefix),)
        return ((self.header, "Bearer " if self.header.lower() == "authorization" else ""),)


def _check_token(scheme: TokenScheme, name: str, prefix: str, value: str) -> None:
    if not has_prefix(value, prefix):
        raise Unauthorized(
            f"{name} header must start with {prefix!r}", error_code="malformed_signature"
        )
    token = value[len(prefix) :].encode("ascii")
    if not token:
        raise Unauthorized(f"{name} header carries no token", error_code="malformed_signature")
    if not any(hmac.compare_digest(token, expected.encode("utf-8")) for expected in scheme.tokens):
        raise Unauthorized(
            f"{name} token does not match any configured token", error_code="invalid_signature"
        )


def verify_token(
    scheme: TokenScheme, raw_body: bytes, headers: Mapping[str, str], now: float
) -> None:
    """Accept the request if one expected header carries a configured token.

    `raw_body` and `now` are unused: they give every verifier the same shape.
    """
    expected = scheme.expected_headers()
    failures: list[Unauthorized] = []
    for name, prefix in expected:
        try:
            value = header(headers, name)
            if value is not None:
                _check_token(scheme, name, prefix, value)
                return
        except Unauthorized as exc:
            failures.append(exc)
    if not failures:
        names = " or ".join(name for name, _ in expected)
        raise Unauthorized(f"{names} header is missing", error_code="missing_signature")
    raise max(failures, key=lambda exc: _SPECIFICITY.index(exc.error_code))


# --- HMAC --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HmacScheme:
    """A VAPI HMAC credential; the defaults are VAPI's."""

    secrets: tuple[str, ...] = field(repr=False)
    algorithm: str = "sha256"
    signature_header: str = "x-signature"
    timestamp_header: str = "x-timestamp"
    encoding: str = "hex"
    prefix: str = ""
    secret_is_base64: bool = False
    payload_template: str = "{timestamp}.{body}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", _secret_tuple(self.secrets, "secrets"))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        # Exactly once: the body is MACed as it streams in, never held twice.
        if self.payload_template.count("{body}") != 1:
            raise ValueError("payload_template must contain {body} exactly once")
        # Checked here so a bad secret fails at startup rather than on every request.
        if self.secret_is_base64:
            for secret in self.secrets:
                try:
                    base64.b64decode(secret, validate=True)
                except ValueError:
                    raise ValueError(
                        "secrets must be valid base64 when secret_is_base64 is set"
                    ) from None

    def key(self, secret: str) -> bytes:
        if self.secret_is_base64:
            return base64.b64decode(secret, validate=True)
        return secret.encode("utf-8")


def _keyed_macs(scheme: HmacScheme, secrets: Sequence[str], timestamp: str) -> tuple[list[Any], bytes]:
    """MACs that have taken what the payload template puts before the body, and what it
    puts after. The body goes in between as received: decoding and re-encoding it could
    change the bytes VAPI signed."""
    before, after = (
        part.replace("{timestamp}", timestamp).encode("utf-8")
        for part in scheme.payload_template.split("{body}")
    )
    return [hmac.new(scheme.key(secret), before, scheme.algorithm) for secret in secrets], after


def hmac_signature(
    scheme: HmacScheme, secret: str, raw_body: bytes, timestamp: str
) -> str:
    """The encoded signature (without prefix) VAPI would send for this body and timestamp."""
    (mac,), after = _keyed_macs(scheme, [secret], timestamp)
    mac.update(raw_body)
    mac.update(after)
    digest = mac.digest()
    return digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode("ascii")


def sign_hmac(scheme: HmacScheme, raw_body: bytes, timestamp: str) -> dict[str, str]:
    """The headers VAPI would send, signed with the first secret."""
    signature = hmac_signature(scheme, scheme.secrets[0], raw_body, timestamp)
    return {scheme.signature_header: scheme.prefix + signature, scheme.timestamp_header: timestamp}


def _decode_signature(scheme: HmacScheme, value: str) -> bytes:
    if scheme.prefix and has_prefix(value, scheme.prefix):
        value = value[len(scheme.prefix) :]
    if scheme.encoding == "hex":
        decoded = bytes.fromhex(value) if _HEX.fullmatch(value) else b""
    else:
        try:
            decoded = base64.b64decode(value, validate=True)
        except binascii.Error:
            decoded = b""
    if len(decoded) != hashlib.new(scheme.algorithm).digest_size:
        raise Unauthorized(
            f"{scheme.signature_header} header is not a {scheme.encoding} "
            f"{scheme.algorithm} signature",
            error_code="malformed_signature",
        )
    return decoded


def check_hmac_headers(
    scheme: HmacScheme, headers: Mapping[str, str], now: float, tolerance: float = TOLERANCE_SECONDS
) -> MacCheck:
    """Refuse a missing or malformed signature or a stale timestamp before the body is
    read; what is left needs the body."""
    presented = _decode_signature(scheme, require_header(headers, scheme.signature_header))
    timestamp = require_header(headers, scheme.timestamp_header)
    if _TIMESTAMP.fullmatch(timestamp) is None:
        raise Unauthorized(
            f"{scheme.timestamp_header} header must be a unix time in seconds or milliseconds",
            error_code="malformed_signature",
        )
    value = int(timestamp)
    check_window(now - (value / 1000 if value > _MILLISECONDS_ABOVE else value), tolerance)
    macs, after = _keyed_macs(scheme, scheme.secrets, timestamp)
    return MacCheck(macs, after, presented, scheme.signature_header)


def verify_hmac(
    scheme: HmacScheme,
    raw_body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Accept the request if its HMAC signature was made with any of the scheme's secrets."""
    check_hmac_headers(scheme, headers, now, tolerance).verify_body(raw_body)


def check_credential_headers(
    token: TokenScheme | None,
    hmac_scheme: HmacScheme | None,
    headers: Mapping[str, str],
    now: float,
) -> MacCheck | None:
    """Refuse what the headers alone condemn. None: a token proved the request; else the
    HMAC check the body must pass."""
    if token is None and hmac_scheme is None:
        raise Unauthorized(
            "VAPI verification is not configured: set VAPI_SECRET or VAPI_HMAC_SECRET",
            error_code="provider_not_configured",
        )
    token_error: Unauthorized | None = None
    hmac_error: Unauthorized | None = None
    if token is not None:
        try:
            verify_token(token, b"", headers, now)
            return None
        except Unauthorized as exc:
            token_error = exc
    if hmac_scheme is not None:
        try:
            return check_hmac_headers(hmac_scheme, headers, now)
        except Unauthorized as exc:
            hmac_error = exc
    if token_error is None or hmac_error is None or hmac_scheme is None:
        failure = token_error or hmac_error
        assert failure is not None  # only one scheme is configured, and it failed
        raise failure
    # A signature header shows the sender meant to use HMAC, so its failure is the story.
    if headers.get(hmac_scheme.signature_header) is not None:
        raise hmac_error
    if token_error.error_code == hmac_error.error_code == "missing_signature":
        raise Unauthorized(
            f"{token_error.message}; {hmac_error.message}", error_code="missing_signature"
        )
    raise token_error


def verify_credentials(
    token: TokenScheme | None,
    hmac_scheme: HmacScheme | None,
    raw_body: bytes,
    headers: Mapping[str, str],
    now: float,
) -> None:
    """Accept the request if any configured VAPI credential vouches for it."""
    if (check := check_credential_headers(token, hmac_scheme, headers, now)) is not None:
        check.verify_body(raw_body)
