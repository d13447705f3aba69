"""RELAY_DESTINATIONS: the team's own endpoints, each owed its own copy of the webhooks
it asks for, signed the Standard Webhooks way (https://www.standardwebhooks.com).

    [{"name": "crm", "url": "https://app.example.com/hooks/voice", "secret": "whsec_...",
      "events": ["vapi:end-of-call-report", "retell:*"], "original_headers": false}]

Everything is checked at start-up, and a mistake is reported naming the entry and field:
a destination that silently receives nothing is worse than a relay that will not start.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
from standardwebhooks.webhooks import Webhook

from relay.core.envvars import Parser, Secret, json_value
from relay.core.errors import ConfigError
from relay.core.names import DESTINATION_NAME, ROARK
from relay.providers import PROVIDERS

VARIABLE = "RELAY_DESTINATIONS"
NAME = re.compile(DESTINATION_NAME)
SECRET_PREFIX = "whsec_"
#: Key sizes the Standard Webhooks spec allows (24 to 64 random bytes).
KEY_BYTES = (24, 64)
#: Bytes of key `relay secret` makes.
NEW_KEY_BYTES = 32


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


Named = TypeVar("Named", bound=_HasName)


class Invalid(ValueError):
    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name}: {problem}")


#: What a destination gets unless its entry says otherwise.
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONCURRENCY = 16


#: Roark's verdicts a destination may ask for, as "roark:<kind>" (relay.results), and the
#: classifications an evaluation run may have.
RESULT_KINDS = ("evaluation", "sentiment")
CLASSIFICATIONS = ("success", "failure", "irrelevant")


class When(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Which verdicts a destination's `roark:evaluation` events carry: the call's
    classification, and/or its score below a bound."""

    classification: str | None = None
    score_below: float | None = None

    def matches(self, classification: str | None, score: float | None) -> bool:
        if self.classification is not None and classification != self.classification:
            return False
        return self.score_below is None or (score is not None and score < self.score_below)


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    url: str
    secret: str
    events: list[str] | None = None
    original_headers: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    concurrency: int = DEFAULT_CONCURRENCY
    when: When | None = None


