"""Alerts in process, on both backends, to a fake Slack (holding each message to Block
Kit's shape) and a webhook channel verifying each with `standardwebhooks`: an outage
opens one alert however many instances watch and however often they restart, and its
recovery resolves it once; a 410 opens one; a burst of dead letters is one summary; a
channel that is down is retried and shown; acknowledging stops reminders."""

import asyncio
import json
import time

import pytest
from starlette.testclient import TestClient

from relay.alerts import Monitor
from relay.core.metrics import Metrics
from relay.destinations import new_secret
from relay.forwarding.remote import RemoteForwarders
from relay.http.app import create_app
from relay.outbox import AsyncOutbox, open_backend
from relay.reconciliation.service import Reconcilers
from relay.settings import Settings
from relay.testing.behaviours import Accept, Respond
from relay.testing.fake_endpoint import FakeEndpoint
from relay.testing.fake_slack import FakeSlack
from tests.helpers import eventually, vapi_headers, with_call_id
from tests.integration.test_admin_api import conforms
from tests.integration.test_admin_auth import csrf_of, login

TOKEN = "admin-token-for-alerts-5d1f"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PAGER_SECRET = new_secret()
WAIT = 20


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def pager():
    with FakeEndpoint(PAGER_SECRET) as fake:
        yield fake


@pytest.fixture
def env(relay_env, outbox_url, slack, pager) -> dict[str, str]:
    return {**relay_env, **alerting(slack, pager), "RELAY_DATABASE_URL": outbox_url}


def alerting(slack: FakeSlack, pager: FakeEndpoint) -> dict[str, str]:
    return {
        "RELAY_ADMIN_TOKEN": TOKEN,
        "RELAY_ALERTS": json.dumps([
            {"name": "oncall", "url": f"{slack.url}/services/T0/B0/secret", "format": "slack"},
            {"name": "pager", "url": f"{pager.url}/relay-alerts", "format": "webhook", "secret": PAGER_SECRET}]),
        "RELAY_PUBLIC_URL": "https://relay.example.com",
        "RELAY_RETRY_MAX_ATTEMPTS": "1000",  # an outage is ridden out, not turned into dead letters
        "RELAY_ALERT_AFTER_SECONDS": "0.5",
        "RELAY_ALERT_CHECK_SECONDS": "0.1",
        "RELAY_ALERT_CLEAR_SECONDS": "0.3",
        "RELAY_ALERT_RETRY_BASE_SECONDS": "0.1",
        "RELAY_ALERT_RETRY_MAX_DELAY_SECONDS": "0.3",
        "RELAY_ALERT_DEAD_LETTER_WINDOW_SECONDS": "1",
    }


def relay(env: dict, **extra: str) -> TestClient:
    return TestClient(create_app(Settings.from_env({**env, **extra})), base_url="https://testserver")


def post_call(client: TestClient, call_id: str) -> dict:
    response = client.post("/webhooks/vapi", content=with_call_id("vapi/end-of-call-report", call_id),
                           headers=vapi_headers())
    assert response.status_code == 200, response.text
    return response.json()["data"]


def alerts(client: TestClient) -> dict:
    response = client.get("/admin/api/alerts", headers=BEARER)
    assert response.status_code == 200, response.text
    return conforms(response.json(), "AlertsResponse")["data"]


def types(fake) -> list[str]:
    """What a channel took, in order: Slack's header line, or the webhook's type."""
    found = []
    for request in fake.requests:
        if request.status != 200:
            continue
        body = json.loads(request.body)
        found.append(body["blocks"][0]["text"]["text"] if "blocks" in body else body["type"])
    return found


def checked_after(client: TestClient, moment: float, kind: str) -> dict:
    """The open alert of `kind` once a check that began after `moment` has seen it: what
    any instance was to send by then, it has (each check opens, reminds and resolves)."""
    def seen():
        found = [a for a in alerts(client)["open"] if a["kind"] == kind]
        return found and time.time() > moment and _epoch(found[0]["last_seen_at"]) > moment and found[0]
    return eventually(seen, WAIT, message=f"no check saw the {kind} alert after {moment}")


