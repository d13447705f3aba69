"""Alerts from a real `relay serve` (its forwarding process reporting through the store)
to a fake Slack and a signed webhook channel: an outage is told once and its end once;
`relay alerts list` and `relay alerts test` say what a person needs; the Slack URL, its
own secret, never reaches a log."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from relay.destinations import new_secret
from relay.testing.behaviours import Accept, Respond
from relay.testing.fake_endpoint import FakeEndpoint
from relay.testing.fake_slack import FakeSlack
from tests.helpers import eventually, relay_process, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "zX8cV2bN6mQ4wE0rT5yU9iO3pA7sD1fG"
SLACK_PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
PAGER_SECRET = new_secret()
WAIT = 30


def sent_types(slack: FakeSlack, pager: FakeEndpoint) -> tuple[list[str], list[str]]:
    return ([json.loads(r.body)["blocks"][0]["text"]["text"] for r in slack.requests if r.status == 200],
            [json.loads(r.body)["type"] for r in pager.requests if r.status == 200])


def test_an_outage_is_told_once_and_its_end_once(start_relay, relay_env, fake_roark, tmp_path):
    with FakeSlack() as slack, FakeEndpoint(PAGER_SECRET) as pager:
        env = {**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN, "RELAY_RETRY_MAX_ATTEMPTS": "1000",
               "RELAY_ALERTS": json.dumps([
                   {"name": "oncall", "url": f"{slack.url}{SLACK_PATH}", "format": "slack"},
                   {"name": "pager", "url": pager.url, "format": "webhook", "secret": PAGER_SECRET,
                    "kinds": ["delivery"]}]),
               "RELAY_ALERT_AFTER_SECONDS": "1", "RELAY_ALERT_CHECK_SECONDS": "0.2",
               "RELAY_ALERT_CLEAR_SECONDS": "0.5"}
        fake_roark.set_default(Respond(503))
        relay = start_relay(env)
        assert relay.post("/webhooks/vapi", with_call_id("vapi/end-of-call-report", "call-e2e-alert"),
                          vapi_headers()).status_code == 200
        eventually(lambda: sent_types(slack, pager) == (["🔴 Delivery alert opened"], ["relay.alert.opened"]),
                   WAIT, message="the outage was not told")

        listed = relay_process(env, "alerts", "list", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert "OPEN" in listed.stdout and "delivery" in listed.stdout and "every attempt to Roark" in listed.stdout
        assert "channel oncall (slack, http://127.0.0.1" in listed.stdout and SLACK_PATH not in listed.stdout
        page = httpx.get(f"{relay.url}/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5).text
        assert "Delivery (roark)" in page and "Acknowledge" in page

        fake_roark.set_default(Accept())
        eventually(lambda: sent_types(slack, pager) == (["🔴 Delivery alert opened", "✅ Delivery alert resolved"],
                                                        ["relay.alert.opened", "relay.alert.resolved"]),
                   WAIT, message="the recovery was not told")

        tested = relay_process(env, "alerts", "test", cwd=tmp_path)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert tested.stdout.splitlines() == ["oncall: ok (answered 200: {\"ok\": true})",
                                              "pager: ok (answered 200: {\"received\": true})"]
        slack.set_default(Respond(404, {"error": "no_service"}))
        refused = relay_process(env, "alerts", "test", cwd=tmp_path)
        assert refused.returncode == 1 and refused.stdout.startswith("oncall: FAILED (answered 404:")
        assert relay.terminate() == -signal.SIGTERM  # as uvicorn ends: the signal raised again
    assert SLACK_PATH not in relay.logs()
