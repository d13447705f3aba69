"""The admin JSON API, in process, against a real loopback fake Roark.

Failed deliveries are made the honest way: signed webhooks while the fake Roark refuses
them. Every answer is checked against the OpenAPI document the relay serves.
"""

import json
import sqlite3

import jsonschema
import pytest
from starlette.testclient import TestClient

from relay.admin.openapi import openapi_document
from relay.http.app import create_app
from relay.settings import Settings
from relay.testing.behaviours import Accept, Respond
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id

TOKEN = "admin-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 15
SPEC = openapi_document()


@pytest.fixture
def admin_env(relay_env):
    return {**relay_env, "RELAY_ADMIN_TOKEN": TOKEN}


@pytest.fixture
def client(admin_env):
    with TestClient(create_app(Settings.from_env(admin_env)), base_url="https://testserver") as client:
        yield client


def conforms(instance, schema_name: str):
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)
    return instance


def api(client, method: str, path: str, *, schema: str | None = None, status: int = 200, **kwargs):
    response = client.request(method, path, headers={**BEARER, **kwargs.pop("headers", {})}, **kwargs)
    assert response.status_code == status, response.text
    schema = "ErrorResponse" if status >= 400 else schema
    return conforms(response.json(), schema) if schema else response.json()


def send(client, provider: str, call_id: str, edit=None) -> int:
    name = "vapi/end-of-call-report" if provider == "vapi" else "retell/call_ended"
    body = with_call_id(name, call_id)
    if edit is not None:
        document = json.loads(body)
        edit(document)
        body = json.dumps(document).encode()
    headers = vapi_headers() if provider == "vapi" else retell_headers(body)
    response = client.post(f"/webhooks/{provider}", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["delivery_id"]


def wait_state(client, delivery_id: int, state: str) -> dict:
    def reached():
        data = api(client, "GET", f"/admin/api/deliveries/{delivery_id}", schema="DeliveryResponse")["data"]
        return data if data["state"] == state else None
    return eventually(reached, WAIT, message=f"delivery {delivery_id} never became {state}")


def failed(client, fake_roark, *calls: tuple[str, str]) -> list[int]:
    """Deliveries that Roark refused for good (400), one per (provider, call id)."""
    fake_roark.set_default(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                         "message": "payload rejected"}))
    ids = [send(client, provider, call_id) for provider, call_id in calls]
    for delivery_id in ids:
        wait_state(client, delivery_id, "failed")
    return ids


# --- summary ----------------------------------------------------------------------------

def test_summary_counts_per_state_and_provider(client, fake_roark):
    failed(client, fake_roark, ("vapi", "v-1"), ("vapi", "v-2"), ("retell", "r-1"))
    fake_roark.set_default(Accept())
    wait_state(client, send(client, "retell", "r-2"), "delivered")
    data = api(client, "GET", "/admin/api/summary", schema="SummaryResponse")["data"]
    assert data["counts"] == {"pending": 0, "delivering": 0, "delivered": 1, "failed": 3}
    assert data["providers"]["vapi"] == {"pending": 0, "delivering": 0, "delivered": 0, "failed": 2}
    assert data["providers"]["retell"] == {"pending": 0, "delivering": 0, "delivered": 1, "failed": 1}
    assert data["oldest_pending_age_seconds"] is None and data["paused"] is False
    assert data["pause_reason"] is None


def test_summary_reports_pause_and_oldest_pending(client, fake_roark):
    fake_roark.set_default(Respond(401))  # Roark rejects our key: delivery pauses
    send(client, "vapi", "paused-call")
    data = eventually(lambda: (d := api(client, "GET", "/admin/api/summary")["data"])["paused"] and d, WAIT)
    conforms({"data": data}, "SummaryResponse")
    assert data["pause_reason"] and data["counts"]["pending"] + data["counts"]["delivering"] == 1
    assert data["oldest_pending_age_seconds"] is None or data["oldest_pending_age_seconds"] >= 0


# --- listing ----------------------------------------------------------------------------

def test_list_filters_by_state_provider_and_call_id_prefix(client, fake_roark):
    ids = failed(client, fake_roark, ("vapi", "acme-1"), ("retell", "acme-2"), ("vapi", "other-3"))
    fake_roark.set_default(Accept())
    delivered = send(client, "vapi", "acme-4")
    wait_state(client, delivered, "delivered")

    def listed(query: str) -> list[int]:
        page = api(client, "GET", f"/admin/api/deliveries{query}", schema="DeliveryPage")
        assert all("body" not in item and "payload" not in item for item in page["data"])
        return [item["id"] for item in page["data"]]

    assert listed("") == [delivered, *reversed(ids)]  # newest first, every state
    assert listed("?state=failed") == list(reversed(ids))
    assert listed("?state=failed&provider=vapi") == [ids[2], ids[0]]
    assert listed("?call_id=acme") == [delivered, ids[1], ids[0]]
    assert listed("?state=delivered&call_id=acme-4") == [delivered]
    assert listed("?provider=retell&state=delivered") == []


