"""A relay in process that reconciles in the background: the calls whose webhook never
came reach the fake Roark once each, and the summary, status page, /metrics and
/health say how the runs went."""

import json
import re
import time

import pytest
from starlette.testclient import TestClient

from relay.destinations import new_secret
from relay.http.app import create_app
from relay.outbox import RunOutcome, open_backend
from relay.settings import Settings
from relay.testing.fake_endpoint import FakeEndpoint
from relay.testing.fake_providers import FakeRetell, FakeVapi, retell_call, vapi_call
from tests.helpers import RETELL_KEY, eventually, retell_headers, vapi_headers, with_call_id
from tests.integration.test_admin_api import BEARER, TOKEN, conforms

HOUR = 3600.0


@pytest.fixture
def vapi():
    with FakeVapi("vapi-private-key", cap=2) as fake:
        yield fake


@pytest.fixture
def retell():
    with FakeRetell(RETELL_KEY, cap=2) as fake:
        yield fake


@pytest.fixture
def env(relay_env, vapi, retell):
    return {**relay_env, "RELAY_ADMIN_TOKEN": TOKEN, "VAPI_API_KEY": vapi.api_key, "VAPI_API_BASE_URL": vapi.url,
            "RETELL_API_BASE_URL": retell.url, "RELAY_RECONCILE_INTERVAL_SECONDS": "3600",
            "RELAY_RECONCILE_GRACE_SECONDS": "0"}


def test_calls_whose_webhook_never_came_reach_roark_once_each(env, vapi, retell, fake_roark):
    now = time.time()
    vapi.add(*(vapi_call(f"vapi-{n}", now - n * HOUR) for n in range(1, 6)))
    retell.add(*(retell_call(f"retell-{n}", now - n * HOUR) for n in range(1, 6)))
    # Some webhooks came while reconciliation was off; the rest never did.
    with TestClient(create_app(Settings.from_env({**env, "RELAY_RECONCILE_INTERVAL_SECONDS": "0"}))) as client:
        for call_id in ("vapi-2", "vapi-4"):
            assert client.post("/webhooks/vapi", content=with_call_id("vapi/end-of-call-report", call_id),
                               headers=vapi_headers()).status_code == 200
        body = with_call_id("retell/call_ended", "retell-3")
        assert client.post("/webhooks/retell", content=body, headers=retell_headers(body)).status_code == 200
        fake_roark.wait_for(lambda requests: len(requests) == 3, timeout=15)

    with TestClient(create_app(Settings.from_env(env))) as client:
        fake_roark.wait_for(lambda requests: len(requests) == 10, timeout=15)
        summary = eventually(lambda: (data := client.get("/admin/api/summary", headers=BEARER).json())
                             ["data"]["reconciliation"]["retell"]["last_queued"] is not None and data, 15)
        metrics = client.get("/metrics", headers=BEARER).text
        page = client.get("/status", headers=BEARER).text
    imported = [(r.path, r.json) for r in fake_roark.requests]
    assert all(r.status == 201 and r.problems == () for r in fake_roark.requests)  # valid per the spec
    vapi_ids = sorted(j["vapi_end_of_call_report_payload"]["call"]["id"] for p, j in imported if "vapi" in p)
    retell_ids = sorted(j["retell_call_ended_payload"]["call"]["call_id"] for p, j in imported if "retell" in p)
    assert vapi_ids == [f"vapi-{n}" for n in range(1, 6)] and retell_ids == [f"retell-{n}" for n in range(1, 6)]

    conforms(summary, "SummaryResponse")
    assert summary["data"]["reconciliation"]["vapi"] | {"last_run_at": None, "last_success_at": None,
                                                         "reconciled_until": None} == {
        "enabled": True, "running": False, "stopped_run_owner": None, "last_queued": 3, "last_error": None,
        "failing_since": None, "last_run_at": None, "last_success_at": None, "reconciled_until": None}
    assert 'relay_reconciled_calls_total{provider="vapi"} 3.0' in metrics
    assert 'relay_reconciled_calls_total{provider="retell"} 4.0' in metrics
    assert 'relay_reconciliation_last_success_timestamp_seconds{provider="retell"}' in metrics
    assert 'id="reconciliation-vapi"' in page and 'id="reconciliation-retell"' in page


def test_health_degrades_once_runs_have_failed_for_two_intervals(env, relay_env, vapi):
    failing = {**env, "RELAY_RECONCILE_INTERVAL_SECONDS": "60", "VAPI_API_KEY": "revoked-key"}
    backend = open_backend(env["RELAY_DATABASE_URL"])
    backend.migrate()
    since = time.time() - 140  # more than two intervals
    backend.lease_reconciliation("vapi", "earlier", since, since + 60)
    backend.end_reconciliation("vapi", "earlier", RunOutcome(since, 0, "VAPI answered HTTP 500"))
    backend.close()
    with TestClient(create_app(Settings.from_env(failing))) as client:
        eventually(lambda: vapi.requests, 15)  # this relay's own run fails too (the key is refused)
        health = eventually(lambda: (data := client.get("/health", headers=BEARER).json()["data"])
                            ["problems"] and "refused" in data["problems"][0] and data, 15)
        page = client.get("/status", headers=BEARER).text
    assert health["status"] == "degraded" and health["dependencies"]["reconciliation"] == "degraded"
    assert health["dependencies"]["roark_delivery"] == "healthy"
    [problem] = health["problems"]
    assert re.fullmatch(r"VAPI reconciliation failing for 2\.[3-9] min: VAPI refused VAPI_API_KEY "
                        r"\(HTTP 401 to GET /call\): check the key", problem), problem
    assert "VAPI refused VAPI_API_KEY" in page and "failing since" in page

    with TestClient(create_app(Settings.from_env({**failing, "RELAY_RECONCILE_INTERVAL_SECONDS": "100"}))) as client:
        health = client.get("/health").json()["data"]
    assert health["status"] == "healthy" and health["dependencies"]["reconciliation"] == "healthy"

    with TestClient(create_app(Settings.from_env(relay_env))) as client:  # reconciliation off
        assert "reconciliation" not in client.get("/health").json()["data"]["dependencies"]


def test_a_reconciled_call_goes_to_the_destinations_that_ask_for_its_event(env, vapi, retell, fake_roark):
    secret = new_secret()
    vapi.add(vapi_call("vapi-missed", time.time() - HOUR))
    with FakeEndpoint(secret) as crm:
        destinations = [{"name": "crm", "url": crm.url, "secret": secret, "events": ["vapi:end-of-call-report"]}]
        with TestClient(create_app(Settings.from_env({**env, "RELAY_DESTINATIONS": json.dumps(destinations)}))):
            [request] = crm.wait_for(lambda requests: len(requests) == 1, timeout=15)
            fake_roark.wait_for(lambda requests: len(requests) == 1, timeout=15)
    assert request.status == 200 and request.headers["x-relay-call-id"] == "vapi-missed"
