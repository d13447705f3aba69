"""Secrets: nothing the relay logs or serves contains a configured secret, a signature,
a bearer token or the sample report's `twilioAuthToken`.

Every attack suite scans what it saw (the `secret_scan` fixture, tests/secret_scan.py).
This one drives a real `relay serve` at debug log level through every path where a
secret could slip out: webhooks authenticated each way VAPI and Retell do it, every kind
of wrong or misplaced credential, stale signatures, Roark refusing the relay's key
(delivery paused), the admin API, status page, login form, OpenAPI document, /metrics,
/health, the CLI's payload view, and a graceful shutdown. Then it scans the log, every
answer and every body forwarded to Roark.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import httpx
import pytest

from relay.destinations import new_secret
from relay.providers import retell, vapi
from relay.testing.behaviours import Accept, Respond
from tests.e2e.conftest import rows
from tests.helpers import RETELL_KEY, ROARK_KEY, VAPI_SECRET, eventually, retell_headers, vapi_headers, with_call_id
from tests.secret_scan import ADMIN_TOKEN, TWILIO_AUTH_TOKEN, VAPI_HMAC_SECRET

pytestmark = pytest.mark.e2e
WAIT = 20
HMAC = vapi.HmacScheme(secrets=(VAPI_HMAC_SECRET,))


@pytest.mark.timeout(120)
def test_nothing_logged_or_served_contains_a_secret(start_relay, relay_env, fake_roark, tmp_path, secret_scan):
    env = {**relay_env, "VAPI_HMAC_SECRET": VAPI_HMAC_SECRET, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
           "RELAY_LOG_LEVEL": "debug", "RELAY_RETRY_MAX_ATTEMPTS": "2"}
    relay = start_relay(env)
    secret_scan.logged(tmp_path / "relay.log")
    http = httpx.Client(base_url=relay.url, timeout=WAIT, follow_redirects=False)

    def send(method: str, path: str, expect: int | tuple[int, ...], **kwargs) -> httpx.Response:
        secret_scan.forbid_headers(kwargs.get("headers", {}))
        response = http.request(method, path, **kwargs)
        secret_scan.served(response, f"{method} {path} -> {response.status_code}")
        expected = expect if isinstance(expect, tuple) else (expect,)
        assert response.status_code in expected, f"{method} {path}: {response.status_code} {response.text[:300]}"
        return response

    report = with_call_id("vapi/end-of-call-report", "leak-token")  # carries the twilioAuthToken
    assert TWILIO_AUTH_TOKEN.encode() in report
    now = str(int(time.time()))

    # Accepted, each way a provider authenticates.
    send("POST", "/webhooks/vapi", 200, content=report, headers=vapi_headers())
    bearer = with_call_id("vapi/end-of-call-report", "leak-bearer")
    send("POST", "/webhooks/vapi", 200, content=bearer,
         headers={"content-type": "application/json", "authorization": f"Bearer {VAPI_SECRET}"})
    signed = with_call_id("vapi/end-of-call-report", "leak-hmac")
    send("POST", "/webhooks/vapi", 200, content=signed,
         headers={"content-type": "application/json", **vapi.sign_hmac(HMAC, signed, now)})
    ended = with_call_id("retell/call_ended", "leak-retell")
    send("POST", "/webhooks/retell", 200, content=ended, headers=retell_headers(ended))

    # Refused: wrong, misplaced, stale and malformed credentials (some made from real ones).
    other = with_call_id("vapi/end-of-call-report", "leak-refused")
    for headers in (
        vapi_headers(VAPI_SECRET + "x"),
        vapi_headers(VAPI_SECRET[:-1]),
        vapi_headers(RETELL_KEY),
        vapi_headers(ROARK_KEY),
        {"content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"},
        {"content-type": "application/json", "authorization": f"Basic {VAPI_SECRET}"},
        {"content-type": "application/json", **vapi.sign_hmac(vapi.HmacScheme(secrets=(VAPI_SECRET,)), other, now)},
        {"content-type": "application/json", **vapi.sign_hmac(HMAC, other, str(int(time.time()) - 3600))},
        {"content-type": "application/json", "x-signature": VAPI_HMAC_SECRET, "x-timestamp": now},
    ):
        send("POST", "/webhooks/vapi", 401, content=other, headers=headers)
    for headers in (
        retell_headers(ended, key=VAPI_SECRET),
        retell_headers(ended, now=time.time() - 3600),
        {"content-type": "application/json", "x-retell-signature": RETELL_KEY},
        {"content-type": "application/json",
         "x-retell-signature": retell.sign(RETELL_KEY, ended, int(time.time() * 1000)) + "0"},
    ):
        send("POST", "/webhooks/retell", 401, content=ended, headers=headers)
    send("POST", "/webhooks/vapi", 415, content=report, headers={"x-vapi-secret": VAPI_SECRET})
    eventually(lambda: len([r for r in rows(env) if r["state"] == "delivered"]) == 4, WAIT)
    for forwarded in fake_roark.requests:  # the customer's Twilio token is not Roark's to see
        secret_scan.served_text("forwarded to Roark", forwarded.body)

    # Roark refuses the relay's key: delivery pauses, /health says why.
    fake_roark.set_default(Respond(401))
    paused = with_call_id("retell/call_ended", "leak-paused")
    send("POST", "/webhooks/retell", 200, content=paused, headers=retell_headers(paused))
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    eventually(lambda: http.get("/health", headers=admin).json()["data"]["delivery_paused"], WAIT)
    assert send("GET", "/health", 200).json()["data"]["status"] == "degraded"
    assert send("GET", "/health", 200, headers=admin).json()["data"]["problems"]  # the reasons, scanned too
    fake_roark.set_default(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                         "message": "payload rejected"}))
    eventually(lambda: any(r["state"] == "failed" for r in rows(env)), WAIT)  # a dead letter to show
    fake_roark.set_default(Accept())

    # The admin API, status page, login form, OpenAPI, metrics.
    send("GET", "/admin/api/summary", 200, headers=admin)
    listing = send("GET", "/admin/api/deliveries?limit=50", 200, headers=admin).json()["data"]
    token_row = next(d for d in listing if d["call_id"] == "leak-token")
    detail = send("GET", f"/admin/api/deliveries/{token_row['id']}", 200, headers=admin).json()["data"]
    assert detail["payload"]["message"]["phoneNumber"]["twilioAuthToken"] == "********"  # masked, not absent
    failed = next(d for d in listing if d["state"] == "failed")
    send("GET", f"/admin/api/deliveries/{failed['id']}", 200, headers=admin)
    send("POST", "/admin/api/replay", 200, headers={**admin, "content-type": "application/json"},
         content=json.dumps({"all_failed": True}))
    send("GET", "/admin/openapi.json", 200, headers=admin)
    send("GET", "/metrics", 200, headers=admin)
    send("GET", "/status", 200, headers=admin)
    send("GET", f"/status/deliveries/{token_row['id']}", 200, headers=admin)
    for wrong in (ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1], VAPI_SECRET, ROARK_KEY):
        send("GET", "/admin/api/summary", 401, headers={"authorization": f"Bearer {wrong}"})
        send("GET", "/metrics", 401, headers={"authorization": f"Bearer {wrong}"})
    form = send("GET", "/login", 200)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1]
    for wrong in (ADMIN_TOKEN + "x", VAPI_SECRET):
        secret_scan.forbid(wrong)
        # The login cookie is Secure (__Host-); over plain loopback HTTP it goes by hand.
        send("POST", "/login", 401, data={"csrf_token": csrf, "next": "/status", "token": wrong},
             headers={"cookie": "; ".join(f"{k}={v}" for k, v in form.cookies.items())})
    send("POST", "/login", 403, data={"csrf_token": "forged", "token": ADMIN_TOKEN})

    # The CLI's view of the same payload.
    shown = subprocess.run([shutil.which("relay"), "deliveries", "show", str(token_row["id"])],
                           env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    secret_scan.served_text("relay deliveries show", shown.stdout + shown.stderr)

    relay.terminate()  # a graceful shutdown is logged too
    log = (tmp_path / "relay.log").read_text()
    # The scan only means something if the log holds what it should: every webhook, the
    # refusals, the pause (and whatever the relay and its libraries say at debug level).
    for expected in ("webhook_received", "invalid_signature", "stale_timestamp",
                     "delivery_paused", "forwarder_stopped"):
        assert expected in log, f"{expected} not logged"
    assert secret_scan.responses >= 40


def test_the_scan_finds_what_it_looks_for():
    """The scan is not vacuous: each kind of secret is found where it shows."""
    from tests.secret_scan import SecretScan

    digest = "ab" * 32
    scan = SecretScan()
    scan.forbid_headers({"x-retell-signature": f"v=1700000000000,d={digest}",
                         "authorization": "Bearer some-bearer-token-123"})
    scan.served_text("echoed signature", f"error: signature {digest} does not match")
    scan.served_text("echoed bearer", "token some-bearer-token-123 refused")
    scan.logged_text("logged key", f'{{"event": "x", "key": "{VAPI_SECRET}"}}')
    scan.logged_text("payload", f'"twilioAuthToken": "{TWILIO_AUTH_TOKEN}"')
    scan.served_text("clean", "nothing to see: req_0123456789abcdef")
    found = scan.findings()
    assert len(found) == 4 and not any("clean" in f for f in found), found
    assert not any(VAPI_SECRET in f or digest in f for f in found)  # reports never quote them


def test_values_under_cookie_pass_pwd_and_session_id_are_masked_and_health_names_no_destination(
        start_relay, relay_env, fake_roark):
    secrets = {"cookie": "cookie-value-0123456789", "pass": "pass-value-0123456789",
               "pwd": "pwd-value-0123456789", "sessionId": "session-value-0123456789"}
    env = {**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN, "RELAY_DESTINATIONS": json.dumps([
        {"name": "acme-internal-crm", "url": "http://127.0.0.1:9/hooks", "secret": new_secret()}])}
    relay = start_relay(env)
    document = json.loads(with_call_id("vapi/end-of-call-report", "leak-fields"))
    document["message"]["call"]["metadata"] = secrets
    assert relay.post("/webhooks/vapi", json.dumps(document).encode(), vapi_headers()).status_code == 200
    [row] = [r for r in rows(env) if r["call_id"] == "leak-fields" and r["destination"] == "roark"]
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    shown = [
        httpx.get(f"{relay.url}/admin/api/deliveries/{row['id']}", headers=admin).text,
        httpx.get(f"{relay.url}/status/deliveries/{row['id']}", headers=admin).text,
        subprocess.run([shutil.which("relay"), "deliveries", "show", str(row["id"])], capture_output=True,
                       text=True, env={"PATH": os.environ["PATH"], **env}, timeout=60).stdout,
    ]
    for where, text in zip(("API", "page", "CLI"), shown, strict=True):
        assert "leak-fields" in text, f"the {where} did not show the delivery"
        assert not [value for value in secrets.values() if value in text], f"the {where} showed a secret"
    public = httpx.get(f"{relay.url}/health").json()["data"]
    assert "acme-internal-crm" not in json.dumps(public) and "destinations_delivery" in public["dependencies"]
    private = httpx.get(f"{relay.url}/health", headers=admin).json()["data"]
    assert "acme-internal-crm_delivery" in private["dependencies"]
