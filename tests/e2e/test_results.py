"""Roark's verdicts from a real `relay serve` (fetched by its forwarding process): webhooks
in, verdicts on the page, in the admin API and the CLI, and the failing calls alone sent,
signed, to the destination that asked for them."""

from __future__ import annotations

import json

import httpx
import pytest

from relay.destinations import new_secret
from relay.testing.fake_endpoint import FakeEndpoint
from relay.testing.roark_results import FAILURE_BELOW, call_score
from tests.helpers import eventually, relay_process, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "hJ5kL9zX3cV7bN1mQ6wE2rT8yU4iO0pA"
BEARER = {"authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET = new_secret()
WAIT = 30
CALLS = [f"call-e2e-verdict-{n}" for n in range(8)]


def test_verdicts_reach_the_page_the_api_the_cli_and_the_destination_that_asks(start_relay, relay_env, tmp_path):
    failing = sorted(c for c in CALLS if call_score(c) < FAILURE_BELOW)
    assert 0 < len(failing) < len(CALLS)
    with FakeEndpoint(SECRET) as support:
        env = {**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN, "RELAY_RESULTS": "evaluation,sentiment",
               "RELAY_RESULTS_DELAY_SECONDS": "0.2",
               "RELAY_DESTINATIONS": json.dumps([{"name": "support", "url": f"{support.url}/bad-calls",
                                                  "secret": SECRET, "events": ["roark:evaluation"],
                                                  "when": {"classification": "failure"}}])}
        relay = start_relay(env)
        for call in CALLS:
            assert relay.post("/webhooks/vapi", with_call_id("vapi/end-of-call-report", call),
                              vapi_headers()).status_code == 200

        def verdicts():
            found = httpx.get(f"{relay.url}/admin/api/results", params={"limit": "100"}, headers=BEARER,
                              timeout=5).json()["data"]
            return len(found) == 2 * len(CALLS) and all(r["state"] == "completed" for r in found) and found
        found = eventually(verdicts, WAIT, message="the verdicts did not come back")
        eventually(lambda: len(support.requests) == len(failing), WAIT, message="the destination lacks a verdict")

        failing_api = httpx.get(f"{relay.url}/admin/api/results", params={"classification": "failure"},
                                headers=BEARER, timeout=5).json()["data"]
        assert sorted(r["call_id"] for r in failing_api) == failing
        page = httpx.get(f"{relay.url}/status", params={"state": "delivered", "destination": "roark"},
                         headers=BEARER, timeout=5).text
        assert page.count('class="verdict"') == len(CALLS) and "failure</span>" in page

        listed = relay_process(env, "results", "list", "--failing", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert sorted(line.split(":")[-1] for line in listed.stdout.splitlines()) == failing
        one = next(r for r in found if r["call_id"] == failing[0] and r["kind"] == "evaluation")
        shown = relay_process(env, "results", "show", str(one["delivery_id"]), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert {r["kind"] for r in json.loads(shown.stdout)} == {"evaluation", "sentiment"}
    assert sorted(json.loads(r.body)["provider_call_id"] for r in support.requests) == failing
    assert all(r.status == 200 and r.path == "/bad-calls" for r in support.requests)  # signatures verified
