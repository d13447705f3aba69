"""The relay as users run it: `relay serve` in its own process, a fake Roark upstream."""

import json
import os
import shutil
import signal
import subprocess

import jsonschema
import pytest

from relay.core.redaction import Redactor
from relay.testing.behaviours import Accept, Respond, Slow
from relay.testing.roark_contract import load_contract
from tests.e2e.conftest import rows
from tests.helpers import (
    RETELL_KEY,
    ROARK_KEY,
    VAPI_SECRET,
    eventually,
    retell_headers,
    sample,
    vapi_headers,
    with_call_id,
)

pytestmark = pytest.mark.e2e
WAIT = 20


def request_schema(spec: dict, name: str) -> dict:
    return {**spec["components"]["schemas"][name], "components": spec["components"]}


def test_signed_samples_are_forwarded_with_exactly_the_spec_body(start_relay, relay_env, fake_roark, roark_spec):
    relay = start_relay(relay_env)
    vapi = sample("vapi/end-of-call-report")
    retell = sample("retell/call_ended")
    retell_web = sample("retell/call_ended_web")
    assert relay.post("/webhooks/vapi", vapi, vapi_headers()).json()["data"]["status"] == "accepted"
    assert relay.post("/webhooks/retell", retell, retell_headers(retell)).status_code == 200
    assert relay.post("/webhooks/retell", retell_web, retell_headers(retell_web)).status_code == 200
    received = fake_roark.wait_for(lambda rs: len(rs) >= 3, WAIT)
    by_path = {}
    for request in received:
        by_path.setdefault(request.path, []).append(request)
        assert request.status == 201 and request.problems == ()
        assert request.headers["authorization"] == f"Bearer {ROARK_KEY}"
    [vapi_request] = by_path["/v1/vapi/call"]
    assert vapi_request.json == {
        # The customer's Twilio credentials stay with the relay (RELAY_STRIP_SECRETS_UPSTREAM).
        "vapi_end_of_call_report_payload": Redactor().strip(json.loads(vapi)["message"]),
        "skip_already_imported": True,
    }
    jsonschema.validate(vapi_request.json, request_schema(roark_spec, "VapiCallUploadRequest"))
    retell_bodies = [r.json for r in by_path["/v1/retell/call"]]
    for original in (retell, retell_web):
        expected = {"retell_call_ended_payload": json.loads(original), "skip_already_imported": True}
        assert expected in retell_bodies
        jsonschema.validate(expected, request_schema(roark_spec, "RetellCallUploadRequest"))
    eventually(lambda: all(r["state"] == "delivered" and r["roark_call_id"] for r in rows(relay_env)), WAIT)


def test_embedded_contract_validates_the_same_bodies(fake_roark, start_relay, relay_env):
    # Runs without ../shared too: the fake validates with its embedded copy of the schemas.
    relay = start_relay(relay_env)
    body = sample("retell/call_ended")
    relay.post("/webhooks/retell", body, retell_headers(body))
    [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    contract = load_contract()
    jsonschema.validate(request.json, request_schema(contract, "RetellCallUploadRequest"))


def test_duplicates_and_ignored_events_are_not_forwarded_again(start_relay, relay_env, fake_roark):
    relay = start_relay(relay_env)
    report = sample("vapi/end-of-call-report")
    statuses = [relay.post("/webhooks/vapi", report, vapi_headers()).json()["data"]["status"] for _ in range(3)]
    assert statuses == ["accepted", "duplicate", "duplicate"]
    for name in ("vapi/status-update", "vapi/tool-calls"):
        assert relay.post("/webhooks/vapi", sample(name), vapi_headers()).json()["data"]["status"] == "ignored"
    started = sample("retell/call_started")
    assert relay.post("/webhooks/retell", started, retell_headers(started)).json()["data"]["status"] == "ignored"
    marker = with_call_id("vapi/end-of-call-report", "marker-call")
    relay.post("/webhooks/vapi", marker, vapi_headers())
    fake_roark.wait_for(lambda rs: len(rs) >= 2, WAIT)
    eventually(lambda: all(r["state"] == "delivered" for r in rows(relay_env)), WAIT)
    calls = sorted(r.json["vapi_end_of_call_report_payload"]["call"]["id"] for r in fake_roark.requests)
    assert calls == ["3f6c2a8e-5b1d-4c2e-9a7f-0d1e2b3c4a5f", "marker-call"]
    assert len(rows(relay_env)) == 2


def test_500_then_201_ends_delivered_and_400_ends_failed(start_relay, relay_env, fake_roark):
    relay = start_relay(relay_env)
    fake_roark.script(Respond(500))
    relay.post("/webhooks/vapi", with_call_id("vapi/end-of-call-report", "flaky"), vapi_headers())
    eventually(lambda: [r["state"] for r in rows(relay_env)] == ["delivered"], WAIT)
    fake_roark.script(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                     "message": "Invalid VAPI payload"}))
    relay.post("/webhooks/vapi", with_call_id("vapi/end-of-call-report", "rejected"), vapi_headers())
    eventually(lambda: [r["state"] for r in rows(relay_env)] == ["delivered", "failed"], WAIT)
    flaky, rejected = rows(relay_env)
    assert flaky["attempts"] == 2 and flaky["last_status"] == 201
    assert rejected["attempts"] == 1 and "Invalid VAPI payload" in rejected["last_error"]
    assert [r.status for r in fake_roark.requests] == [500, 201, 400]