@dataclass(frozen=True)
class Destination:
    name: str
    url: str = field(repr=False)  # may carry a credential in its query or user part
    secrets: tuple[Secret, ...] = field(repr=False)
    #: "provider:event" names, and providers whose every stored event it takes ("provider:*").
    events: frozenset[str]
    all_events_of: frozenset[str] = frozenset()
    original_headers: bool = False
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    concurrency: int = DEFAULT_CONCURRENCY
    #: Roark's verdicts it takes ("evaluation", "sentiment"), and which evaluations.
    results: frozenset[str] = frozenset()
    when: When | None = None

    def wants_result(self, kind: str, classification: str | None, score: float | None) -> bool:
        """Whether this verdict of Roark's is owed to it (`when` filters evaluations)."""
        if kind not in self.results:
            return False
        return kind != "evaluation" or self.when is None or self.when.matches(classification, score)

    @property
    def shown_url(self) -> str:
        """The URL without what may be a credential (user info, query), for pages and logs."""
        parts = urlsplit(self.url)
        assert parts.hostname is not None  # RELAY_DESTINATIONS takes no URL without one
        return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""),
                           parts.path, "", ""))

    def wants(self, provider: str, event: str) -> bool:
        return f"{provider}:{event}" in self.events or (
            provider in self.all_events_of and event not in PROVIDERS[provider].request_response)

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` header: one `v1,<base64>` per secret, space-separated,
        so a receiver holding either the old or the new secret accepts it mid-rotation."""
        when = datetime.fromtimestamp(timestamp, tz=UTC)
        text = body.decode()  # verified UTF-8 at ingest
        return " ".join(Webhook(s.reveal()).sign(message_id, when, text) for s in self.secrets)


def roark_events() -> frozenset[str]:
    """The events Roark receives: what a destination takes unless it says otherwise."""
    return frozenset(f"{p.name}:{e}" for p in PROVIDERS.values() for e in p.roark_events)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_KEY_BYTES)).decode()


def owed(destinations: Sequence[Destination], provider: str, event: str) -> tuple[str, ...]:
    """Who a stored webhook of this event goes to: Roark first when it takes it."""
    names = [ROARK] if event in PROVIDERS[provider].roark_events else []
    return (*names, *(d.name for d in destinations if d.wants(provider, event)))


class Destinations(Parser):
    described = 'a JSON array of {"name", "url", "secret", "events", "original_headers"}'

    def __call__(self, name: str, raw: str) -> tuple[Destination, ...]:
        return tuple(parse_entries(name, raw, _destination, '[{"name": "crm", "url": "https://...", '
                                   '"secret": "whsec_..."}] (`relay secret` makes a secret)'))


def parse_entries(variable: str, raw: str, build: Callable[[object], Named], example: str) -> list[Named]:
    """Each entry of a JSON array of named objects, built by `build`; a mistake raises a
    ConfigError naming the entry (by number and name) and the field."""
    entries = json_value(variable, raw)
    if not isinstance(entries, list):
        raise ConfigError(variable, f"must be a JSON array, e.g. {example}")
    parsed: list[Named] = []
    for n, entry in enumerate(entries, start=1):
        label = f"entry {n}" + (f" ({entry['name']})" if isinstance(entry, dict)
                                and isinstance(entry.get("name"), str) else "")
        try:
            parsed.append(build(entry))
        except msgspec.ValidationError as error:
            raise ConfigError(variable, f"{label}: {field_problem(error)}") from None
        except ValueError as error:
            raise ConfigError(variable, f"{label}: {error}") from None
        if parsed[-1].name in {d.name for d in parsed[:-1]}:
            raise ConfigError(variable, f"{label}: field name: {parsed[-1].name!r} is used twice")
    return parsed


def field_problem(error: Exception) -> str:
    """msgspec says "... - at `$.url`"; an operator reads "field url: ..."."""
    text = str(error)
    match = re.fullmatch(r"(.*) - at `\$\.?([^`]*)`", text)
    if match:
        return f"field {match.group(2)}: {match.group(1)}"
    return text


def _destination(entry: object) -> Destination:
    if not isinstance(entry, dict):
        raise ValueError("must be a JSON object")
    e = msgspec.convert(entry, _Entry)
    if not NAME.fullmatch(e.name) or e.name == ROARK:
        raise Invalid("name", f"must match {DESTINATION_NAME} and not be {ROARK!r} (Roark is built in)")
    parts = urlsplit(e.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url", "must be an http or https URL")
    keys = tuple(part.strip() for part in e.secret.split(",") if part.strip())
    if not keys:
        raise Invalid("secret", "must hold at least one whsec_ secret")
    for key in keys:
        check_key(key)
    events = frozenset(roark_events() if e.events is None else e.events)
    if not events:
        raise Invalid("events", "must name at least one event, or be left out")
    results = frozenset(kind for name in events if name.startswith("roark:")
                        for kind in (RESULT_KINDS if name == "roark:*" else (name.removeprefix("roark:"),)))
    unknown = sorted(results - set(RESULT_KINDS))
    if unknown:
        raise Invalid("events", f"'roark:{unknown[0]}': Roark's verdicts are roark:evaluation, roark:sentiment "
                                "(roark:* for both)")
    exact, every = _events(frozenset(name for name in events if not name.startswith("roark:")))
    if e.when is not None:
        _check_when(e.when, results)
    if not 0 < e.timeout_seconds <= 300:
        raise Invalid("timeout_seconds", "must be more than 0 and at most 300")
    if not 1 <= e.concurrency <= 512:
        raise Invalid("concurrency", "must be between 1 and 512")
    return Destination(e.name, e.url, tuple(Secret(k) for k in keys), exact, every, e.original_headers,
                       e.timeout_seconds, e.concurrency, results, e.when)


def _check_when(when: When, results: frozenset[str]) -> None:
    if "evaluation" not in results:
        raise Invalid("when", "filters roark:evaluation events: add roark:evaluation to events")
    if when.classification is None and when.score_below is None:
        raise Invalid("when", 'give "classification" or "score_below" (or leave when out)')
    if when.classification is not None and when.classification not in CLASSIFICATIONS:
        raise Invalid("when", f"classification must be one of {', '.join(CLASSIFICATIONS)}")
    if when.score_below is not None and not 0 < when.score_below <= 1:
        raise Invalid("when", "score_below must be more than 0 and at most 1 (scores are 0-1)")


def check_key(key: str) -> None:
    if not key.startswith(SECRET_PREFIX):
        raise Invalid("secret", f"must start with {SECRET_PREFIX} (`relay secret` makes one)")
    try:
        raw = base64.b64decode(key.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("secret", f"is not {SECRET_PREFIX} followed by base64") from None
    low, high = KEY_BYTES
    if not low <= len(raw) <= high:
        raise Invalid("secret", f"must encode {low} to {high} bytes, not {len(raw)}")


def _events(events: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    exact: set[str] = set()
    every: set[str] = set()
    for name in events:
        provider_name, _, event = name.partition(":")
        provider = PROVIDERS.get(provider_name)
        if provider is None or not event:
            raise Invalid("events",
                f"{name!r} is not provider:event (providers: {', '.join(PROVIDERS)}; "
                "provider:* for all)")
        if event == "*":
            every.add(provider_name)
        elif event in provider.request_response:
            raise Invalid("events",
                f"{name!r} waits for an answer, which a copy cannot give: it is passed through "
                f"to your server while {provider.title} waits (see docs/providers.md, VAPI), never stored")
        elif event not in provider.events:
            known = ", ".join(sorted(provider.events - provider.request_response))
            raise Invalid("events", f"{name!r}: {provider.title} sends no such event; known: {known} "
                                     f"(or {provider_name}:*)")
        else:
            exact.add(name)
    return frozenset(exact), frozenset(every)

