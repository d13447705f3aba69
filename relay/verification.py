"""Authentication of incoming webhooks, one verifier per provider.

Retell signs each request with the account's API key: the `x-retell-signature` header is
`v=<ms timestamp>,d=<hex HMAC-SHA256>`, the HMAC covering the raw body (as UTF-8 text)
followed directly by the decimal timestamp.

VAPI authenticates with whichever credential the customer configured: a shared token
(legacy `X-Vapi-Secret: <token>` or `Authorization: Bearer <token>`, header name and
prefix configurable) or an HMAC credential (signature in `x-signature` over
`{timestamp}.{body}`, timestamp in `x-timestamp`; algorithm, encoding, prefix, payload
template and secret encoding configurable).

Everything here is pure: the caller passes the secrets and the clock (`now`, unix
seconds), so requests, tests and the demo signer share one implementation. Every rejection
is an `Unauthorized` whose message says what is wrong without quoting a secret, a token or
a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from relay.errors import Unauthorized

TOLERANCE_SECONDS = 300.0

# Leading zeros are refused so the digits Retell signed are exactly str(int(digits)).
# Twenty digits is far beyond any real timestamp and keeps int() cheap on hostile input.
_RETELL_SIGNATURE = re.compile(r"v=([1-9][0-9]{0,19}),d=([0-9a-f]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,20}")
# bytes.fromhex alone would also accept whitespace between the digits.
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
# VAPI does not document its timestamp unit: 10**11 seconds is the year 5138, while
# 10**11 milliseconds is 1973, so larger values can only be milliseconds.
_MILLISECONDS_ABOVE = 10**11

_ALGORITHMS = ("sha256", "sha512", "sha1")
_ENCODINGS = ("hex", "base64")
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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None and not value.isascii():
        raise Unauthorized(
            f"{name} header contains non-ASCII characters", error_code="malformed_signature"
        )
    return value


def _require(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise Unauthorized(f"{name} header is missing", error_code="missing_signature")
    return value


def _check_window(age_seconds: float, tolerance: float) -> None:
    if abs(age_seconds) > tolerance:
        raise Unauthorized(
            f"signature timestamp is outside the {tolerance:g} s window",
            error_code="stale_timestamp",
        )


def _has_prefix(value: str, prefix: str) -> bool:
    # Prefixes such as "Bearer " name an auth scheme, which HTTP treats case-insensitively.
    return value[: len(prefix)].lower() == prefix.lower()


# --- Retell ---------------------------------------------------------------------------


def retell_digest(api_key: str, raw_body: bytes, timestamp_ms: int) -> str:
    """The hex digest Retell puts after `d=`.

    Raises UnicodeDecodeError when `raw_body` is not UTF-8: Retell's scheme is defined on
    the body as text, so such a body has no valid signature.
    """
    message = raw_body.decode("utf-8") + str(timestamp_ms)
    return hmac.new(api_key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_retell(api_key: str, raw_body: bytes, timestamp_ms: int) -> str:
    """The `x-retell-signature` header value Retell would send for this body."""
    return f"v={timestamp_ms},d={retell_digest(api_key, raw_body, timestamp_ms)}"


def verify_retell(
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

    match = _RETELL_SIGNATURE.fullmatch(_require(headers, "x-retell-signature"))
    if match is None:
        raise Unauthorized(
            "x-retell-signature header must be v=<ms timestamp>,d=<64 lowercase hex digits>",
            error_code="malformed_signature",
        )
    timestamp_ms = int(match[1])
    _check_window(now - timestamp_ms / 1000, tolerance)

    presented = match[2].encode("ascii")
    try:
        matched = any(
            hmac.compare_digest(
                retell_digest(key, raw_body, timestamp_ms).encode("ascii"), presented
            )
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


# --- VAPI: shared token ---------------------------------------------------------------


@dataclass(frozen=True)
class VapiTokenScheme:
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


def _check_token(scheme: VapiTokenScheme, name: str, prefix: str, value: str) -> None:
    if not _has_prefix(value, prefix):
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


def verify_vapi_token(
    scheme: VapiTokenScheme, raw_body: bytes, headers: Mapping[str, str], now: float
) -> None:
    """Accept the request if one expected header carries a configured token.

    `raw_body` and `now` are unused: they give every verifier the same shape.
    """
    expected = scheme.expected_headers()
    failures: list[Unauthorized] = []
    for name, prefix in expected:
        try:
            value = _header(headers, name)
            if value is not None:
                _check_token(scheme, name, prefix, value)
                return
        except Unauthorized as exc:
            failures.append(exc)
    if not failures:
        names = " or ".join(name for name, _ in expected)
        raise Unauthorized(f"{names} header is missing", error_code="missing_signature")
    raise max(failures, key=lambda exc: _SPECIFICITY.index(exc.error_code))


# --- VAPI: HMAC -----------------------------------------------------------------------


@dataclass(frozen=True)
class VapiHmacScheme:
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
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(_ALGORITHMS)}")
        if self.encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(_ENCODINGS)}")
        if "{body}" not in self.payload_template:
            raise ValueError("payload_template must contain {body}, or the body is not signed")
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


def _vapi_digest(scheme: VapiHmacScheme, secret: str, raw_body: bytes, timestamp: str) -> bytes:
    # The body is spliced in as received: decoding and re-encoding it could change the
    # bytes VAPI signed.
    parts = scheme.payload_template.split("{body}")
    payload = raw_body.join(
        part.replace("{timestamp}", timestamp).encode("utf-8") for part in parts
    )
    return hmac.new(scheme.key(secret), payload, scheme.algorithm).digest()


def vapi_hmac_signature(
    scheme: VapiHmacScheme, secret: str, raw_body: bytes, timestamp: str
) -> str:
    """The encoded signature (without prefix) VAPI would send for this body and timestamp."""
    digest = _vapi_digest(scheme, secret, raw_body, timestamp)
    return digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode("ascii")


def sign_vapi_hmac(scheme: VapiHmacScheme, raw_body: bytes, timestamp: str) -> dict[str, str]:
    """The headers VAPI would send, signed with the first secret."""
    signature = vapi_hmac_signature(scheme, scheme.secrets[0], raw_body, timestamp)
    return {scheme.signature_header: scheme.prefix + signature, scheme.timestamp_header: timestamp}


def _decode_signature(scheme: VapiHmacScheme, value: str) -> bytes:
    if scheme.prefix and _has_prefix(value, scheme.prefix):
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


def verify_vapi_hmac(
    scheme: VapiHmacScheme,
    raw_body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Accept the request if its HMAC signature was made with any of the scheme's secrets."""
    presented = _decode_signature(scheme, _require(headers, scheme.signature_header))
    timestamp = _require(headers, scheme.timestamp_header)
    if _TIMESTAMP.fullmatch(timestamp) is None:
        raise Unauthorized(
            f"{scheme.timestamp_header} header must be a unix time in seconds or milliseconds",
            error_code="malformed_signature",
        )
    value = int(timestamp)
    _check_window(now - (value / 1000 if value > _MILLISECONDS_ABOVE else value), tolerance)
    if not any(
        hmac.compare_digest(_vapi_digest(scheme, secret, raw_body, timestamp), presented)
        for secret in scheme.secrets
    ):
        raise Unauthorized(
            f"{scheme.signature_header} does not match the request body",
            error_code="invalid_signature",
        )


