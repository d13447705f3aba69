"""Roark's verdicts in process, on both backends, against the fake Roark: pending, then
completed and sent (signed) to the destination that asks for the failing ones only; 404,
429 and 401 on the way; giving up; and, across a restart and two instances, each
verdict fetched once."""

import json

import pytest
from starlette.testclient import TestClient

from relay.destinations import new_secret
from relay.http.app import create_app
from relay.outbox import Completion, NewDelivery, State
from relay.settings import Settings
from relay.testing.behaviours import RateLimited, Respond
from relay.testing.fake_endpoint import FakeEndpoint
from relay.testing.fake_roark import FakeRoark
from relay.testing.roark_results import FAILURE_BELOW, call_score
from tests.helpers import eventually, vapi_headers, with_call_id
from tests.integration.test_admin_api import conforms
from tests.integration.test_admin_auth import login

TOKEN = "admin-token-for-results-7a3e"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CRM_SECRET = new_secret()
WAIT = 20
CALLS = [f"call-verdict-{n}" for n in range(6)]


@pytest.fixture
def env(relay_env, outbox_url) -> dict[str, str]:
    return {**relay_env, "RELAY_DATABASE_URL": outbox_url, "RELAY_ADMIN_TOKEN": TOKEN,
            "RELAY_RESULTS": "evaluation,sentiment", "RELAY_RESULTS_DELAY_SECONDS": "0.1"}


def relay(env: dict, **extra: str) -> TestClient:
    return TestClient(create_app(Settings.from_env({**env, **extra})), base_url="https://testserver")


def send(client: TestClient, call_id: str) -> int:
    response = client.post("/webhooks/vapi", content=with_call_id("vapi/end-of-call-report", call_id),
                           headers=vapi_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]["deliveries"]["roark"]


def results(client: TestClient, **params: str) -> list[dict]:
    response = client.get("/admin/api/results", params={"limit": "200", **params}, headers=BEARER)
    assert response.status_code == 200, response.text
    return conforms(response.json(), "ResultPage")["data"]


def completed(client: TestClient, count: int) -> list[dict]:
    return eventually(lambda: (found := results(client)) and all(r["state"] == "completed" for r in found)
                      and len(found) == count and found, WAIT, message="the verdicts did not all come")


def verdict_gets(fake: FakeRoark) -> list[str]:
    return [r.path for r in fake.requests if r.method == "GET"]


def test_verdicts_come_back_pending_first_and_the_failing_ones_go_to_the_destination_that_asks(
        env, fake_roark, outbox_url):
    fake_roark.results_delay = 3600  # pending, until the test says otherwise
    with FakeEndpoint(CRM_SECRET) as crm:
        destinations = [{"name": "crm", "url": crm.url, "secret": CRM_SECRET, "events": ["roark:evaluation"],
                         "when": {"classification": "failure"}}]
        with relay(env, RELAY_DESTINATIONS=json.dumps(destinations)) as client:
            ids = {call: send(client, call) for call in CALLS}
            pending = eventually(lambda: (found := results(client)) and len(found) == 2 * len(CALLS)
                                 and all(r["attempts"] >= 1 for r in found) and found, WAIT)
            assert {r["state"] for r in pending} == {"pending"} and crm.requests == []
            fake_roark.results_delay = 0  # Roark has finished
            found = completed(client, 2 * len(CALLS))
            failing = {call for call in CALLS if call_score(call) < FAILURE_BELOW}
            assert 0 < len(failing) < len(CALLS)  # the fake's mix: some of each
            eventually(lambda: len(crm.requests) == len(failing), WAIT, message="the destination lacks a verdict")

            evaluations = {r["call_id"]: r for r in found if r["kind"] == "evaluation"}
            assert {c for c, r in evaluations.items() if r["classification"] == "failure"} == failing
            assert all(evaluations[c]["score"] == call_score(c) for c in CALLS)
            assert all(r["attempts"] >= 2 for r in found)  # pending at first, then completed
            assert {r["call_id"] for r in results(client, classification="failure")} == failing

            detail = client.get(f"/admin/api/deliveries/{ids[CALLS[0]]}", headers=BEARER).json()["data"]
            conforms({"data": detail}, "DeliveryResponse")
            assert {r["kind"] for r in detail["results"]} == {"evaluation", "sentiment"}
            assert detail["results"][0]["data"]  # Roark's data, as it answered

            login(client, TOKEN)
            page = client.get("/status", params={"state": "delivered", "destination": "roark",
                                                 "classification": "failure"}).text
            assert sorted(c for c in CALLS if f">{c}<" in page) == sorted(failing)
            shown = client.get(f"/status/deliveries/{ids[sorted(failing)[0]]}").text
            assert 'id="verdict-evaluation"' in shown and "the caller&#39;s issue was not resolved" in shown
            eventually(lambda: all(r["state"] == "delivered" for r in client.get(
                "/admin/api/deliveries", params={"destination": "crm"}, headers=BEARER).json()["data"]), WAIT)
    assert all(r.status == 200 for r in crm.requests)  # each verified by standardwebhooks
    bodies = [json.loads(r.body) for r in crm.requests]
    assert sorted(b["provider_call_id"] for b in bodies) == sorted(failing)
    first = bodies[0]
    assert first["type"] == "roark.evaluation.completed" and first["provider"] == "vapi"
    assert first["roark_call_id"] == evaluations[first["provider_call_id"]]["roark_call_id"]
    assert [run["status"] for run in first["data"]] == ["completed", "completed"]
    request = crm.requests[0]
    assert (request.headers["x-relay-event"], request.headers["x-relay-provider"]) == ("roark:evaluation", "vapi")
    assert request.headers["x-relay-call-id"] == first["provider_call_id"]


