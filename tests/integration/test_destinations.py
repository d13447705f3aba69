"""Destinations in process: every webhook stored once and owed to Roark and each
destination that asked for it, delivered to each on its own terms (signature, retries,
410 stop, resume), on both backends."""

import json

import pytest
from starlette.testclient import TestClient

from relay.destinations import new_secret
from relay.forwarding.destination import message_id
from relay.http.app import create_app
from relay.settings import Settings
from relay.testing.behaviours import Respond, Slow
from relay.testing.fake_endpoint import FakeEndpoint
from tests.helpers import VAPI_SECRET, eventually, retell_headers, sample, vapi_headers, with_call_id
from tests.integration.test_admin_api import conforms
from tests.integration.test_admin_auth import csrf_of, login

WAIT = 15
TOKEN = "admin-token-for-destinations-8c2e"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CRM_SECRET = new_secret()


@pytest.fixture
def crm():
    with FakeEndpoint(CRM_SECRET) as endpoint:
        yield endpoint


def relay(env: dict, *destinations: dict, **extra: str) -> TestClient:
    # https: the status page's session cookie is Secure.
    return TestClient(create_app(Settings.from_env({
        **env, "RELAY_ADMIN_TOKEN": TOKEN, "RELAY_DESTINATIONS": json.dumps(list(destinations)), **extra})),
        base_url="https://testserver")


def destination(endpoint: FakeEndpoint, name: str = "crm", **fields) -> dict:
    return {"name": name, "url": f"{endpoint.url}/hooks/voice?key=k3y", "secret": CRM_SECRET, **fields}


def post_vapi(client, body: bytes) -> dict:
    response = client.post("/webhooks/vapi", content=body, headers=vapi_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]


def delivered(client, delivery_id: int) -> dict:
    def state():
        data = client.get(f"/admin/api/deliveries/{delivery_id}", headers=BEARER).json()["data"]
        return data["state"] == "delivered" and data
    return eventually(state, WAIT, message=f"delivery {delivery_id} was not delivered")


def test_one_webhook_reaches_roark_and_the_destination_each_once(relay_env, fake_roark, crm, outbox_url):
    body = with_call_id("vapi/end-of-call-report", "call-fan-out")
    with relay({**relay_env, "RELAY_DATABASE_URL": outbox_url}, destination(crm)) as client:
        ack = post_vapi(client, body)
        again = post_vapi(client, body)  # VAPI retrying: the same webhook, owed to no one again
        assert set(ack["deliveries"]) == {"roark", "crm"} and again == {**ack, "status": "duplicate"}
        for delivery_id in ack["deliveries"].values():
            delivered(client, delivery_id)
        [to_crm] = crm.requests
        [to_roark] = fake_roark.requests
    assert to_roark.status == 201 and to_crm.status == 200  # 200: the library verified the signature
    assert to_crm.path == "/hooks/voice" and to_crm.body == body  # byte for byte as received
    assert to_crm.headers["content-type"] == "application/json"
    assert to_crm.headers["webhook-id"] == message_id("vapi", "end-of-call-report:id:str:call-fan-out")
    assert (to_crm.headers["x-relay-provider"], to_crm.headers["x-relay-event"],
            to_crm.headers["x-relay-call-id"]) == ("vapi", "end-of-call-report", "call-fan-out")
    # Without original_headers, VAPI's credential stays with the relay.
    assert VAPI_SECRET not in json.dumps(to_crm.headers) and "x-vapi-secret" not in to_crm.headers


def test_original_headers_pass_on_the_providers_credential(relay_env, fake_roark, crm):
    body = with_call_id("vapi/end-of-call-report", "call-headers")
    with relay(relay_env, destination(crm, original_headers=True)) as client:
        delivered(client, post_vapi(client, body)["deliveries"]["crm"])
    [request] = crm.requests
    assert request.headers["x-vapi-secret"] == VAPI_SECRET


