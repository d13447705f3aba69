"""What a channel receives: for Slack, an incoming-webhook message (`text` for
notifications, `blocks` for reading on a phone, with a button to the status page when
RELAY_PUBLIC_URL is set); for a webhook channel, the JSON body it verifies with Standard
Webhooks:

    {"type": "relay.alert.opened" | "relay.alert.resolved" | "relay.alert.reminder" | "relay.alert.test",
     "alert": {"id", "kind", "subject", "summary", "opened_at", "resolved_at", "details"}}

Pure functions of the alert and the time, so every rendering is tested as it is sent.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.alerts.rules import RULES
from relay.core.timefmt import duration, iso
from relay.outbox import Alert

#: relay.alert.<type>: opened, reminder, resolved (relay.outbox.MessageType) and test.
TEST = "test"
TITLES = {rule.kind: rule.title for rule in RULES}
HELD_UP = {rule.kind: rule.held_up for rule in RULES}
#: Slack's limits (https://api.slack.com/reference/block-kit/blocks): a header's text,
#: a section's text.
SLACK_HEADER_CHARS = 150
SLACK_SECTION_CHARS = 3000


def sample_alert(now: float) -> Alert:
    """What `relay alerts test` sends: an alert about nothing, marked as a test."""
    return Alert(0, "test", "relay", "a test message from `relay alerts test`: this channel receives alerts",
                 {}, now, now, resolved_at=now)


def headline(alert: Alert, type_: str, now: float) -> str:
    """One line saying what happened, as a notification shows it."""
    title = TITLES.get(alert.kind, alert.kind)
    if type_ == TEST:
        return f"Roark Relay test: {alert.summary}"
    if type_ == "resolved":
        lasted = duration((alert.resolved_at or now) - alert.opened_at)
        held = f"; {alert.held_up} {HELD_UP[alert.kind]}" if alert.held_up and HELD_UP.get(alert.kind) else ""
        return f"Resolved after {lasted}: {title.lower()} ({alert.subject}){held}. It was: {alert.summary}"
    if type_ == "reminder":
        return f"Still open after {duration(now - alert.opened_at)}: {title} ({alert.subject}): {alert.summary}"
    return f"{title} ({alert.subject}): {alert.summary}"


def status_link(public_url: str | None, alert: Alert) -> str | None:
    return None if public_url is None else f"{public_url.rstrip('/')}/status#alert-{alert.id}"


def webhook_body(alert: Alert, type_: str, now: float, public_url: str | None) -> bytes:
    resolved = alert.resolved_at if type_ in ("resolved", TEST) else None
    details = {**alert.details, "held_up": alert.held_up,
               "acknowledged_at": iso(alert.acknowledged_at), "status_url": status_link(public_url, alert)}
    if resolved is not None:
        details["duration_seconds"] = round(resolved - alert.opened_at, 1)
    return msgspec.json.encode({"type": f"relay.alert.{type_}", "alert": {
        "id": alert.id, "kind": alert.kind, "subject": alert.subject, "summary": alert.summary,
        "opened_at": iso(alert.opened_at), "resolved_at": iso(resolved), "details": details}})


def _slack_escape(text: str) -> str:
    """Slack reads &, < and > as markup (links, mentions): shown as themselves."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def slack_body(alert: Alert, type_: str, now: float, public_url: str | None) -> bytes:
    mark = {"opened": "🔴", "reminder": "🟠", "resolved": "✅", TEST: "🧪"}.get(type_, "🔴")
    title = TITLES.get(alert.kind, "Test")
    header = {"opened": f"{title} alert opened", "reminder": f"{title} alert still open",
              "resolved": f"{title} alert resolved", TEST: "Test message"}.get(type_, title)
    facts = [f"*Subject:* {_slack_escape(alert.subject)}", f"*Opened:* {iso(alert.opened_at)}"]
    if type_ == "resolved" and alert.resolved_at is not None:
        facts.append(f"*Lasted:* {duration(alert.resolved_at - alert.opened_at)}")
        if alert.held_up and HELD_UP.get(alert.kind):
            facts.append(f"*Held up:* {alert.held_up} {HELD_UP[alert.kind]}")
    elif type_ == "reminder":
        facts.append(f"*Open for:* {duration(now - alert.opened_at)}")
    if alert.acknowledged_at is not None:
        facts.append(f"*Acknowledged:* {iso(alert.acknowledged_at)}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(f"{mark} {header}", SLACK_HEADER_CHARS)}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": _cut(_slack_escape(alert.summary), SLACK_SECTION_CHARS)}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": fact} for fact in facts]},
    ]
    if link := status_link(public_url, alert):
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "action_id": "open_status", "url": link,
            "text": {"type": "plain_text", "text": "Open the status page"}}]})
    return msgspec.json.encode({"text": _slack_escape(f"{mark} {headline(alert, type_, now)}"), "blocks": blocks})


def render(format_: str, alert: Alert, type_: str, now: float, public_url: str | None) -> bytes:
    """The body for a channel of `format_` ("slack" or "webhook")."""
    return (slack_body if format_ == "slack" else webhook_body)(alert, type_, now, public_url)
