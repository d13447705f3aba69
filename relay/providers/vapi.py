"""VAPI: `{"message": {"type": ..., ...}}` server messages, authenticated by whichever
credential the customer configured (relay.providers.vapi_credentials): its settings,
its events, and what Roark takes of them.

Roark's `POST /v1/vapi/call` takes the unwrapped `message` of an `end-of-call-report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from relay.core import jsonbody
from relay.core.envvars import Choice, Flag, Seconds, Secret, Secrets, SecretValue, Text, Url, setting
from relay.core.errors import BadRequest, ConfigError
from relay.providers.base import NO_OBJECT, BodyCheck, Provider, RoarkEndpoint, nested_id
from relay.providers.vapi_calls import VapiCalls
from relay.providers.vapi_credentials import (
    ALGORITHMS,
    ENCODINGS,
    HmacScheme,
    TokenScheme,
    check_credential_headers,
    sign_hmac,
)

#: VAPI gives an assistant-request 7.5 s end to end; the rest is the relay's own margin.
ASSISTANT_REQUEST_SECONDS = 7.0


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
        "VAPI_HMAC_ALGORITHM", HmacScheme.algorithm, Choice(ALGORITHMS), "HMAC algorithm.")
    hmac_signature_header: str = setting(
        "VAPI_HMAC_SIGNATURE_HEADER", HmacScheme.signature_header, Text(),
        "Header carrying the signature.")
    hmac_timestamp_header: str = setting(
        "VAPI_HMAC_TIMESTAMP_HEADER", HmacScheme.timestamp_header, Text(),
        "Header carrying the timestamp (unix seconds or milliseconds).")
    hmac_encoding: str = setting(
        "VAPI_HMAC_ENCODING", HmacScheme.encoding, Choice(ENCODINGS), "Signature encoding.")
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

    def notes(self, config: VapiSettings) -> list[str]:
        if config.server_url is not None:
            return []
        return [f"messages VAPI waits on an answer to ({', '.join(sorted(self.request_response))}) have "
                "nowhere to go and are acknowledged as ignored: nothing to do if VAPI sends this relay "
                "only what goes to Roark; otherwise set VAPI_SERVER_URL to your server"]

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