def test_events_only_a_destination_wants_are_stored_for_it_alone(relay_env, fake_roark, crm):
    update = json.loads(sample("vapi/status-update"))
    with relay(relay_env, destination(crm, events=["vapi:status-update", "retell:call_analyzed"])) as client:
        first = post_vapi(client, json.dumps(update).encode())
        update["message"]["status"] = "ended"  # the same call, a later update: news, not a retry
        second = post_vapi(client, json.dumps(update).encode())
        repeat = post_vapi(client, json.dumps(update).encode())  # the same bytes again: a retry
        analyzed = sample("retell/call_analyzed")
        third = client.post("/webhooks/retell", content=analyzed, headers=retell_headers(analyzed)).json()["data"]
        assert [d["status"] for d in (first, second, repeat, third)] == [
            "accepted", "accepted", "duplicate", "accepted"]
        assert all(set(d["deliveries"]) == {"crm"} for d in (first, second, third))
        for d in (first, second, third):
            delivered(client, d["delivery_id"])
        # Nobody asked for a transcript: acknowledged and dropped, as before.
        transcript = {"message": {"type": "transcript", "call": {"id": "c1"}, "transcript": "hi"}}
        ignored = post_vapi(client, json.dumps(transcript).encode())
    assert ignored["status"] == "ignored" and "no destination" in ignored["reason"]
    assert fake_roark.requests == []
    assert sorted(r.headers["x-relay-event"] for r in crm.requests) == [
        "call_analyzed", "status-update", "status-update"]


def test_retries_keep_the_webhook_id_and_sign_each_attempt_anew(relay_env, fake_roark, crm):
    crm.script(Respond(503), Respond(500))
    with relay(relay_env, destination(crm)) as client:
        delivery = delivered(client, post_vapi(client, sample("vapi/end-of-call-report"))["deliveries"]["crm"])
    first, second, third = crm.requests
    assert [r.status for r in (first, second, third)] == [503, 500, 200]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert delivery["attempts"] == 3 and [a["status_code"] for a in delivery["attempt_history"]] == [503, 500, 200]


def test_gone_fails_the_delivery_stops_the_destination_until_resumed(relay_env, fake_roark, crm):
    crm.script(Respond(410))
    with relay(relay_env, destination(crm)) as client:
        first = post_vapi(client, with_call_id("vapi/end-of-call-report", "call-gone-1"))
        failed = eventually(lambda: (d := client.get(f"/admin/api/deliveries/{first['deliveries']['crm']}",
                                                     headers=BEARER).json()["data"])["state"] == "failed" and d, WAIT)
        assert "410 Gone" in failed["last_error"]
        summary = conforms(client.get("/admin/api/summary", headers=BEARER).json(), "SummaryResponse")["data"]
        crm_summary = next(d for d in summary["destinations"] if d["name"] == "crm")
        assert "410 Gone" in crm_summary["stopped"]["reason"]
        health = client.get("/health", headers=BEARER).json()["data"]
        assert health["status"] == "degraded" and health["dependencies"]["crm_delivery"] == "degraded"
        assert health["dependencies"]["roark_delivery"] == "healthy"
        # Anyone may ask how the relay is, but the team's destinations go unnamed.
        public = client.get("/health").json()["data"]
        assert public["dependencies"] == {"database": "healthy", "roark_delivery": "healthy",
                                          "destinations_delivery": "degraded"}

        # Stopped: a later webhook is stored and still reaches Roark, but waits for crm.
        second = post_vapi(client, with_call_id("vapi/end-of-call-report", "call-gone-2"))
        delivered(client, second["deliveries"]["roark"])
        assert len(crm.requests) == 1

        resumed = conforms(client.post("/admin/api/destinations/crm/resume", headers=BEARER).json(),
                           "ResumeResponse")["data"]
        assert resumed == {"destination": "crm", "resumed": True}
        delivered(client, second["deliveries"]["crm"])
        replayed = client.post("/admin/api/replay", headers=BEARER,
                               json={"all_failed": True, "destination": "crm"}).json()["data"]
        assert replayed["replayed"] == [first["deliveries"]["crm"]]
        delivered(client, first["deliveries"]["crm"])
        again = client.post("/admin/api/destinations/crm/resume", headers=BEARER).json()["data"]
    assert again == {"destination": "crm", "resumed": False}


