"""Peers that never quite stop answering, and values no header can carry (hardening round
three, 5 and 7).

A Roark or a destination that sends its headers and then one byte a second reset a
per-read timeout for ever: deliveries stayed "delivering" long after the peer recovered.
A call id or event name outside ASCII made the destination's headers unbuildable, and
the delivery stayed claimed, attempt after attempt, past the retry limit.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from relay.destinations import new_secret
from relay.testing.behaviours import Accept, Trickle
from relay.testing.fake_endpoint import FakeEndpoint
from tests.e2e.conftest import rows
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

SECRET = new_secret()
FAST_RETRIES = {"RELAY_RETRY_BASE_SECONDS": "0.5", "RELAY_RETRY_MAX_DELAY_SECONDS": "1",
                "RELAY_RETRY_MAX_ATTEMPTS": "10"}


def row_of(env: dict[str, str], call_id: str, destination: str = "roark") -> dict | None:
    return next((r for r in rows(env) if r["call_id"] == call_id and r["destination"] == destination), None)


def test_a_roark_that_trickles_its_answer_is_cut_off_at_the_deadline(start_relay, relay_env, fake_roark):
    fake_roark.set_default(Trickle(1.0))  # a 201 whose body takes a minute
    env = {**relay_env, **FAST_RETRIES, "ROARK_TIMEOUT_SECONDS": "2"}
    relay = start_relay(env)
    body = with_call_id("vapi/end-of-call-report", "trickled")
    assert relay.post("/webhooks/vapi", body, vapi_headers()).status_code == 200
    failed = eventually(lambda: (row := row_of(env, "trickled")) and row["last_error"] and row, timeout=10,
                        message="the trickling answer was waited on past ROARK_TIMEOUT_SECONDS")
    assert failed["last_error"] == "ReadTimeout: no whole answer within 2 s"
    fake_roark.set_default(Accept())  # Roark recovers: the next attempt delivers
    eventually(lambda: row_of(env, "trickled")["state"] == "delivered", timeout=15)


def test_a_destination_that_trickles_is_cut_off_and_never_delays_roark(start_relay, relay_env, fake_roark):
    with FakeEndpoint(SECRET) as crm:
        crm.set_default(Trickle(1.0))
        env = {**relay_env, **FAST_RETRIES, "RELAY_DESTINATIONS": json.dumps([
            {"name": "crm", "url": f"{crm.url}/hooks", "secret": SECRET, "timeout_seconds": 2}])}
        relay = start_relay(env)
        body = with_call_id("vapi/end-of-call-report", "trickled-crm")
        assert relay.post("/webhooks/vapi", body, vapi_headers()).status_code == 200
        eventually(lambda: row_of(env, "trickled-crm")["state"] == "delivered", timeout=10)
        failed = eventually(lambda: (row := row_of(env, "trickled-crm", "crm"))["last_error"] and row, timeout=10)
        assert failed["last_error"] == "ReadTimeout: no whole answer within 2 s"
        crm.set_default(Accept())
        eventually(lambda: row_of(env, "trickled-crm", "crm")["state"] == "delivered", timeout=15)


@pytest.mark.parametrize("provider, call_id", [("vapi", "appel-réservé-№7"), ("retell", "通话-42")])
def test_a_call_id_outside_ascii_reaches_a_destination_percent_encoded(start_relay, relay_env, provider, call_id):
    with FakeEndpoint(SECRET) as crm:
        env = {**relay_env, "RELAY_DESTINATIONS": json.dumps([
            {"name": "crm", "url": f"{crm.url}/hooks", "secret": SECRET, "events": [f"{provider}:*"]}])}
        relay = start_relay(env)
        sample = "vapi/end-of-call-report" if provider == "vapi" else "retell/call_ended"
        body = with_call_id(sample, call_id)
        headers = vapi_headers() if provider == "vapi" else retell_headers(body)
        assert relay.post(f"/webhooks/{provider}", body, headers).status_code == 200
        delivered = eventually(lambda: (row := row_of(env, call_id, "crm")) and row["state"] != "pending"
                               and row["state"] != "delivering" and row, timeout=10)
        assert (delivered["state"], delivered["attempts"]) == ("delivered", 1), delivered["last_error"]
        [received] = crm.requests
        assert received.status == 200 and received.body == body
        sent_as = received.headers["x-relay-call-id"]
        assert sent_as.isascii() and unquote(sent_as) == call_id, sent_as
