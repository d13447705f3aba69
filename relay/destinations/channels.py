"""RELAY_ALERTS: where the relay says that delivery is in trouble (relay.alerts), and
again when it is over: a Slack incoming webhook, or an endpoint of the team's own that
receives a Standard Webhooks signed JSON body.

    [{"name": "oncall", "url": "https://hooks.slack.com/services/...", "format": "slack"},
     {"name": "pager", "url": "https://ops.example.com/relay", "format": "webhook",
      "secret": "whsec_...", "kinds": ["delivery", "forwarding"]}]

Checked at start-up like RELAY_DESTINATIONS, a mistake named by entry and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import msgspec
from standardwebhooks.webhooks import Webhook

from relay.core.envvars import Parser, Secret
from relay.destinations.config import NAME, Invalid, check_key, parse_entries

#: Every kind of alert (relay.alerts.rules), each a rule of its own.
ALERT_KINDS = ("delivery", "dead_letter", "backlog", "forwarding", "reconciliation", "storage", "evaluation")
FORMATS = ("slack", "webhook")


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    url: str
    format: str
    secret: str | None = None
    kinds: list[str] | None = None


@dataclass(frozen=True)
class Channel:
    name: str
    url: str = field(repr=False)  # a Slack webhook URL is itself the credential
    format: str
    secrets: tuple[Secret, ...] = field(default=(), repr=False)
    kinds: frozenset[str] = frozenset(ALERT_KINDS)

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` header, one `v1,<base64>` per secret (as destinations do)."""
        when = datetime.fromtimestamp(timestamp, tz=UTC)
        return " ".join(Webhook(s.reveal()).sign(message_id, when, body.decode()) for s in self.secrets)

    @property
    def shown_url(self) -> str:
        """Scheme and host only: the rest of a Slack URL is its secret."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class Channels(Parser):
    described = 'a JSON array of {"name", "url", "format": "slack" | "webhook", "secret", "kinds"}'

    def __call__(self, name: str, raw: str) -> tuple[Channel, ...]:
        return tuple(parse_entries(name, raw, _channel, '[{"name": "oncall", "url": '
                                   '"https://hooks.slack.com/services/...", "format": "slack"}]'))


def _channel(entry: object) -> Channel:
    if not isinstance(entry, dict):
        raise ValueError("must be a JSON object")
    e = msgspec.convert(entry, _Entry)
    if not NAME.fullmatch(e.name):
        raise Invalid("name", f"must match {NAME.pattern}")
    parts = urlsplit(e.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("url", "must be an http or https URL")
    if e.format not in FORMATS:
        raise Invalid("format", f"must be one of {', '.join(FORMATS)}, not {e.format!r}")
    keys: tuple[str, ...] = ()
    if e.format == "webhook":
        keys = tuple(part.strip() for part in (e.secret or "").split(",") if part.strip())
        if not keys:
            raise Invalid("secret", "a webhook channel signs its messages: give a whsec_ secret (`relay secret`)")
        for key in keys:
            check_key(key)
    elif e.secret is not None:
        raise Invalid("secret", "Slack signs nothing: its URL is the secret; leave secret out")
    kinds = frozenset(ALERT_KINDS if e.kinds is None else e.kinds)
    unknown = sorted(kinds - set(ALERT_KINDS))
    if unknown or not kinds:
        problem = f"{unknown[0]!r} is no kind of alert" if unknown else "must name at least one kind"
        raise Invalid("kinds", f"{problem}; kinds: {', '.join(ALERT_KINDS)}")
    return Channel(e.name, e.url, e.format, tuple(Secret(k) for k in keys), kinds)
