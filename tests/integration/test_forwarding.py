"""The forwarder, in process, against a real loopback fake Roark."""

import json
import sqlite3

import jsonschema
import pytest
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.settings import Settings
from relay.testing.behaviours import Accept, RateLimited, Reset, Respond, Slow
from tests.helpers import ROARK_KEY, eventually, retell_headers, sample, vapi_headers, with_call_id

WAIT = 15  # seconds; generous upper bounds on conditions, never slept
ADMIN_TOKEN = "admin-token-for-forwarding-5f1c"
ADMIN_BEARER = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def start(env: dict) -> TestClient:
    return TestClient(create_app(Settings.from_env(env)))


def delivery(settings_env: dict, delivery_id: int) -> dict:
    path = settings_env["RELAY_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM webhooks JOIN deliveries ON deliveries.webhook_id = webhooks.id "
                                 "WHERE deliveries.id = ?", (delivery_id,)).fetchone())


def wait_state(env, delivery_id, state):
    return eventually(
        lambda: (row := delivery(env, delivery_id))["state"] == state and row,
        WAIT,
        message=f"delivery {delivery_id} never reached {state}: {delivery(env, delivery_id)}",
    )


def send_vapi(client, call_id="call-1") -> int:
    body = with_call_id("vapi/end-of-call-report", call_id)
    response = client.post("/webhooks/vapi", content=body, headers=vapi_headers())
    assert response.status_code == 200
    return response.json()["data"]["delivery_id"]


def test_vapi_is_forwarded_unwrapped_with_exactly_the_spec_body(relay_env, fake_roark, roark_spec):
    with start(relay_env) as client:
        body = sample("vapi/end-of-call-report")
        delivery_id = client.post("/webhooks/vapi", content=body, headers=vapi_headers()).json()["data"]["delivery_id"]
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
        row = wait_state(relay_env, delivery_id, "delivered")
    assert request.path == "/v1/vapi/call" and request.status == 201
    assert request.headers["authorization"] == f"Bearer {ROARK_KEY}"
    report = json.loads(body)["message"]
    del report["phoneNumber"]["twilioAuthToken"]  # the customer's credential stays here
    assert request.json == {"vapi_end_of_call_report_payload": report, "skip_already_imported": True}
    schema = {**roark_spec["components"]["schemas"]["VapiCallUploadRequest"], "components": roark_spec["components"]}
    jsonschema.validate(request.json, schema)
    assert row["roark_call_id"] and row["last_status"] == 201 and row["attempts"] == 1


def test_retell_is_forwarded_as_the_whole_envelope_with_properties(relay_env, fake_roark):
    env = {**relay_env, "ROARK_PROPERTIES": '{"business_name": "Acme"}'}
    with start(env) as client:
        body = sample("retell/call_ended")
        client.post("/webhooks/retell", content=body, headers=retell_headers(body))
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    assert request.path == "/v1/retell/call" and request.status == 201
    assert request.json == {
        "retell_call_ended_payload": json.loads(body),
        "skip_already_imported": True,
        "properties": {"business_name": "Acme"},
    }


def test_non_ascii_payload_survives_byte_for_byte_in_meaning(relay_env, fake_roark):
    document = json.loads(sample("retell/call_ended"))
    document["call"]["transcript"] = "Agent: Grüß Gott 👋 — ¿qué tal? 日本語"
    body = json.dumps(document, ensure_ascii=False).encode()
    with start(relay_env) as client:
        client.post("/webhooks/retell", content=body, headers=retell_headers(body))
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    assert request.json["retell_call_ended_payload"] == document


def test_camel_case_field_names(relay_env):
    from relay.testing.fake_roark import FakeRoark

    with FakeRoark(api_key=ROARK_KEY, field_case="camel") as camel:
        env = {**relay_env, "ROARK_FIELD_CASE": "camel", "ROARK_BASE_URL": camel.url}
        with start(env) as client:
            delivery_id = send_vapi(client)
            [request] = camel.wait_for(lambda rs: len(rs) >= 1, WAIT)
            row = wait_state(env, delivery_id, "delivered")
    assert set(request.json) == {"vapiEndOfCallReportPayload", "skipAlreadyImported"}
    assert request.status == 201 and row["roark_call_id"]


def test_duplicates_are_forwarded_once(relay_env, fake_roark):
    with start(relay_env) as client:
        for _ in range(3):
            send_vapi(client, "same-call")
        delivery_id = send_vapi(client, "other-call")
        wait_state(relay_env, delivery_id, "delivered")
        fake_roark.wait_for(lambda rs: len(rs) >= 2, WAIT)
    calls = [r.json["vapi_end_of_call_report_payload"]["call"]["id"] for r in fake_roark.requests]
    assert sorted(calls) == ["other-call", "same-call"]


@pytest.mark.parametrize("failure", [Respond(500), Respond(502), Respond(503), Reset(), Respond(408)])
def test_transient_failure_then_success_ends_delivered(relay_env, fake_roark, failure):
    fake_roark.script(failure)
    with start(relay_env) as client:
        delivery_id = send_vapi(client)
        row = wait_state(relay_env, delivery_id, "delivered")
    assert row["attempts"] == 2
    assert [r.status for r in fake_roark.requests] == [getattr(failure, "status", 0), 201]