def test_cursor_paging_is_stable_under_inserts(client, fake_roark):
    first = [send(client, "vapi", f"page-{n}") for n in range(5)]
    page1 = api(client, "GET", "/admin/api/deliveries?limit=2", schema="DeliveryPage")
    assert [d["id"] for d in page1["data"]] == [first[4], first[3]]
    later = [send(client, "retell", f"late-{n}") for n in range(3)]  # arrive mid-paging
    seen, cursor = [d["id"] for d in page1["data"]], page1["next_cursor"]
    while cursor is not None:
        page = api(client, "GET", f"/admin/api/deliveries?limit=2&cursor={cursor}", schema="DeliveryPage")
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
    assert seen == sorted(first, reverse=True)  # no repeats, no gaps, no late arrivals
    newest = api(client, "GET", "/admin/api/deliveries?limit=3")["data"]
    assert [d["id"] for d in newest] == sorted(later, reverse=True)


def test_last_page_has_no_cursor(client, fake_roark):
    ids = [send(client, "vapi", f"exact-{n}") for n in range(2)]
    page = api(client, "GET", "/admin/api/deliveries?limit=2", schema="DeliveryPage")
    assert [d["id"] for d in page["data"]] == ids[::-1] and page["next_cursor"] is None


@pytest.mark.parametrize("query, parameter", [
    ("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"),
    ("state=lost", "state"), ("state=FAILED", "state"), ("provider=twilio", "provider"),
    ("cursor=abc", "cursor"), ("cursor=0", "cursor"), ("cursor=-5", "cursor"),
    ("cursor=1000000000000000000", "cursor"), ("cursor=007", "cursor"), ("cursor=1e3", "cursor"),
    ("status=failed", "status"), ("state=failed&state=pending", "state"),
    ("call_id=" + "x" * 257, "call_id"), ("call_id=a%0Ab", "call_id"),
])
def test_list_refuses_invalid_parameters(client, query, parameter):
    error = api(client, "GET", f"/admin/api/deliveries?{query}", status=400)
    assert error["error_type"] == "validation" and error["parameter"] == parameter


def test_list_accepts_the_limits(client):
    for query in ("limit=1", "limit=200", "state=all", "cursor=999999999999999999", "provider=retell",
                  "cursor=", "provider=", "state=", "call_id=%C2%A0lead"):  # empty: not filtered
        api(client, "GET", f"/admin/api/deliveries?{query}", schema="DeliveryPage")


# --- one delivery -----------------------------------------------------------------------

def test_get_one_has_attempts_and_the_payload_with_secrets_masked(client, fake_roark):
    [delivery_id] = failed(client, fake_roark, ("vapi", "masked-call"))
    response = client.get(f"/admin/api/deliveries/{delivery_id}", headers=BEARER)
    data = conforms(response.json(), "DeliveryResponse")["data"]
    assert data["state"] == "failed" and data["last_status"] == 400
    assert "payload rejected" in data["last_error"]
    [attempt] = data["attempt_history"]
    assert attempt["status_code"] == 400 and attempt["outcome"] == "giveup"
    number = data["payload"]["message"]["phoneNumber"]
    assert number["twilioAuthToken"] == "********"
    assert number["twilioAccountSid"].startswith("AC")  # an id, not a secret: kept
    assert data["payload"]["message"]["call"]["id"] == "masked-call"
    assert "REDACT-ME" not in response.text and data["payload_note"] is None


def test_extra_redact_keys_are_masked(admin_env, fake_roark):
    env = {**admin_env, "RELAY_REDACT_KEYS": "customerEmail"}
    with TestClient(create_app(Settings.from_env(env)), base_url="https://testserver") as client:
        delivery_id = send(client, "vapi", "mail", lambda d: d["message"].update(customerEmail="a@b.example"))
        data = api(client, "GET", f"/admin/api/deliveries/{delivery_id}")["data"]
    assert data["payload"]["message"]["customerEmail"] == "********"


def test_a_body_that_is_not_json_is_not_shown(client, admin_env, fake_roark):
    [delivery_id] = failed(client, fake_roark, ("vapi", "garbled"))
    path = admin_env["RELAY_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE webhooks SET body = ? WHERE id = (SELECT webhook_id FROM deliveries WHERE id = ?)",
                     (b'{"apiKey": "sk-live-x" trunc', delivery_id))
    response = client.get(f"/admin/api/deliveries/{delivery_id}", headers=BEARER)
    data = conforms(response.json(), "DeliveryResponse")["data"]
    assert data["payload"] is None and "not valid JSON" in data["payload_note"]
    assert "sk-live-x" not in response.text


@pytest.mark.parametrize("path, status", [
    ("/admin/api/deliveries/999", 404), ("/admin/api/deliveries/abc", 400), ("/admin/api/deliveries/0", 400),
    ("/admin/api/deliveries/99999999999999999999", 400), ("/admin/api/deliveries/-1", 400),
])
def test_get_one_refuses_unknown_and_invalid_ids(client, path, status):
    api(client, "GET", path, status=status)
    api(client, "POST", path + "/replay", status=status)


# --- replay -----------------------------------------------------------------------------

