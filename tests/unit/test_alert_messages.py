"""What a channel receives (Slack's blocks held to Block Kit's documented shape, the
webhook body verified with `standardwebhooks`), and when a message is sent again."""

import json
import time

import pytest
from standardwebhooks import Webhook

from relay.alerts.messages import TEST, render, sample_alert, slack_body, webhook_body
from relay.alerts.sending import Sent, next_try
from relay.core.backoff import RetryPolicy
from relay.core.errors import ConfigError
from relay.destinations import Channels, new_secret
from relay.outbox import Alert
from relay.testing.fake_slack import message_problems

NOW = 1_800_000_000.0
OPEN = Alert(12, "delivery", "roark", "Roark answering 503 to every attempt for 6 min: <html> & co",
             {"receiver": "Roark", "waiting": 40}, NOW - 360, NOW, held_up=40)
RESOLVED = Alert(12, "delivery", "roark", OPEN.summary, OPEN.details, NOW - 3600, NOW, resolved_at=NOW, held_up=40)


@pytest.mark.parametrize("alert, type_", [(OPEN, "opened"), (OPEN, "reminder"), (RESOLVED, "resolved"),
                                          (sample_alert(NOW), TEST)])
@pytest.mark.parametrize("public_url", [None, "https://relay.example.com"])
def test_every_slack_message_has_the_shape_slack_documents(alert, type_, public_url):
    message = json.loads(slack_body(alert, type_, NOW, public_url))
    assert message_problems(message) == []
    buttons = [b for b in message["blocks"] if b["type"] == "actions"]
    assert bool(buttons) == (public_url is not None)
    if buttons:
        assert buttons[0]["elements"][0]["url"] == f"https://relay.example.com/status#alert-{alert.id}"


def test_a_slack_message_reads_as_text_on_a_phone_and_escapes_slacks_markup():
    message = json.loads(slack_body(RESOLVED, "resolved", NOW, None))
    assert message["text"] == ("✅ Resolved after 60 min: delivery (roark); 40 deliveries waiting at most. "
                               "It was: Roark answering 503 to every attempt for 6 min: &lt;html&gt; &amp; co")
    header, section, context = message["blocks"]
    assert header["text"]["text"] == "✅ Delivery alert resolved"
    assert section["text"]["text"].endswith("&lt;html&gt; &amp; co")
    assert [e["text"] for e in context["elements"]][2:] == ["*Lasted:* 60 min",
                                                           "*Held up:* 40 deliveries waiting at most"]


def test_a_long_summary_is_cut_to_slacks_limit():
    long = Alert(1, "dead_letter", "crm", "x" * 5000, {}, NOW, NOW)
    assert message_problems(json.loads(slack_body(long, "opened", NOW, None))) == []


def test_the_webhook_body_carries_the_documented_fields_and_verifies():
    secret = new_secret()
    [channel] = Channels()("RELAY_ALERTS", json.dumps(
        [{"name": "pager", "url": "https://ops.example.com/relay", "format": "webhook", "secret": secret}]))
    body = render("webhook", RESOLVED, "resolved", NOW, "https://relay.example.com")
    sent_at = int(time.time())  # the library refuses a timestamp far from its own clock
    signature = channel.sign("alert-12-3", sent_at, body)
    verified = Webhook(secret).verify(body, {"webhook-id": "alert-12-3", "webhook-timestamp": str(sent_at),
                                            "webhook-signature": signature})
    assert verified["type"] == "relay.alert.resolved"
    alert = verified["alert"]
    assert set(alert) == {"id", "kind", "subject", "summary", "opened_at", "resolved_at", "details"}
    assert (alert["id"], alert["kind"], alert["subject"]) == (12, "delivery", "roark")
    assert alert["resolved_at"] is not None and alert["details"]["duration_seconds"] == 3600
    assert alert["details"]["held_up"] == 40
    assert alert["details"]["status_url"] == "https://relay.example.com/status#alert-12"


@pytest.mark.parametrize("type_", ["opened", "reminder"])
def test_an_open_alerts_webhook_body_has_no_resolution(type_):
    body = json.loads(webhook_body(OPEN, type_, NOW, None))
    assert body["type"] == f"relay.alert.{type_}"
    assert body["alert"]["resolved_at"] is None and "duration_seconds" not in body["alert"]["details"]


POLICY = RetryPolicy(max_attempts=3, base_delay=5, max_delay=60, jitter=0)


@pytest.mark.parametrize("sent, attempt, expected", [
    (Sent(200, "ok"), 1, None),  # sent
    (Sent(None, "ConnectError"), 1, NOW + 5),  # unreachable: back off
    (Sent(503, "busy"), 2, NOW + 15),
    (Sent(429, "slow down", retry_after=40), 1, NOW + 40),  # never sooner than Retry-After
    (Sent(503, "busy"), 3, None),  # attempts spent
    (Sent(404, "no_service"), 1, None),  # refused: retrying does not heal it
    (Sent(403, "invalid_token"), 1, None),
])
def test_when_a_message_is_sent_again(sent, attempt, expected):
    assert next_try(POLICY, attempt, sent, NOW, rand=lambda: 0.5) == expected


@pytest.mark.parametrize("entry, problem", [
    ({"name": "a", "url": "https://x", "format": "webhook"}, "entry 1 (a): field secret: a webhook channel signs"),
    ({"name": "a", "url": "https://x", "format": "sms"}, "entry 1 (a): field format: must be one of slack, webhook"),
    ({"name": "a", "url": "ftp://x", "format": "slack"}, "entry 1 (a): field url: must be an http or https URL"),
    ({"name": "a", "url": "https://x", "format": "slack", "kinds": ["nope"]},
     "entry 1 (a): field kinds: 'nope' is no kind of alert; kinds: delivery, dead_letter"),
    ({"name": "a", "url": "https://x", "format": "slack", "secret": "whsec_x"},
     "entry 1 (a): field secret: Slack signs nothing"),
    ({"name": "A!", "url": "https://x", "format": "slack"}, "entry 1 (A!): field name: must match"),
])
def test_a_mistake_in_relay_alerts_names_the_entry_and_field(entry, problem):
    with pytest.raises(ConfigError, match="^RELAY_ALERTS: " + problem.replace("(", r"\(").replace(")", r"\)")):
        Channels()("RELAY_ALERTS", json.dumps([entry]))