def test_not_known_yet_rate_limited_and_refused_are_ridden_out(env, fake_roark):
    fake_roark.results_script(Respond(404), RateLimited("1", retry_after_ms="300"), Respond(401))
    with relay(env, RELAY_RESULTS="evaluation") as client:
        send(client, "call-bumpy")
        [found] = completed(client, 1)
    statuses = [r.status for r in fake_roark.requests if r.method == "GET"]
    assert statuses == [404, 429, 401, 200]
    gets = [r.received_at for r in fake_roark.requests if r.method == "GET"]
    assert gets[2] - gets[1] >= 0.3  # Retry-After honoured
    assert gets[3] - gets[2] >= 0.3  # paused RELAY_AUTH_PAUSE_SECONDS after the 401
    assert found["attempts"] == 3  # the refused fetch is not counted


def test_a_verdict_that_never_finishes_is_given_up_and_the_delivery_stays_delivered(env, fake_roark):
    fake_roark.results_delay = 3600
    with relay(env, RELAY_RESULTS="sentiment", RELAY_RESULTS_GIVE_UP_SECONDS="0.5") as client:
        delivery_id = send(client, "call-slow-verdict")
        [found] = eventually(lambda: [r for r in results(client) if r["state"] == "given_up"], WAIT,
                             message="the verdict was not given up")
        delivery = client.get(f"/admin/api/deliveries/{delivery_id}", headers=BEARER).json()["data"]
    assert found["last_error"] == "not finished yet" and delivery["state"] == "delivered"


def test_across_a_restart_and_two_instances_each_verdict_is_fetched_once(env, fake_roark):
    slow = {**env, "RELAY_RESULTS_DELAY_SECONDS": "1"}
    with relay(slow) as first:
        for call in CALLS:
            send(first, call)
        eventually(lambda: len(fake_roark.accepted()) == len(CALLS), WAIT)
    assert verdict_gets(fake_roark) == []  # stopped before any verdict was due
    with relay(slow) as one, relay(slow) as two:
        completed(one, 2 * len(CALLS))
        assert len(results(two)) == 2 * len(CALLS)
    gets = verdict_gets(fake_roark)
    assert len(gets) == len(set(gets)) == 2 * len(CALLS)


def test_verdicts_are_pruned_with_their_delivery(backend):
    now = 1_800_000_000.0
    backend.insert_many([NewDelivery("vapi", "end-of-call-report", "call-old", "eocr:call-old", b"{}", now - 100)],
                        now)
    [delivery] = backend.claim("w", now, 60, 1)
    backend.complete(delivery.id, "w", Completion(State.DELIVERED, now - 90, status_code=201, roark_call_id="rk-1"))
    assert backend.schedule_results(("evaluation", "sentiment"), 1, now - 1000, 10) is not None
    assert {r.kind for r in backend.list_results()} == {"evaluation", "sentiment"}
    assert backend.prune(now - 50, [State.DELIVERED], 100) == 1
    assert backend.list_results() == []
