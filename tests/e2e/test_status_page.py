"""The status page in real headless Chromium, against a real `relay serve` process.

An operator logs in, sees a delivery Roark refused, opens it (secrets masked, a
`<script>` in the payload shown as text and never run), replays it once Roark is
fixed and watches it become delivered. Requests without the token or the CSRF token
are refused, from inside the same browser. A destination stopped by a 410 is resumed from
its banner.
"""

import json
import math
import os
import random
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Dialog, sync_playwright

from relay.admin.auth import SESSION_COOKIE
from relay.destinations import new_secret
from relay.outbox import Attempt, Completion, NewDelivery, State, open_backend
from relay.testing.behaviours import Accept, Respond
from relay.testing.fake_endpoint import FakeEndpoint
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e
TOKEN = "e2e-admin-token-0123456789abcdef"
WAIT = 20
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS_CALL_ID = 'call-<script>window.pwned=1;alert("call")</script>'
XSS_TRANSCRIPT = '</pre><script>window.pwned=2;alert("transcript")</script><b>bold?</b>'


def send(relay, provider: str, call_id: str, edit=None) -> int:
    name = "vapi/end-of-call-report" if provider == "vapi" else "retell/call_ended"
    document = json.loads(with_call_id(name, call_id))
    if edit is not None:
        edit(document)
    body = json.dumps(document).encode()
    headers = vapi_headers() if provider == "vapi" else retell_headers(body)
    response = relay.post(f"/webhooks/{provider}", body, headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]["delivery_id"]


