"""VAPI: `{"message": {"type": ..., ...}}` server messages, authenticated by whichever
credential the customer configured.

- A shared token: legacy `X-Vapi-Secret: <token>` or `Authorization: Bearer <token>`;
  the header name and prefix are configurable.
- An HMAC credential: a signature in `x-signature` over `{timestamp}.{body}`, the
  timestamp in `x-timestamp` (seconds or milliseconds: VAPI does not say); algorithm,
  encoding, prefix, payload template and secret encoding configurable; ±5 minutes.

Roark's `POST /v1/vapi/call` takes the unwrapped `message` of an `end-of-call-report`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from relay.core import jsonbody
from relay.core.envvars import Choice, Flag, Secret, Secrets, SecretValue, Seconds, Text, Url, setting
from relay.core.errors import BadRequest, ConfigError, Unauthorized
from relay.providers.base import NO_OBJECT, BodyCheck, Provider, RoarkEndpoint, nested_id
from relay.providers.signing import (
    TOLERANCE_SECONDS,
    MacCheck,
    check_window,
    has_prefix,
    header,
    require_header,
)
from relay.providers.vapi_calls import VapiCalls

_TIMESTAMP = re.compile(r"[0-9]{1,20}")
# bytes.fromhex alone would also accept whitespace between the digits.
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
# VAPI does not document its timestamp unit: 10**11 seconds is the year 5138, while
# 10**11 milliseconds is 1973, so larger values can only be milliseconds.
_MILLISECONDS_ABOVE = 10**11

#: VAPI gives an assistant-request 7.5 s end to end; the rest is the relay's own margin.
ASSISTANT_REQUEST_SECONDS = 7.0

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
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(_ALGORITHMS)}")
        if self.encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(_ENCODINGS)}")
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
    token_error = hmac_error = None
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


# --- settings and the provider -------------------------------------------------------------


@dataclass(frozen=True)
class VapiSettings:
    secrets: tuple[Secret, ...] = setting(
        "VAPI_SECRET", (), Secrets(),
        """Shared secret / bearer token. By default accepted as `X-Vapi-Secret: <secret>` or
        `Authorization: Bearer <secret>`. It signs nothing: a captured request can be
        replayed at any time, and anyone holding the secret can send any report, for any
        call id, first. Prefer VAPI's HMAC credential (VAPI_HMAC_SECRET). Without
        VAPI_SECRET or VAPI_HMAC_SECRET every VAPI webhook is refused with 401.""",
        example="", section="VAPI")
    secret_header: str | None = setting(
        "VAPI_SECRET_HEADER", None, Text(),
        "Only accept the secret in this header instead (e.g. Authorization).")
    secret_prefix: str | None = setting(
        "VAPI_SECRET_PREFIX", None, Text(),
        """With VAPI_SECRET_HEADER: the prefix the secret follows in it, spaces included
        (default "Bearer " for Authorization, none otherwise; set it empty for none).""",
        example="Bearer ", verbatim=True)
    hmac_secrets: tuple[Secret, ...] = setting(
        "VAPI_HMAC_SECRET", (), Secrets(),
        "HMAC credential: a signature over the timestamp and body, within ±5 minutes.",
        example="")
    hmac_algorithm: str = setting(
        "VAPI_HMAC_ALGORITHM", HmacScheme.algorithm, Choice(_ALGORITHMS), "HMAC algorithm.")
    hmac_signature_header: str = setting(
        "VAPI_HMAC_SIGNATURE_HEADER", HmacScheme.signature_header, Text(),
        "Header carrying the signature.")
    hmac_timestamp_header: str = setting(
        "VAPI_HMAC_TIMESTAMP_HEADER", HmacScheme.timestamp_header, Text(),
        "Header carrying the timestamp (unix seconds or milliseconds).")
    hmac_encoding: str = setting(
        "VAPI_HMAC_ENCODING", HmacScheme.encoding, Choice(_ENCODINGS), "Signature encoding.")
    hmac_prefix: str = setting(
        "VAPI_HMAC_PREFIX", HmacScheme.prefix, Text(),
        "Prefix before the signature, e.g. sha256=", verbatim=True)
    hmac_secret_is_base64: bool = setting(
        "VAPI_HMAC_SECRET_BASE64", HmacScheme.secret_is_base64, Flag(),
        "true: VAPI_HMAC_SECRET is base64 of the real key.")
    hmac_payload_template: str = setting(
        "VAPI_HMAC_PAYLOAD_TEMPLATE", HmacScheme.payload_template, Text(),
        "What is signed; {timestamp} and {body} are replaced.")
    server_url: str | None = setting(
        "VAPI_SERVER_URL", None, Url(),
        """Your own server, for the messages VAPI waits on an answer to (assistant-request,
        tool-calls, transfer-destination-request, ...): they are verified, then passed to
        it with VAPI's own headers, and its answer goes back to VAPI unchanged. Unset: they
        are acknowledged as ignored.""",
        example="", in_repr=False)
    server_timeout_seconds: float = setting(
        "VAPI_SERVER_TIMEOUT_SECONDS", 19.0, Seconds(0.1, 60),
        """How long your server may take to answer, within VAPI's own timeout (20 s unless
        changed in VAPI); assistant-request gets at most 7 s (VAPI allows 7.5 in all).""")
    api_key: Secret | None = setting(
        "VAPI_API_KEY", None, SecretValue(),
        """Your VAPI private API key (not a webhook secret). With it the relay lists the
        calls that ended and queues those whose end-of-call-report never came (see
        RELAY_RECONCILE_INTERVAL_SECONDS). Unset: VAPI calls are not reconciled.""",
        example="")
    api_base_url: str = setting(
        "VAPI_API_BASE_URL", "https://api.vapi.ai", Url(), "VAPI's API, for reconciliation.")
    # The schemes the settings above describe, checked once here.
    token: TokenScheme | None = field(default=None, init=False, repr=False)
    hmac: HmacScheme | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.secrets:
            try:
                token = TokenScheme(tuple(s.reveal() for s in self.secrets),
                                    self.secret_header, self.secret_prefix)
            except ValueError as error:  # a prefix without a header to apply it to
                raise ConfigError("VAPI_SECRET_PREFIX", str(error)) from None
            object.__setattr__(self, "token", token)
        if self.hmac_secrets:
            try:
                scheme = HmacScheme(
                    tuple(s.reveal() for s in self.hmac_secrets), self.hmac_algorithm,
                    self.hmac_signature_header, self.hmac_timestamp_header, self.hmac_encoding,
                    self.hmac_prefix, self.hmac_secret_is_base64, self.hmac_payload_template)
            except ValueError as error:  # e.g. a secret that is not valid base64
                raise ConfigError("VAPI_HMAC_SECRET", str(error)) from None
            object.__setattr__(self, "hmac", scheme)


class _Call(msgspec.Struct):
    id: Any = None


class _Message(msgspec.Struct):
    type: Any = None
    call: msgspec.Raw = NO_OBJECT


class VapiHead(msgspec.Struct):
    message: _Message | None = None


class _Outer(msgspec.Struct):
    message: msgspec.Raw


class Vapi(Provider):
    name = "vapi"
    title = "VAPI"
    Settings = VapiSettings
    secret_variables = "VAPI_SECRET or VAPI_HMAC_SECRET"
    api_key_variable = "VAPI_API_KEY"
    roark = RoarkEndpoint("/v1/vapi/call", "vapi_end_of_call_report_payload",
                          "vapiEndOfCallReportPayload")
    events = frozenset({
        "assistant-request", "conversation-update", "end-of-call-report", "function-call",
        "handoff-destination-request", "hang", "knowledge-base-request",
        "language-change-detected", "model-output",
        "phone-call-control", "speech-update", "status-update", "tool-calls",
        "transcript", "transfer-destination-request", "transfer-update",
        "user-interrupted", "voice-input", "voice-request",
    })
    roark_events = frozenset({"end-of-call-report"})
    once_per_call = frozenset({"end-of-call-report", "assistant-request"})
    request_response = frozenset({
        "assistant-request", "tool-calls", "function-call", "transfer-destination-request",
        "handoff-destination-request", "knowledge-base-request", "voice-request",
    })
    event_field = "message.type"

    def answer_url(self, config: VapiSettings) -> str | None:
        return config.server_url

    def answer_deadline(self, config: VapiSettings, event: str) -> float:
        if event == "assistant-request":
            return min(config.server_timeout_seconds, ASSISTANT_REQUEST_SECONDS)
        return config.server_timeout_seconds

    def warnings(self, config: VapiSettings) -> list[str]:
        found = super().warnings(config)
        if config.server_url is None:
            found.append(f"messages that wait for an answer ({', '.join(sorted(self.request_response))}) "
                         "have nowhere to go and are acknowledged as ignored: set VAPI_SERVER_URL")
        return found

    def configured(self, config: VapiSettings) -> bool:
        return config.token is not None or config.hmac is not None

    def call_source(self, config: VapiSettings) -> VapiCalls | None:
        if config.api_key is None:
            return None
        return VapiCalls(config.api_base_url, config.api_key, self.api_key_variable)

    def check_headers(self, config: VapiSettings, headers: Mapping[str, str],
                      now: float) -> BodyCheck | None:
        return check_credential_headers(config.token, config.hmac, headers, now)

    Head = VapiHead

    def credential_headers(self, config: VapiSettings) -> frozenset[str]:
        names = {"x-vapi-secret", "authorization", config.hmac_signature_header, config.hmac_timestamp_header}
        if config.secret_header:
            names.add(config.secret_header)
        return frozenset(name.lower() for name in names)

    def sign(self, config: VapiSettings, raw_body: bytes, now: float) -> dict[str, str]:
        if config.hmac is not None:
            return sign_hmac(config.hmac, raw_body, str(int(now)))
        if config.token is not None:
            name, prefix = config.token.expected_headers()[0]
            return {name: prefix + config.token.tokens[0]}
        raise ValueError("neither VAPI_SECRET nor VAPI_HMAC_SECRET is set")

    def event_and_call_id(self, head: VapiHead) -> tuple[object, object]:
        if head.message is None:
            raise BadRequest('VAPI body must be {"message": {...}}', error_code="invalid_payload",
                             parameter="message")
        return head.message.type, nested_id(head.message.call, _Call)

    def roark_payload(self, raw_body: bytes) -> msgspec.Raw:
        # Roark takes the message unwrapped; a stored body always has one (see envelope).
        return jsonbody.loads_as(jsonbody.without_bom(raw_body), _Outer).message


VAPI = Vapi()