def _epoch(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


def test_an_outage_opens_one_alert_across_instances_and_restarts_and_its_recovery_resolves_it(
        env, fake_roark, slack, pager):
    fake_roark.set_default(Respond(503))
    with relay(env) as first, relay(env) as second:  # two instances sharing the store
        post_call(first, "call-outage")
        eventually(lambda: types(slack) and types(pager), WAIT, message="no alert was sent")
        opened = checked_after(second, time.time() + 0.3, "delivery")
        assert (opened["subject"], opened["state"]) == ("roark", "open")
        assert opened["summary"].startswith("every attempt to Roark since ")
        assert opened["summary"].endswith("failed; the last: HTTP 503 service_unavailable: Service Unavailable")
    with relay(env) as restarted:  # a restart mid-outage
        checked_after(restarted, time.time() + 0.3, "delivery")
        assert types(slack) == ["🔴 Delivery alert opened"] and types(pager) == ["relay.alert.opened"]
        fake_roark.set_default(Accept())
        resolved = eventually(lambda: alerts(restarted)["history"], WAIT, message="the alert did not resolve")
        eventually(lambda: len(types(slack)) == 2 and len(types(pager)) == 2, WAIT, message="no resolved message")
        checked_after_resolution = time.time() + 0.5
        eventually(lambda: time.time() > checked_after_resolution, WAIT)
    assert types(slack) == ["🔴 Delivery alert opened", "✅ Delivery alert resolved"]
    assert types(pager) == ["relay.alert.opened", "relay.alert.resolved"]
    [alert] = resolved
    assert alert["id"] == opened["id"] and alert["held_up"] >= 1
    body = json.loads(pager.requests[-1].body)
    assert body["alert"]["id"] == opened["id"] and body["alert"]["details"]["duration_seconds"] > 0.5
    assert "Resolved after" in json.loads(slack.requests[-1].body)["text"]
    assert all(r.problems == () for r in slack.requests)  # every message in Block Kit's shape


def test_a_gone_destination_opens_one_alert_and_a_burst_of_dead_letters_one_summary(env, fake_roark, slack):
    with FakeEndpoint(PAGER_SECRET) as crm, FakeEndpoint(PAGER_SECRET) as ledger:
        crm.set_default(Respond(410))
        ledger.set_default(Respond(400))  # every delivery fails for good at once
        destinations = [{"name": "crm", "url": crm.url, "secret": PAGER_SECRET},
                        {"name": "ledger", "url": ledger.url, "secret": PAGER_SECRET}]
        with relay(env, RELAY_DESTINATIONS=json.dumps(destinations)) as client:
            for n in range(20):
                post_call(client, f"call-dead-{n}")
            gone = checked_after(client, time.time() + 1.2, "delivery")
            # Opened once the first dead letter was a window old, resolved a window after the last.
            summary = eventually(lambda: [a for a in alerts(client)["history"] if a["kind"] == "dead_letter"], WAIT,
                                 message="no dead-letter summary")[0]
            eventually(lambda: len(types(slack)) == 3, WAIT, message="a message is missing")
    assert (gone["subject"], summary["subject"]) == ("crm", "ledger")
    assert "410 Gone" in gone["summary"]
    assert summary["details"]["count"] == 20 and summary["held_up"] == 20
    assert summary["summary"].startswith("20 deliveries to destination ledger failed for good")
    assert len(summary["details"]["call_ids"]) == 5
    assert sorted(types(slack)) == ["✅ Dead letters alert resolved", "🔴 Dead letters alert opened",
                                    "🔴 Delivery alert opened"]


def test_a_channel_that_is_down_is_retried_shown_and_holds_up_no_other(env, fake_roark, slack, pager):
    fake_roark.set_default(Respond(401))  # a refused key: a delivery alert at once
    slack.set_default(Respond(503))
    with relay(env) as client:
        post_call(client, "call-refused")
        eventually(lambda: types(pager) == ["relay.alert.opened"], WAIT, message="the webhook channel waited")

        def failing():
            channels = {c["name"]: c for c in alerts(client)["channels"]}
            return channels["oncall"]["state"] == "failing" and channels["oncall"]
        down = eventually(failing, WAIT, message="the down channel is not shown")
        assert down["last_error"].startswith("answered 503") and down["waiting"] == 1
        eventually(lambda: len(slack.requests) >= 2, WAIT, message="the message was not retried")
        login(client, TOKEN)
        page = client.get("/status").text
        assert "Alert channel oncall (slack, http://127.0.0.1" in page and "failing since" in page
        assert "/services/" not in page  # a Slack URL's path is its secret
        slack.set_default(Accept())
        eventually(lambda: types(slack) == ["🔴 Delivery alert opened"], WAIT, message="the retry never went")
        eventually(lambda: {c["name"]: c["state"] for c in alerts(client)["channels"]}
                   == {"oncall": "ok", "pager": "ok"}, WAIT)


def test_acknowledging_stops_the_reminders_and_mute_silences_a_subject(env, fake_roark, slack):
    fake_roark.set_default(Respond(401))
    with relay(env, RELAY_ALERT_REMIND_SECONDS="1") as client:
        post_call(client, "call-remind")
        eventually(lambda: "🟠 Delivery alert still open" in types(slack), WAIT, message="no reminder came")
        [alert] = alerts(client)["open"]
        response = client.post(f"/admin/api/alerts/{alert['id']}/acknowledge", headers=BEARER)
        acknowledged = conforms(response.json(), "AlertResponse")["data"]
        assert acknowledged["acknowledged_at"] is not None
        reminders = types(slack).count("🟠 Delivery alert still open")
        checked_after(client, time.time() + 1.5, "delivery")  # past when the next reminder was due
        assert types(slack).count("🟠 Delivery alert still open") == reminders
        assert client.post("/admin/api/alerts/999999/acknowledge", headers=BEARER).status_code == 404

        login(client, TOKEN)
        page = client.get("/status").text
        assert f'id="alert-{alert["id"]}"' in page and "acknowledged" in page
        refused = client.post("/status/alerts/mute", data={"subject": "roark", "csrf_token": "forged"})
        assert refused.status_code == 403
        muted = client.post("/status/alerts/mute", data={"subject": "roark", "csrf_token": csrf_of(page)},
                            follow_redirects=False)
        assert muted.status_code == 303
        assert alerts(client)["open"][0]["muted_until"] is not None
        fake_roark.set_default(Accept())
        eventually(lambda: alerts(client)["history"], WAIT, message="the alert did not resolve")
        # Muted: shown on the page, owed to no channel (messages are owed as the alert resolves).
        assert [c["waiting"] for c in alerts(client)["channels"]] == [0, 0]
    assert "✅ Delivery alert resolved" not in types(slack)


def test_a_storage_alert_is_sent_from_memory_while_the_outbox_is_down_and_its_end_once_it_is_back(
        relay_env, slack, pager, tmp_path):
    database = tmp_path / "gone" / "relay.db"  # in a directory that is not there yet
    settings = Settings.from_env({**relay_env, **alerting(slack, pager), "RELAY_DATABASE_URL": f"sqlite:///{database}",
                                  "RELAY_ALERT_STORAGE_WINDOW_SECONDS": "0.5"})
    outbox = AsyncOutbox(open_backend(settings.database_url))
    metrics = Metrics()
    monitor = Monitor(settings, outbox, metrics, RemoteForwarders(outbox, settings),
                      Reconcilers(settings, outbox, metrics))

    async def watch() -> None:
        await monitor.check()  # the outbox is down, but nothing was refused: nothing to say
        metrics.webhooks.labels("vapi", "unavailable").inc(3)  # as ingest counts its 503s
        for _ in range(3):
            await monitor.check()
        assert types(slack) == ["🔴 Storage alert opened"]
        database.parent.mkdir()  # the outbox is back
        await outbox.migrate()
        deadline = time.monotonic() + WAIT
        while types(slack)[-1:] != ["✅ Storage alert resolved"] and time.monotonic() < deadline:
            await monitor.check()
            await monitor.send()
            await asyncio.sleep(0.1)
        await monitor.stop()
        await outbox.close()

    asyncio.run(watch())
    assert types(slack) == ["🔴 Storage alert opened", "✅ Storage alert resolved"]
    assert json.loads(slack.requests[0].body)["text"].startswith(
        "🔴 Storage (outbox): 3 webhooks were answered 503 since ")