def test_replay_one_resets_attempts_and_delivers(client, admin_env, fake_roark):
    fake_roark.set_default(Respond(500))  # retried until attempts run out (4 in tests)
    delivery_id = send(client, "vapi", "flaky")
    assert wait_state(client, delivery_id, "failed")["attempts"] == 4
    fake_roark.set_default(Accept())
    result = api(client, "POST", f"/admin/api/deliveries/{delivery_id}/replay", schema="ReplayResult")
    assert result["data"] == {"replayed": [delivery_id], "skipped": []}
    data = wait_state(client, delivery_id, "delivered")
    assert data["attempts"] == 1 and data["roark_call_id"]
    again = api(client, "POST", f"/admin/api/deliveries/{delivery_id}/replay", schema="ReplayResult")
    assert again["data"] == {"replayed": [], "skipped": [delivery_id]}  # delivered stays delivered


def test_replay_is_idempotent_while_the_forwarder_runs(client, fake_roark):
    [delivery_id] = failed(client, fake_roark, ("retell", "hammered"))
    fake_roark.set_default(Accept())
    fake_roark.clear()
    for _ in range(10):  # some land while it is pending, some while it is being sent
        api(client, "POST", "/admin/api/replay", json={"ids": [delivery_id]}, schema="ReplayResult")
        api(client, "POST", f"/admin/api/deliveries/{delivery_id}/replay", schema="ReplayResult")
    wait_state(client, delivery_id, "delivered")
    for _ in range(3):
        assert api(client, "POST", "/admin/api/replay", json={"ids": [delivery_id]})["data"]["replayed"] == []
    assert len(fake_roark.accepted()) == 1


def test_replay_many_by_ids_reports_what_it_skipped(client, fake_roark):
    ids = failed(client, fake_roark, ("vapi", "m-1"), ("retell", "m-2"))
    fake_roark.set_default(Accept())
    result = api(client, "POST", "/admin/api/replay", json={"ids": [ids[1], 424242, ids[0], ids[0]]},
                 schema="ReplayResult")
    assert result["data"] == {"replayed": sorted(ids), "skipped": [424242]}
    for delivery_id in ids:
        wait_state(client, delivery_id, "delivered")


def test_replay_all_failed_honours_provider_and_call_id(client, fake_roark):
    vapi_a, retell_a, retell_b = failed(client, fake_roark, ("vapi", "a-1"), ("retell", "a-2"), ("retell", "b-3"))
    fake_roark.set_default(Accept())
    result = api(client, "POST", "/admin/api/replay", schema="ReplayResult",
                 json={"all_failed": True, "provider": "retell", "call_id": "a-"})
    assert result["data"]["replayed"] == [retell_a]
    wait_state(client, retell_a, "delivered")
    result = api(client, "POST", "/admin/api/replay", json={"all_failed": True})
    assert result["data"]["replayed"] == [vapi_a, retell_b]
    wait_state(client, vapi_a, "delivered")
    wait_state(client, retell_b, "delivered")
    assert api(client, "POST", "/admin/api/replay", json={"all_failed": True})["data"]["replayed"] == []


@pytest.mark.parametrize("body", [
    {}, {"ids": []}, {"ids": "1"}, {"ids": ["1"]}, {"ids": [True]}, {"ids": [1.5]}, {"ids": [0]},
    {"ids": [2**63]}, {"ids": list(range(1, 502))}, {"ids": [1], "all_failed": True},
    {"all_failed": False}, {"all_failed": "yes"}, {"all_failed": True, "provider": "twilio"},
    {"all_failed": True, "call_id": 7}, {"ids": [1], "provider": "vapi"}, {"everything": True}, [1, 2],
])
def test_replay_many_refuses_invalid_bodies(client, body):
    error = api(client, "POST", "/admin/api/replay", json=body, status=400)
    assert error["error_type"] == "validation"


def test_replay_many_refuses_non_json_and_huge_bodies(client):
    api(client, "POST", "/admin/api/replay", content=b"ids=1", status=415,
        headers={"content-type": "application/x-www-form-urlencoded"})
    api(client, "POST", "/admin/api/replay", content=b'{"ids": [1', status=400,
        headers={"content-type": "application/json"})
    api(client, "POST", "/admin/api/replay", content=b'{"all_failed": NaN}', status=400,
        headers={"content-type": "application/json"})
    huge = json.dumps({"ids": [1] * 30000}).encode()
    api(client, "POST", "/admin/api/replay", content=huge, status=413,
        headers={"content-type": "application/json"})


# --- the OpenAPI document ---------------------------------------------------------------

def test_openapi_document_is_served_and_describes_every_api_route(client):
    served = api(client, "GET", "/admin/openapi.json")
    assert served == json.loads(json.dumps(SPEC)) and served["openapi"].startswith("3.1")
    routes = {(method.lower(), route.path) for route in client.app.routes
              if route.path.startswith("/admin/api/") for method in route.methods or () if method != "HEAD"}
    documented = {(method, path) for path, item in served["paths"].items() for method in item}
    assert documented == routes


def test_openapi_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(SPEC)