def test_a_slow_destination_never_holds_up_roark(relay_env, fake_roark, crm):
    crm.set_default(Slow(WAIT))  # answers nothing for as long as the test may take
    with relay(relay_env, destination(crm, concurrency=2, timeout_seconds=WAIT)) as client:
        acks = [post_vapi(client, with_call_id("vapi/end-of-call-report", f"call-slow-{n}")) for n in range(6)]
        for ack in acks:
            delivered(client, ack["deliveries"]["roark"])
        # Two sends to crm hang (its concurrency), the rest wait in the store.
        assert crm.in_flight <= 2
        listed = client.get("/admin/api/deliveries?destination=crm&state=all", headers=BEARER).json()["data"]
        assert len(listed) == 6 and all(d["state"] in ("pending", "delivering") for d in listed)
        crm.set_default(Respond(200))
        crm.stop()  # lets the hanging requests go; the relay retries them


def test_listing_and_metrics_per_destination(relay_env, fake_roark, crm):
    with relay(relay_env, destination(crm)) as client:
        ack = post_vapi(client, sample("vapi/end-of-call-report"))
        for delivery_id in ack["deliveries"].values():
            delivered(client, delivery_id)
        only_crm = conforms(client.get("/admin/api/deliveries?destination=crm", headers=BEARER).json(),
                            "DeliveryPage")["data"]
        bad = client.get("/admin/api/deliveries?destination=CRM!", headers=BEARER)
        metrics = client.get("/metrics", headers=BEARER).text
    assert [d["destination"] for d in only_crm] == ["crm"]
    assert bad.status_code == 400 and conforms(bad.json(), "ErrorResponse")["parameter"] == "destination"
    assert 'relay_queue_depth{destination="crm",state="delivered"} 1.0' in metrics
    assert ('relay_delivery_attempts_total{destination="crm",outcome="delivered",provider="vapi",'
            'status_class="2xx"} 1.0') in metrics


def test_the_status_page_shows_a_stopped_destination_and_resumes_it(relay_env, fake_roark, crm):
    crm.script(Respond(410))
    with relay(relay_env, destination(crm)) as client:
        ack = post_vapi(client, sample("vapi/end-of-call-report"))
        eventually(lambda: "410 Gone" in client.get("/status", headers=BEARER).text, WAIT)
        assert login(client, TOKEN).status_code == 303
        page = client.get("/status?destination=crm&state=failed").text
        assert 'id="stopped-crm"' in page and "Resume crm" in page and 'id="destinations"' in page
        assert "Traffic to crm" in page  # the charts follow the destination filter
        assert f'id="delivery-{ack["deliveries"]["crm"]}"' in page  # the failed copy, listed per destination
        assert "k3y" not in page  # the URL's query may be a credential: never shown
        forged = client.post("/status/destinations/crm/resume", data={"csrf_token": "wrong"}, follow_redirects=False)
        assert forged.status_code == 403
        resumed = client.post("/status/destinations/crm/resume", data={"csrf_token": csrf_of(page)},
                              follow_redirects=False)
        assert resumed.status_code == 303 and resumed.headers["location"] == "/status?resumed=crm"
        after = client.get(resumed.headers["location"]).text
    assert "Resumed crm" in after and 'id="stopped-crm"' not in after


def test_deliveries_to_a_destination_taken_out_of_the_configuration_fail_at_start(relay_env, fake_roark, crm):
    crm.set_default(Respond(503))
    with relay(relay_env, destination(crm)) as client:
        ack = post_vapi(client, sample("vapi/end-of-call-report"))
        delivered(client, ack["deliveries"]["roark"])
    with relay(relay_env) as client:  # crm removed
        orphan = client.get(f"/admin/api/deliveries/{ack['deliveries']['crm']}", headers=BEARER).json()["data"]
        health = client.get("/health", headers=BEARER).json()["data"]
        summary = client.get("/admin/api/summary", headers=BEARER).json()["data"]
    assert orphan["state"] == "failed" and "no longer configured" in orphan["last_error"]
    assert health["status"] == "healthy" and "crm_delivery" not in health["dependencies"]
    assert [(d["name"], d["url"], d["counts"]["failed"]) for d in summary["destinations"]] == [
        ("roark", fake_roark.url, 0), ("crm", None, 1)]
