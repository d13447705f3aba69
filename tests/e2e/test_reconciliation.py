"""Missed webhooks, end to end: calls end while the relay is down, and the relay that
comes back finds them in the providers' APIs and gets every one to Roark exactly once,
valid per the spec, whether or not its webhook had arrived."""

import time

import jsonschema
import pytest

from relay.testing.fake_providers import FakeRetell, FakeVapi, retell_call, vapi_call
from tests.e2e.conftest import rows
from tests.helpers import RETELL_KEY, eventually, retell_headers, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e
WAIT = 30
HOUR = 3600.0


def test_a_relay_that_was_down_reconciles_every_call_that_ended_meanwhile(start_relay, relay_env, fake_roark,
                                                                          roark_spec, tmp_path):
    with FakeVapi("vapi-private-key-0123456789", cap=3) as vapi, FakeRetell(RETELL_KEY, cap=3) as retell:
        now = time.time()
        vapi.add(*(vapi_call(f"vapi-{n}", now - n * HOUR) for n in range(1, 5)))
        retell.add(*(retell_call(f"retell-{n}", now - n * HOUR) for n in range(1, 5)))
        env = {**relay_env, "VAPI_API_KEY": vapi.api_key, "VAPI_API_BASE_URL": vapi.url,
               "RETELL_API_BASE_URL": retell.url, "RELAY_RECONCILE_GRACE_SECONDS": "0"}

        # Up, without reconciliation: some webhooks arrive.
        relay = start_relay(env)
        for call_id in ("vapi-1", "vapi-3"):
            body = with_call_id("vapi/end-of-call-report", call_id)
            assert relay.post("/webhooks/vapi", body, vapi_headers()).status_code == 200
        body = with_call_id("retell/call_ended", "retell-2")
        assert relay.post("/webhooks/retell", body, retell_headers(body)).status_code == 200
        fake_roark.wait_for(lambda requests: len(requests) == 3, WAIT)
        relay.terminate()

        # Down: more calls end, and nobody hears of them.
        vapi.add(vapi_call("vapi-while-down", time.time() - 1))
        retell.add(retell_call("retell-while-down", time.time() - 1))

        # Back, reconciling.
        relay = start_relay({**env, "RELAY_RECONCILE_INTERVAL_SECONDS": "3600"})
        fake_roark.wait_for(lambda requests: len(requests) == 10, WAIT)
        eventually(lambda: all(r["state"] == "delivered" for r in rows(env)) and len(rows(env)) == 10, WAIT)
        logs = relay.logs()

    imported = {}
    for request in fake_roark.requests:
        assert request.status == 201 and request.problems == ()
        schema = "VapiCallUploadRequest" if "vapi" in request.path else "RetellCallUploadRequest"
        jsonschema.validate(request.json, {**roark_spec["components"]["schemas"][schema],
                                           "components": roark_spec["components"]})
        payload = request.json.get("vapi_end_of_call_report_payload") or request.json["retell_call_ended_payload"]
        call_id = payload["call"].get("id") or payload["call"]["call_id"]
        imported[call_id] = imported.get(call_id, 0) + 1
    assert imported == {**{f"vapi-{n}": 1 for n in range(1, 5)}, **{f"retell-{n}": 1 for n in range(1, 5)},
                        "vapi-while-down": 1, "retell-while-down": 1}
    origins = {r["call_id"]: r["origin"] for r in rows(env)}
    assert [call for call, origin in origins.items() if origin == "webhook"] == ["vapi-1", "vapi-3", "retell-2"]
    assert '"event":"reconcile_finished"' in logs and vapi.api_key not in logs
    # The stored report keeps the customer's Twilio token; what Roark got did not.
    assert all("twilioAuthToken" not in str(r.json) for r in fake_roark.requests)
