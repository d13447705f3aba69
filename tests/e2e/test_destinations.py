"""The relay as the one webhook URL: a real `relay serve` in front of Roark, two of the
team's destinations (one failing for a while) and the team's server for VAPI's
request-response messages, each getting what it asked for."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import pytest

from relay.destinations import new_secret
from relay.testing.behaviours import Respond
from relay.testing.fake_endpoint import FakeEndpoint
from tests.e2e.test_pass_through import TOOL_RESULT, team  # noqa: F401 - the fixture
from tests.helpers import VAPI_SECRET, eventually, retell_headers, sample, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "pQ4wE8rT2yU6iO0aS5dF9gH3jK7lZ1xC"
WAIT = 30
CRM_SECRET, AUDIT_SECRET = new_secret(), new_secret()


def test_roark_two_destinations_and_the_team_server_each_get_their_share(start_relay, relay_env, fake_roark,
                                                                       team):  # noqa: F811
    with FakeEndpoint(CRM_SECRET) as crm, FakeEndpoint(AUDIT_SECRET) as audit:
        audit.script(Respond(503), Respond(503), Respond(502))  # down for a while, then back
        relay = start_relay({**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN, "VAPI_SERVER_URL": team.url,
                             "RELAY_DESTINATIONS": json.dumps([
                                 {"name": "crm", "url": f"{crm.url}/voice", "secret": CRM_SECRET,
                                  "events": ["vapi:end-of-call-report", "retell:call_ended", "retell:call_analyzed"],
                                  "original_headers": True},
                                 {"name": "audit", "url": f"{audit.url}/all", "secret": AUDIT_SECRET,
                                  "events": ["vapi:*", "retell:*"]}])})
        report = with_call_id("vapi/end-of-call-report", "call-one-url")
        ended, analyzed = sample("retell/call_ended"), sample("retell/call_analyzed")
        sent = {
            "end-of-call-report": relay.post("/webhooks/vapi", report, vapi_headers()),
            "status-update": relay.post("/webhooks/vapi", sample("vapi/status-update"), vapi_headers()),
            "call_ended": relay.post("/webhooks/retell", ended, retell_headers(ended)),
            "call_analyzed": relay.post("/webhooks/retell", analyzed, retell_headers(analyzed)),
        }
        tool_answer = relay.post("/webhooks/vapi", sample("vapi/tool-calls"), vapi_headers())
        assert (tool_answer.status_code, tool_answer.content) == (200, TOOL_RESULT)
        assert {event: r.json()["data"]["status"] for event, r in sent.items()} == dict.fromkeys(sent, "accepted")

        def all_delivered():
            summary = httpx.get(f"{relay.url}/admin/api/summary", timeout=5,
                                headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()["data"]
            counts = {d["name"]: d["counts"] for d in summary["destinations"]}
            return all(c["delivered"] == sum(c.values()) for c in counts.values()) and counts
        counts = eventually(all_delivered, WAIT, message="not every delivery was delivered")

        assert {name: c["delivered"] for name, c in counts.items()} == {"roark": 2, "crm": 3, "audit": 4}
        assert sorted(r.path for r in fake_roark.accepted()) == ["/v1/retell/call", "/v1/vapi/call"]
        crm_events = {r.headers["x-relay-event"]: r for r in crm.requests}
        assert set(crm_events) == {"end-of-call-report", "call_ended", "call_analyzed"}
        assert all(r.status == 200 for r in crm.requests)  # every signature verified
        assert crm_events["end-of-call-report"].body == report
        assert crm_events["end-of-call-report"].headers["x-vapi-secret"] == VAPI_SECRET

        # audit refused three attempts, and each webhook kept its id through them.
        by_id = defaultdict(list)
        for request in audit.requests:
            by_id[request.headers["webhook-id"]].append(request.status)
        assert len(by_id) == 4 and all(statuses[-1] == 200 for statuses in by_id.values())
        assert sorted(s for statuses in by_id.values() for s in statuses if s != 200) == [502, 503, 503]
        assert "tool-calls" not in {r.headers["x-relay-event"] for r in audit.requests}
        assert [json.loads(body)["message"]["type"] for _, body in team.received] == ["tool-calls"]
