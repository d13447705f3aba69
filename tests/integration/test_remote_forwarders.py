"""A server that does not forward itself (RELAY_FORWARD=process or off) shows what the
forwarding process reported through the store: on /health, in the admin summary, and
that no forwarding process is running at all."""

import asyncio
import dataclasses
import time

import pytest
from starlette.testclient import TestClient

from relay.core.metrics import Metrics
from relay.forwarding.background import Background
from relay.forwarding.remote import STALE_AFTER_SECONDS
from relay.http.app import create_app
from relay.outbox import AsyncOutbox, ForwarderReport, NewDelivery, open_backend
from relay.settings import Settings
from relay.testing.behaviours import Respond
from tests.helpers import sample, vapi_headers

TOKEN = "admin-token-for-remote-forwarder-tests-0123"


@pytest.fixture
def settings(relay_env, outbox_url) -> Settings:
    return Settings.from_env({**relay_env, "RELAY_DATABASE_URL": outbox_url, "RELAY_ADMIN_TOKEN": TOKEN})


def report(settings: Settings, *reports: ForwarderReport) -> None:
    backend = open_backend(settings.database_url)
    try:
        backend.migrate()
        backend.report_forwarders(reports)
    finally:
        backend.close()


def health(client: TestClient) -> dict:
    return client.get("/health", headers={"authorization": f"Bearer {TOKEN}"}).json()["data"]


def test_reported_pause_and_failures_show_on_health_and_summary(settings):
    now = time.time()
    report(settings, ForwarderReport(
        "roark", reported_at=now, paused_reason="Roark refused ROARK_API_KEY (401)", paused_until=now + 300,
        rate_limited_until=now + 30, failing_since=now - 120, last_failure_at=now - 1,
        failure="HTTP 401", failure_status=401))
    with TestClient(create_app(settings, forwarding="off")) as client:
        data = health(client)
        assert data["dependencies"]["roark_delivery"] == "degraded"
        assert data["delivery_paused"] is True
        assert "delivery paused: Roark refused ROARK_API_KEY (401)" in data["problems"]
        summary = client.get("/admin/api/summary", headers={"authorization": f"Bearer {TOKEN}"}).json()["data"]
        assert summary["pause_reason"] == "Roark refused ROARK_API_KEY (401)"
        assert summary["rate_limited_until"] is not None
        assert summary["trouble"] == "Roark answering 401 to every attempt for 2 min: HTTP 401"


def test_a_forwarding_process_that_stopped_reporting_degrades_health(settings):
    report(settings, ForwarderReport("roark", reported_at=time.time() - STALE_AFTER_SECONDS - 60))
    with TestClient(create_app(settings, forwarding="off")) as client:
        data = health(client)
        assert data["dependencies"]["roark_delivery"] == "degraded"
        [problem] = data["problems"]
        assert problem.startswith("no forwarding process is delivering to Roark: it stopped reporting for 7")
        assert problem.endswith(" s (is `relay forward` running?)")


def test_a_fresh_report_is_healthy(settings):
    report(settings, ForwarderReport("roark", reported_at=time.time(), last_success_at=time.time()))
    with TestClient(create_app(settings, forwarding="off")) as client:
        assert health(client)["dependencies"]["roark_delivery"] == "healthy"


def test_background_reports_what_its_forwarders_meet(settings, fake_roark):
    """The other half: a forwarding process's Background writes its forwarders' state."""
    settings = dataclasses.replace(settings, auth_pause_seconds=60.0)
    fake_roark.script(Respond(401))
    with TestClient(create_app(settings, forwarding="off")) as client:
        body = sample("vapi/end-of-call-report")
        assert client.post("/webhooks/vapi", content=body, headers=vapi_headers()).status_code == 200

    async def paused_report() -> ForwarderReport | None:
        outbox = AsyncOutbox(open_backend(settings.database_url))
        background = Background(settings, outbox, Metrics(), report=True)
        await background.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                roark = (await outbox.forwarder_reports()).get("roark")
                if roark is not None and roark.paused_reason:
                    return roark
                await asyncio.sleep(0.05)
            return None
        finally:
            await background.stop()
            await outbox.close()

    roark = asyncio.run(paused_report())
    assert roark is not None, "no report of the pause within 15 s"
    assert "ROARK_API_KEY" in roark.paused_reason
    # A 401 is an answer: Roark is up, and refusing the key (relay.forwarding.trouble).
    assert roark.failing_since is None and roark.last_success_at is not None


def test_a_delivery_held_past_its_timeout_is_reported_stuck(settings):
    claimed_at = time.time() - 100
    backend = open_backend(settings.database_url)
    try:
        backend.migrate()
        backend.insert_many([NewDelivery("vapi", "end-of-call-report", "stuck-1", "e:stuck-1", b"{}", claimed_at)],
                            claimed_at)
        assert backend.claim("a-forwarder-frozen-mid-delivery", claimed_at, 1000, 1)
    finally:
        backend.close()
    report(settings, ForwarderReport("roark", reported_at=time.time()))  # its process still reports
    with TestClient(create_app(settings, forwarding="off")) as client:
        data = health(client)
        assert data["status"] == "degraded" and data["dependencies"]["roark_delivery"] == "degraded"
        assert any(p.startswith("a delivery to Roark has been in flight for 1.7 min, past its 5 s timeout: its "
                                "forwarder is stuck") for p in data["problems"]), data["problems"]
        summary = client.get("/admin/api/summary", headers={"authorization": f"Bearer {TOKEN}"}).json()["data"]
        assert summary["trouble"].startswith("a delivery to Roark has been in flight")
        assert client.get("/health").json()["data"]["status"] == "degraded"
