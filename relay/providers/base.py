"""What the rest of the relay may ask of a provider.

A provider is one module (`vapi.py`, `retell.py`) holding one `Provider` subclass: its
settings, how its webhooks are verified, which events it sends and which of them Roark
takes, how a webhook is named for deduplication, and the payload Roark's endpoint for
it expects. Nothing outside that module tests a provider's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from relay.core import jsonbody
from relay.core.errors import BadRequest
from relay.providers.calls import CallSource

#: Longer "ids" are not ids; such payloads dedupe by content hash instead.
MAX_CALL_ID_LENGTH = 256


@dataclass(frozen=True)
class Envelope:
    """The facts the relay needs from a verified webhook body."""

    event: str
    call_id: str | None
    dedupe_key: str


@dataclass(frozen=True)
class RoarkEndpoint:
    """Where Roark imports this provider's calls, and the field its payload goes in."""

    path: str
    payload_field: str
    camel_payload_field: str  # the older SDK's spelling (ROARK_FIELD_CASE=camel)


class BodyCheck:
    """The rest of a verification once the headers passed: fed the body as it arrives."""

    #: The signature presented: the same bytes again within its window are a replay.
    signature: bytes = b""

    def update(self, chunk: bytes) -> None:
        raise NotImplementedError

    def verify(self) -> None:
        """Return if the body matches; raise `Unauthorized` saying why not."""
        raise NotImplementedError

    def verify_body(self, raw_body: bytes) -> None:
        """`verify` for a body held whole (the pure verifiers, `relay send-sample`)."""
        self.update(raw_body)
        self.verify()


class Provider:
    name: ClassVar[str]  # the webhook URL's segment and the outbox's provider column
    title: ClassVar[str]
    #: Its own settings: a frozen dataclass declared with `relay.core.envvars.setting`.
    Settings: ClassVar[type]
    #: Variables that enable verification, named in warnings when none is set.
    secret_variables: ClassVar[str]
    #: The variable holding the key to its API, which reconciliation uses (None: no API).
    api_key_variable: ClassVar[str | None] = None
    roark: ClassVar[RoarkEndpoint]
    #: Events this provider is known to send, and those Roark imports.
    events: ClassVar[frozenset[str]]
    roark_events: ClassVar[frozenset[str]]
    #: Events that happen at most once per call: a second one with the same call id is
    #: the provider retrying, not news. Others dedupe by their exact bytes.
    once_per_call: ClassVar[frozenset[str]]
    #: Events whose sender waits for an answer that only the team's own server can give
    #: (never stored: passed through while the provider waits).
    request_response: ClassVar[frozenset[str]] = frozenset()

    def answer_url(self, config: Any) -> str | None:
        """Where `request_response` events are passed through to; None: nowhere."""
        return None

    def answer_deadline(self, config: Any, event: str) -> float:
        """Seconds the provider waits for the answer to `event`, less a margin."""
        raise NotImplementedError

    def configured(self, config: Any) -> bool:
        """True when `config` (an instance of `Settings`) can verify webhooks."""
        raise NotImplementedError

    def call_source(self, config: Any) -> CallSource | None:
        """Where reconciliation finds this provider's ended calls; None while its API
        key is not configured (or it has no API to ask)."""
        return None

    def warnings(self, config: Any) -> list[str]:
        """What an operator must hear at start-up about these settings."""
        if not self.configured(config):
            return [f"no secret configured, so its webhooks are refused with 401: set {self.secret_variables}"]
        return []

    def notes(self, config: Any) -> list[str]:
        """What an operator receiving this provider's webhooks may want to know at start-up,
        though nothing is wrong."""
        return []

    def check_headers(self, config: Any, headers: Mapping[str, str], now: float) -> BodyCheck | None:
        """Refuse (`Unauthorized`) what the headers alone condemn, before the body is read.
        None: the headers alone prove the request (a shared token); otherwise the check
        the body must pass."""
        raise NotImplementedError

    def credential_headers(self, config: Any) -> frozenset[str]:
        """The (lower-case) names of the headers that carry the provider's credential,
        passed on to destinations that ask for them (`original_headers`)."""
        raise NotImplementedError

    def sign(self, config: Any, raw_body: bytes, now: float) -> dict[str, str]:
        """The credential headers the provider would send with this body, made with the
        configured secrets (`relay send-sample`); ValueError when none is configured."""
        raise NotImplementedError

    def verify(self, config: Any, raw_body: bytes, headers: Mapping[str, str], now: float) -> None:
        """Return if the request is authentic; raise `Unauthorized` saying why not."""
        if (check := self.check_headers(config, headers, now)) is not None:
            check.verify_body(raw_body)

    #: The few fields the relay reads from a body, as a msgspec Struct: decoding into it
    #: checks the whole document but builds nothing else (a 21 MB report is not turned
    #: into Python objects to find two strings in it).
    Head: ClassVar[type]
    event_field: ClassVar[str] = "event"

    def event_and_call_id(self, head: Any) -> tuple[object, object]:
        """The event name and call id in a decoded `Head` (validated by the caller)."""
        raise NotImplementedError

    def roark_payload(self, raw_body: bytes) -> msgspec.Raw:
        """The JSON that goes under `roark.payload_field` in Roark's request, as the
        provider sent it (not decoded and encoded again)."""
        raise NotImplementedError

    def envelope(self, raw_body: bytes) -> Envelope:
        """Parse a verified body; BadRequest when it is not this provider's webhook."""
        event, sent_id = self.event_and_call_id(jsonbody.parse(raw_body, self.Head))
        event = _event(event, self.event_field)
        if event in self.once_per_call and (key := call_dedupe_key(event, sent_id)) is not None:
            return Envelope(event, _call_id(sent_id), key)
        return Envelope(event, _call_id(sent_id), f"{event}:sha256:{hashlib.sha256(raw_body).hexdigest()}")


def call_dedupe_key(event: str, sent_id: object) -> str | None:
    """The dedupe key of `event`, one of a provider's `once_per_call` events, about the
    call `sent_id` names; None when it names none a key can be made of (the body then
    dedupes by its hash). Reconciliation makes it from a listed call's id, before
    building the body."""
    call_id = _call_id(sent_id)
    if call_id is None:
        return None
    # Each kind of key has its own namespace: 123 and "123" are different ids, and a
    # call id may well read "sha256:...".
    kind = "int" if isinstance(sent_id, int) else "str"
    return f"{event}:id:{kind}:{call_id}"


#: The default of a `Head`'s sub-object that the body lacks.
NO_OBJECT = msgspec.Raw(b"null")


def nested_id(raw: msgspec.Raw, into: type) -> object:
    """The `id` field of a sub-object decoded lazily, or None when it is not an object
    with one (a call that is a string is a call without an id, not a refusal)."""
    try:
        return jsonbody.loads_as(raw, into).id
    except ValueError:
        return None


def _call_id(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    # Control characters (NUL above all, which PostgreSQL text refuses) make it no id.
    return text if 0 < len(text) <= MAX_CALL_ID_LENGTH and text.isprintable() else None


def _event(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 100 or not value.isprintable():
        raise BadRequest(f"{field} must be a short, printable, non-empty string",
                         error_code="invalid_payload", parameter=field)
    return value