def verify_vapi(
    token: VapiTokenScheme | None,
    hmac_scheme: VapiHmacScheme | None,
    raw_body: bytes,
    headers: Mapping[str, str],
    now: float,
) -> None:
    """Accept the request if any configured VAPI credential vouches for it."""
    if token is None and hmac_scheme is None:
        raise Unauthorized(
            "VAPI verification is not configured: set VAPI_SECRET or VAPI_HMAC_SECRET",
            error_code="provider_not_configured",
        )
    token_error = hmac_error = None
    if token is not None:
        try:
            verify_vapi_token(token, raw_body, headers, now)
            return
        except Unauthorized as exc:
            token_error = exc
    if hmac_scheme is not None:
        try:
            verify_vapi_hmac(hmac_scheme, raw_body, headers, now)
            return
        except Unauthorized as exc:
            hmac_error = exc
    if token_error is None or hmac_error is None:
        raise token_error or hmac_error
    # A signature header shows the sender meant to use HMAC, so its failure is the story.
    if headers.get(hmac_scheme.signature_header) is not None:
        raise hmac_error
    if token_error.error_code == hmac_error.error_code == "missing_signature":
        raise Unauthorized(
            f"{token_error.message}; {hmac_error.message}", error_code="missing_signature"
        )
    raise token_error