def test_acknowledged_webhook_survives_a_kill_and_is_delivered_after_restart(start_relay, relay_env, fake_roark):
    env = {**relay_env, "ROARK_TIMEOUT_SECONDS": "1", "RELAY_LEASE_SECONDS": "2"}
    fake_roark.set_default(Slow(30))  # the first attempt is in flight when the relay dies
    relay = start_relay(env)
    body = sample("retell/call_ended")
    assert relay.post("/webhooks/retell", body, retell_headers(body)).status_code == 200
    fake_roark.wait_for(lambda rs: fake_roark.in_flight >= 1, WAIT)
    relay.kill()
    fake_roark.set_default(Accept())
    start_relay(env)
    eventually(lambda: [r["state"] for r in rows(env)] == ["delivered"], WAIT)
    assert fake_roark.accepted()[0].json["retell_call_ended_payload"] == json.loads(body)


def test_sigterm_stops_cleanly(start_relay, relay_env):
    relay = start_relay(relay_env)
    # Its forwarding process too (stopped while still starting, it has nothing to hand back).
    eventually(lambda: "forwarding_started" in relay.logs(), WAIT)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why.
    assert relay.terminate() == -signal.SIGTERM
    logs = relay.logs()
    assert logs.index("forwarder_stopped") < logs.index("Application shutdown complete")


def test_logs_are_json_lines_with_ids_and_no_secrets(start_relay, relay_env, fake_roark):
    relay = start_relay(relay_env)
    body = sample("vapi/end-of-call-report")
    request_id = relay.post("/webhooks/vapi", body, vapi_headers()).headers["x-request-id"]
    fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    eventually(lambda: "delivery_attempt" in relay.logs(), WAIT)
    relay.terminate()
    events = [json.loads(line) for line in relay.logs().splitlines()]  # every line is JSON
    received = [e for e in events if e["event"] == "webhook_received"]
    assert received[0]["request_id"] == request_id
    assert {"provider", "call_id", "delivery_id", "status", "duration_ms"} <= received[0].keys()
    attempt = next(e for e in events if e["event"] == "delivery_attempt")
    assert {"delivery_id", "provider", "call_id", "status", "duration_ms"} <= attempt.keys()
    text = relay.logs()
    twilio_token = json.loads(body)["message"]["phoneNumber"]["twilioAuthToken"]
    for secret in (ROARK_KEY, RETELL_KEY, VAPI_SECRET, twilio_token):
        assert secret not in text


def test_missing_api_key_fails_with_one_line_naming_it(tmp_path):
    env = {"PATH": os.environ["PATH"], "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = subprocess.run([shutil.which("relay"), "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "ROARK_API_KEY" in result.stderr


def test_send_sample_proves_a_relay_accepts_what_the_providers_send(start_relay, relay_env, fake_roark):
    from click.testing import CliRunner

    from relay.cli import main

    relay = start_relay(relay_env)
    for provider in ("vapi", "retell"):
        sent = CliRunner(env=relay_env).invoke(main, ["send-sample", provider, "--url", relay.url])
        assert sent.exit_code == 0, sent.output
        assert "HTTP 200" in sent.output and '"accepted"' in sent.output
    other = CliRunner(env=relay_env).invoke(
        main, ["send-sample", "vapi", "--url", relay.url, "--event", "status-update"])
    assert other.exit_code == 0 and '"ignored"' in other.output
    assert len(rows(relay_env)) == 2
    wrong = CliRunner(env={**relay_env, "RETELL_API_KEY": "not-the-relays-key"}).invoke(
        main, ["send-sample", "retell", "--url", relay.url])
    assert wrong.exit_code == 1 and "HTTP 401" in wrong.output
    unknown = CliRunner(env=relay_env).invoke(main, ["send-sample", "retell", "--url", relay.url, "--event", "nope"])
    assert unknown.exit_code == 2 and "call_analyzed" in unknown.output