def state_of(relay, delivery_id: int) -> str:
    response = httpx.get(f"{relay.url}/admin/api/deliveries/{delivery_id}",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    return response.json()["data"]["state"]


def test_operator_logs_in_sees_a_failure_opens_it_and_replays_it(
    start_relay, relay_env, fake_roark, chromium_path, tmp_path
):
    fake_roark.set_default(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                         "message": "Invalid VAPI payload: <b>missing</b> call"}))
    relay = start_relay({**relay_env, "RELAY_ADMIN_TOKEN": TOKEN})
    target = send(relay, "vapi", XSS_CALL_ID,
                  lambda d: d["message"]["artifact"].update(transcript=XSS_TRANSCRIPT))
    others = [send(relay, "retell", "retell-still-failing"), send(relay, "vapi", "vapi-still-failing")]
    for delivery_id in (target, *others):
        eventually(lambda delivery_id=delivery_id: state_of(relay, delivery_id) == "failed", WAIT)

    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(WAIT * 1000)
            page = context.new_page()

            def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()
            page.on("dialog", on_dialog)

            # Not logged in: the page sends us to the login form; a wrong token is refused.
            page.goto(f"{relay.url}/status")
            assert page.url.startswith(f"{relay.url}/login?next=")
            page.fill("input[name=token]", "not-the-token-at-all")
            page.click("button[type=submit]")
            assert "not accepted" in page.inner_text("[role=alert]")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{relay.url}/status")

            # The session cookie is Secure, HttpOnly and SameSite=Strict, and Chromium kept it
            # on http://127.0.0.1 (a secure context).
            [cookie] = [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
            assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert TOKEN not in cookie["value"]

            # The failed delivery is listed, its call id shown as text.
            row = page.locator(f"#delivery-{target}")
            assert "failed" in row.inner_text()
            assert XSS_CALL_ID in row.inner_text()
            assert "Invalid VAPI payload: <b>missing</b> call" in row.inner_text()
            assert page.inner_text("#count-failed") == "3"

            # Without the CSRF token (or without the session) the same browser is refused.
            forged = context.request.post(f"{relay.url}/status/replay", max_redirects=0,
                                          form={"action": "selected", "ids": str(target)})
            assert forged.status == 403
            assert context.request.get(f"{relay.url}/admin/api/summary").status == 401  # API: Bearer only
            anonymous = browser.new_context()
            assert anonymous.request.post(f"{relay.url}/status/replay", max_redirects=0,
                                          form={"action": "all_failed"}).status == 401
            anonymous.close()
            assert state_of(relay, target) == "failed"

            # Open it: attempts, masked secrets, the <script> as plain text.
            row.locator("a").first.click()
            page.wait_for_url(f"{relay.url}/status/deliveries/{target}")
            payload = page.inner_text("#payload")
            assert '"twilioAuthToken": "********"' in payload
            assert "REDACT-ME" not in page.content()
            assert json.dumps(XSS_TRANSCRIPT) in payload  # as JSON text, quotes escaped
            assert page.locator("script").count() == 0 and page.locator("pre b").count() == 0
            assert page.evaluate("typeof window.pwned") == "undefined"
            assert "gave up" in page.inner_text("#attempts")

            # Roark is fixed; replay it and watch it become delivered.
            fake_roark.set_default(Accept())
            page.click("text=Replay this delivery")
            page.wait_for_url(f"{relay.url}/status/deliveries/{target}?replayed=1")
            assert "Replayed" in page.inner_text("#flash")

            def delivered() -> bool:
                page.reload()
                return page.inner_text("#state") == "delivered"
            eventually(delivered, WAIT, interval=0.2, message="the replayed delivery never became delivered")
            assert page.locator("text=Replay this delivery").count() == 0
            # Both attempts are counted, as the table lists them; the one since the replay
            # is the one the retry limit counts.
            assert page.locator("#attempts tbody tr").count() == 2
            assert page.inner_text("#attempt-count").startswith("2 (1 counted toward the retry limit")

            page.goto(f"{relay.url}/status?state=all")
            assert "delivered" in page.inner_text(f"#delivery-{target}")
            assert page.inner_text("#count-failed") == "2" and page.inner_text("#count-delivered") == "1"
            page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
            assert dialogs == []

            # Logging out ends the session.
            page.click("text=Log out")
            page.wait_for_url(f"{relay.url}/login")
            page.goto(f"{relay.url}/status")
            assert page.url.startswith(f"{relay.url}/login")
        finally:
            browser.close()
    assert [r for r in fake_roark.accepted() if r.json["vapi_end_of_call_report_payload"]["call"]["id"]
            == XSS_CALL_ID]


LONG_CALL_ID = "call-" + "7f3a9c" * 40


def seed_a_week(database_url: str, now: float) -> int:
    """A week of traffic as the forwarder leaves it, busier by day: most webhooks delivered
    at once, some after a retry, a few given up. Returns how many webhooks."""
    rng = random.Random(15)
    received = [now - hour * 3600 - rng.uniform(0, 3600) for hour in range(167)
                for _ in range(round(40 + 30 * math.sin(hour / 24 * 2 * math.pi)))]
    store = open_backend(database_url)
    store.migrate()
    items = [NewDelivery("vapi", "end-of-call-report", f"seeded-{n}", f"seeded-{n}", b"{}", at)
             for n, at in enumerate(sorted(received))]
    store.insert_many(items, now)
    fates = {}
    for round_ in (1, 2):
        results = []
        for d in store.claim("seed", now, 60, len(items)):
            fate = fates.setdefault(d.id, rng.choices(["delivered", "retryat", "giveup"], [90, 8, 2])[0])
            outcome = "delivered" if fate == "retryat" and round_ == 2 else fate
            started = d.received_at + rng.uniform(0.1, 0.6) + (rng.uniform(5, 40) if round_ == 2 else 0)
            done = started + rng.uniform(0.1, 0.9)
            state = {"delivered": State.DELIVERED, "retryat": State.PENDING, "giveup": State.FAILED}[outcome]
            status = {"delivered": 201, "retryat": 503, "giveup": 400}[outcome]
            attempt = Attempt(round_, started, (done - started) * 1000, status,
                              None if status == 201 else f"HTTP {status}", outcome)
            results.append((d.id, "seed", Completion(state, now=done, next_attempt_at=now, status_code=status,
                                                     attempt=attempt)))
        store.complete_many(results)
    store.close()
    return len(items)


def inside(locator, width: int) -> dict:
    """The element's box, which must lie within the window's width: seen without scrolling sideways."""
    box = locator.bounding_box()
    assert box is not None and box["width"] > 0, f"{locator} is not shown"
    assert 0 <= box["x"] and box["x"] + box["width"] <= width, f"{locator} is at {box}, outside 0..{width} px"
    return box


@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844)])
def test_the_page_fits_a_laptop_and_a_phone_without_scrolling_sideways(
    start_relay, relay_env, fake_roark, chromium_path, width, height
):
    """With a week of traffic behind it and a second destination. RELAY_SCREENSHOTS=docs
    keeps the page at each width as docs/status-WIDTH.png, the README's pictures."""
    fake_roark.set_default(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                         "message": "Invalid VAPI payload: " + "assistantOverrides " * 30}))
    seeded = seed_a_week(relay_env["RELAY_DATABASE_URL"], time.time())
    secret = new_secret()
    with FakeEndpoint(secret) as crm:
        # The failures below open a dead-letter alert, whose banner and forms the page shows on top.
        relay = start_relay({**relay_env, "RELAY_ADMIN_TOKEN": TOKEN, "RELAY_DESTINATIONS": json.dumps(
            [{"name": "crm", "url": f"{crm.url}/hooks", "secret": secret}]),
            "RELAY_ALERT_DEAD_LETTER_WINDOW_SECONDS": "0.5", "RELAY_ALERT_CHECK_SECONDS": "0.2"})
        ids = [send(relay, "vapi", LONG_CALL_ID), send(relay, "retell", "retell-narrow-1"),
               send(relay, "vapi", "vapi-narrow-2")]
        for delivery_id in ids:
            eventually(lambda delivery_id=delivery_id: state_of(relay, delivery_id) == "failed", WAIT)
        eventually(lambda: len(crm.accepted()) == len(ids), WAIT)
        eventually(lambda: httpx.get(f"{relay.url}/admin/api/alerts", headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=5).json()["data"]["open"], WAIT, message="no alert opened")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": width, "height": height},
                                    extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
            for path in ("/status", "/status?state=all", f"/status/deliveries/{ids[0]}"):
                page.goto(relay.url + path)
                scroll_width = page.evaluate("document.documentElement.scrollWidth")
                assert scroll_width <= width, f"{path} is {scroll_width} px wide in a {width} px window"

            # What is wrong, in view: how many failed, a destination's state, a failure's
            # status and error. On a laptop each table's row is one line of cells.
            page.goto(relay.url + f"/status/deliveries/{ids[0]}")
            attempt = page.locator("#attempts tbody tr").first
            for cell in ('td[data-label="Status"]', 'td[data-label="Error"]'):
                inside(attempt.locator(cell), width)
            page.goto(relay.url + "/status")
            inside(page.locator('#provider-vapi td[data-label="failed"]'), width)
            inside(page.locator("#destination-crm .state"), width)
            row = page.locator(f"#delivery-{ids[0]}")
            badge, status, error = (inside(row.locator(cell), width) for cell in (
                ".state", 'td[data-label="Last status"]', 'td[data-label="Last error"]'))
            assert row.locator(".state").inner_text() == "failed" and "400" in row.inner_text()
            assert page.locator("#deliveries thead").is_visible() == (width > 700)
            if width > 700:
                assert badge["x"] < status["x"] < error["x"] and abs(status["y"] - error["y"]) < 2
            else:  # a card: its state on top, then what went wrong
                assert badge["y"] < status["y"] < error["y"]

            # The long id is shortened on one line, whole on hover.
            link = page.locator(f'a.callid[title="{LONG_CALL_ID}"]')
            box = link.bounding_box()
            assert box is not None and box["height"] < 30 and box["width"] < width

            # Four charts, each drawn for this width and inside the window; no script came with them.
            shown = "narrow" if width < 700 else "wide"
            charts = page.locator(f"#traffic .{shown} svg")
            assert charts.count() == 4 and page.locator("#traffic svg:visible").count() == 4
            for n in range(4):
                box = charts.nth(n).bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["width"] > 0.75 * min(width, 600)
            assert page.locator("script").count() == 0
            week = page.locator("#traffic .panel").nth(1).locator("figcaption").first.inner_text()
            # Each of the three webhooks is stored once for Roark and once for crm.
            assert f"received {seeded + 2 * len(ids)}" in week and "failed" in week and "retrying" in week
            if os.environ.get("RELAY_SCREENSHOTS"):  # the top of the page: the table's rows go on and on
                page.screenshot(path=str(Path(os.environ["RELAY_SCREENSHOTS"]) / f"status-{width}.png"),
                                full_page=True,
                                clip={"x": 0, "y": 0, "width": width, "height": 1100 if width > 700 else 2000})
            browser.close()