def test_timeout_is_retried(relay_env, fake_roark):
    fake_roark.script(Slow(3))
    env = {**relay_env, "ROARK_TIMEOUT_SECONDS": "1", "RELAY_LEASE_SECONDS": "5"}
    with start(env) as client:
        delivery_id = send_vapi(client)
        row = wait_state(env, delivery_id, "delivered")
    assert row["attempts"] == 2


def test_permanent_400_fails_with_the_upstream_message(relay_env, fake_roark):
    fake_roark.script(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                     "message": "Invalid VAPI payload: missing call"}))
    with start(relay_env) as client:
        delivery_id = send_vapi(client)
        row = wait_state(relay_env, delivery_id, "failed")
    assert row["last_status"] == 400 and row["attempts"] == 1
    # Roark's error is shown once, after why the relay gave up.
    assert row["last_error"] == "permanent error (HTTP 400): invalid_parameter: Invalid VAPI payload: missing call"
    assert len(fake_roark.requests) == 1


def test_attempts_run_out_into_failed(relay_env, fake_roark):
    fake_roark.set_default(Respond(500))
    with start(relay_env) as client:
        delivery_id = send_vapi(client)
        row = wait_state(relay_env, delivery_id, "failed")
    assert row["attempts"] == 4 and len(fake_roark.requests) == 4
    assert "gave up after 4 attempts" in row["last_error"]


def test_retry_after_is_honoured_before_the_next_request(relay_env, fake_roark):
    fake_roark.script(RateLimited(retry_after="1"))
    with start(relay_env) as client:
        delivery_id = send_vapi(client)
        wait_state(relay_env, delivery_id, "delivered")
    first, second = fake_roark.requests
    assert first.status == 429 and second.status == 201
    assert second.received_at - first.received_at >= 1.0


def test_unauthorized_pauses_without_burning_attempts_then_resumes(relay_env, fake_roark):
    fake_roark.script(Respond(401), Respond(401))
    with start({**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}) as client:
        delivery_id = send_vapi(client)
        fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
        health = client.get("/health", headers=ADMIN_BEARER).json()["data"]
        assert health["status"] == "degraded" and health["delivery_paused"]
        assert any("ROARK_API_KEY" in problem for problem in health["problems"])
        row = wait_state(relay_env, delivery_id, "delivered")
        assert client.get("/health").json()["data"]["status"] == "healthy"
    assert row["attempts"] == 1
    assert [r.status for r in fake_roark.requests] == [401, 401, 201]


def test_shutdown_hands_in_flight_deliveries_back(relay_env, fake_roark):
    fake_roark.set_default(Slow(30))
    env = {**relay_env, "RELAY_SHUTDOWN_GRACE_SECONDS": "0.2", "ROARK_TIMEOUT_SECONDS": "40",
           "RELAY_LEASE_SECONDS": "90"}
    with start(env) as client:
        delivery_id = send_vapi(client)
        fake_roark.wait_for(lambda rs: fake_roark.in_flight >= 1, WAIT)
    row = delivery(env, delivery_id)
    assert row["state"] == "pending" and row["attempts"] == 0 and row["lease_token"] is None
    fake_roark.set_default(Accept())
    with start(env) as client:
        wait_state(env, delivery_id, "delivered")


def test_source_properties_and_request_id_reach_roark(relay_env, fake_roark):
    env = {**relay_env, "ROARK_PROPERTIES": '{"env": "prod", "business_name": "Default"}',
           "RELAY_SOURCES": '{"acme": {"business_name": "Acme", "tier": "gold"}}'}
    with start(env) as client:
        body = sample("retell/call_ended")
        response = client.post("/webhooks/retell/acme?campaign=spring&tier=silver", content=body,
                               headers=retell_headers(body))
        assert response.status_code == 200
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
        unknown = client.post("/webhooks/retell/globex", content=body, headers=retell_headers(body))
        assert unknown.status_code == 404 and "RELAY_SOURCES" in unknown.json()["message"]
    assert request.json["properties"] == {"env": "prod", "business_name": "Acme", "tier": "silver",
                                          "campaign": "spring"}
    assert request.headers["x-request-id"] == response.headers["x-request-id"]


def test_provider_credentials_are_stripped_before_forwarding_by_default(relay_env, fake_roark):
    env = {**relay_env, "RELAY_REDACT_KEYS": "customerPin"}
    document = json.loads(sample("vapi/end-of-call-report"))
    document["message"]["customer"]["customerPin"] = "4321"
    with start(env) as client:
        client.post("/webhooks/vapi", content=json.dumps(document).encode(), headers=vapi_headers())
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    forwarded = request.json["vapi_end_of_call_report_payload"]
    assert document["message"]["phoneNumber"]["twilioAuthToken"].encode() not in request.body
    del document["message"]["phoneNumber"]["twilioAuthToken"], document["message"]["customer"]["customerPin"]
    assert forwarded == document["message"]  # nothing else is touched


def test_secrets_are_forwarded_as_sent_when_stripping_is_turned_off(relay_env, fake_roark):
    document = json.loads(sample("vapi/end-of-call-report"))
    with start({**relay_env, "RELAY_STRIP_SECRETS_UPSTREAM": "false"}) as client:
        client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    assert request.json["vapi_end_of_call_report_payload"] == document["message"]