def test_operator_sees_a_stopped_destination_and_resumes_it_from_the_page(
    start_relay, relay_env, fake_roark, chromium_path
):
    secret = new_secret()
    with FakeEndpoint(secret) as crm:
        crm.script(Respond(410))  # taken down, then back
        relay = start_relay({**relay_env, "RELAY_ADMIN_TOKEN": TOKEN, "RELAY_DESTINATIONS": json.dumps(
            [{"name": "crm", "url": f"{crm.url}/hooks?key=s3cr3t-in-url", "secret": secret}])})
        body = with_call_id("vapi/end-of-call-report", "call-for-crm")
        deliveries = relay.post("/webhooks/vapi", body, vapi_headers()).json()["data"]["deliveries"]
        eventually(lambda: state_of(relay, deliveries["crm"]) == "failed", WAIT)
        later = relay.post("/webhooks/vapi", with_call_id("vapi/end-of-call-report", "call-while-stopped"),
                           vapi_headers()).json()["data"]["deliveries"]
        eventually(lambda: state_of(relay, later["roark"]) == "delivered", WAIT)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.set_default_timeout(WAIT * 1000)
                page.goto(f"{relay.url}/login?next=/status")
                page.fill("input[name=token]", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_url(f"{relay.url}/status")
                banner = page.locator("#stopped-crm")
                assert "410 Gone" in banner.inner_text()
                assert "stopped" in page.inner_text("#destinations")
                assert "s3cr3t-in-url" not in page.content()
                # The summary above it says what runs and what does not, in amber, not green.
                summary = page.locator("#summary")
                assert summary.inner_text() == "Delivery to Roark running; crm stopped."
                assert summary.get_attribute("class") == "banner warn"

                # Two deliveries in one minute, between empty ones: each latency chart still
                # shows them (a dot where there is no neighbour to draw a line to).
                for chart in (page.locator("#traffic .wide svg").nth(n) for n in (1, 3)):
                    drawn = chart.locator(".series circle, .series path.line")
                    assert any(drawn.nth(i).is_visible() for i in range(drawn.count())), "the latency chart is blank"

                banner.locator("button").click()
                page.wait_for_url(f"{relay.url}/status?resumed=crm")
                assert "Resumed crm" in page.inner_text("#flash")
                assert page.locator("#stopped-crm").count() == 0
                assert summary.inner_text() == "Delivery running."
                assert summary.get_attribute("class") == "banner ok"
            finally:
                browser.close()
        # Resumed: the copy that waited goes out; the one that failed waits for a replay.
        eventually(lambda: state_of(relay, later["crm"]) == "delivered", WAIT)
        assert state_of(relay, deliveries["crm"]) == "failed"
