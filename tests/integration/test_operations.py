"""Operating the relay: /metrics, /health thresholds and who sees why, retention."""

import re
import time

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.outbox import Completion, NewDelivery, State, open_backend
from relay.settings import Settings
from relay.testing.behaviours import Respond, Slow
from tests.helpers import eventually, retell_headers, sample, vapi_headers

ADMIN = "admin-token-0123456789abcdef"
BEARER = {"authorization": f"Bearer {ADMIN}"}


def app(env, **extra):
    return TestClient(create_app(Settings.from_env({**env, **extra})))


def metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for point in family.samples:
            if point.name == name and point.labels == labels:
                return point.value
    return 0.0


def test_metrics_need_the_admin_token(relay_env):
    with app(relay_env) as client:
        assert client.get("/metrics").status_code == 404
    with app(relay_env, RELAY_ADMIN_TOKEN=ADMIN) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error_type"] == "authentication"
        assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers=BEARER).status_code == 200


def test_metrics_count_webhooks_attempts_and_queue(relay_env, fake_roark):
    fake_roark.script(Respond(500))
    with app(relay_env, RELAY_ADMIN_TOKEN=ADMIN) as client:
        report = sample("vapi/end-of-call-report")
        client.post("/webhooks/vapi", content=report, headers=vapi_headers())
        client.post("/webhooks/vapi", content=report, headers=vapi_headers())
        client.post("/webhooks/vapi", content=sample("vapi/status-update"), headers=vapi_headers())
        client.post("/webhooks/vapi", content=report, headers=vapi_headers("wrong"))
        retell = sample("retell/call_ended")
        client.post("/webhooks/retell", content=retell, headers=retell_headers(retell))
        fake_roark.wait_for(lambda rs: len([r for r in rs if r.status == 201]) >= 2, 15)

        def scraped():
            text = client.get("/metrics", headers=BEARER).text
            return metric(text, "relay_queue_depth", destination="roark", state="delivered") == 2 and text

        text = eventually(scraped, 15)
    assert metric(text, "relay_webhooks_received_total", provider="vapi", outcome="accepted") == 1
    assert metric(text, "relay_webhooks_received_total", provider="vapi", outcome="duplicate") == 1
    assert metric(text, "relay_webhooks_received_total", provider="vapi", outcome="ignored") == 1
    assert metric(text, "relay_webhooks_received_total", provider="vapi", outcome="rejected") == 1
    assert metric(text, "relay_webhooks_received_total", provider="retell", outcome="accepted") == 1
    attempts = sum(metric(text, "relay_delivery_attempts_total", provider=p, destination="roark",
                          outcome="delivered", status_class="2xx")
                   for p in ("vapi", "retell"))
    assert attempts == 2
    retried = sum(metric(text, "relay_delivery_attempts_total", provider=p, destination="roark",
                         outcome="retryat", status_class="5xx")
                  for p in ("vapi", "retell"))
    assert retried == 1
    assert metric(text, "relay_delivery_attempt_duration_seconds_count", provider="vapi", destination="roark") >= 1
    assert metric(text, "relay_queue_depth", destination="roark", state="pending") == 0
    assert metric(text, "relay_delivery_paused", destination="roark") == 0
    assert "ROARK" not in text and ADMIN not in text


def store_old_pending(env, age_seconds: float) -> None:
    backend = open_backend(env["RELAY_DATABASE_URL"])
    backend.migrate()
    now = time.time()
    backend.insert_many([NewDelivery("vapi", "end-of-call-report", "old-call", "e:old",
                                     sample("vapi/end-of-call-report"), now - age_seconds)], now)
    backend.close()


def test_health_degrades_when_the_backlog_is_old(relay_env, fake_roark):
    fake_roark.set_default(Respond(503))
    store_old_pending(relay_env, age_seconds=600)
    with app(relay_env, RELAY_PENDING_AGE_DEGRADED_SECONDS="300", RELAY_RETRY_BASE_SECONDS="60",
             RELAY_RETRY_MAX_DELAY_SECONDS="60", RELAY_ADMIN_TOKEN=ADMIN) as client:
        data = client.get("/health", headers=BEARER).json()["data"]
    assert data["status"] == "degraded" and data["dependencies"]["database"] == "healthy"
    assert data["oldest_pending_age_seconds"] >= 600
    assert any("oldest undelivered webhook" in p for p in data["problems"])


def test_health_is_healthy_with_a_fresh_backlog(relay_env, fake_roark):
    # Roark slow, not failing: a failing attempt would be reported as trouble.
    fake_roark.set_default(Slow(30))
    store_old_pending(relay_env, age_seconds=10)
    with app(relay_env, RELAY_PENDING_AGE_DEGRADED_SECONDS="300", RELAY_SHUTDOWN_GRACE_SECONDS="0") as client:
        response = client.get("/health")
    assert response.status_code == 200 and response.json()["data"]["status"] == "healthy"


PUBLIC_HEALTH = {"status", "version", "timestamp", "uptime_seconds", "dependencies"}


def test_health_tells_why_only_to_the_admin_token(relay_env, fake_roark):
    redirect = "https://roark.example/v1/vapi/call?token=SENTINEL-in-a-redirect"
    fake_roark.set_default(Respond(302, headers={"Location": redirect}))
    with app(relay_env, RELAY_ADMIN_TOKEN=ADMIN) as client:
        client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())
        public = eventually(lambda: (r := client.get("/health")).json()["data"]["status"] == "degraded" and r, 15)
        assert public.status_code == 200 and set(public.json()["data"]) == PUBLIC_HEALTH
        assert "SENTINEL" not in public.text and "paused" not in public.text
        assert client.get("/health", headers={"authorization": "Bearer wrong"}).status_code == 401
        full = client.get("/health", headers=BEARER).json()["data"]
    assert full["status"] == "degraded" and full["delivery_paused"] is True
    assert any("SENTINEL-in-a-redirect" in problem for problem in full["problems"])


def test_health_without_an_admin_token_shows_the_status_only(relay_env, fake_roark):
    fake_roark.set_default(Respond(401))
    with app(relay_env) as client:
        client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())
        public = eventually(lambda: (r := client.get("/health")).json()["data"]["status"] == "degraded" and r, 15)
        assert set(public.json()["data"]) == PUBLIC_HEALTH and "ROARK_API_KEY" not in public.text


def test_retention_prunes_old_delivered_at_start_and_keeps_failed(relay_env):
    backend = open_backend(relay_env["RELAY_DATABASE_URL"])
    backend.migrate()
    now = time.time()
    old = now - 40 * 86400
    backend.insert_many([NewDelivery("vapi", "e", c, f"e:{c}", b'{"message": {}}', old) for c in ("done", "dead")]
                        + [NewDelivery("vapi", "e", "recent", "e:recent", b'{"message": {}}', now)], now)
    done, dead, recent = backend.claim("t", now, 60, 3)
    for row, state in ((done, State.DELIVERED), (dead, State.FAILED), (recent, State.DELIVERED)):
        backend.complete(row.id, "t", Completion(state, now))
    with app(relay_env, RELAY_RETENTION_DAYS="30"):
        eventually(lambda: backend.get(done.id) is None, 10)
    assert backend.get(dead.id).state is State.FAILED and backend.get(recent.id).state is State.DELIVERED
    backend.close()


def test_an_outage_of_roark_is_named_at_once_on_health_and_the_status_page(relay_env, fake_roark):
    fake_roark.set_default(Respond(503))
    # After its first failure the report waits 30 s for its next attempt: it sits in the
    # retrying view meanwhile instead of passing through it.
    with app(relay_env, RELAY_ADMIN_TOKEN=ADMIN, RELAY_RETRY_BASE_SECONDS="30",
             RELAY_RETRY_MAX_DELAY_SECONDS="60") as client:
        assert client.get("/health", headers=BEARER).json()["data"]["status"] == "healthy"
        client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())

        def told():
            data = client.get("/health", headers=BEARER).json()["data"]
            return data["status"] == "degraded" and data["problems"]
        [problem] = eventually(told, timeout=10, message="an outage was not reported")
        assert problem.startswith("Roark answering 503 to every attempt for ")
        assert client.get("/health").json()["data"]["status"] == "degraded"  # the reason needs the token
        summary = client.get("/admin/api/summary", headers=BEARER).json()["data"]
        # The same report, but for how long it has lasted by now.
        lasting = re.compile(r" for [0-9.]+ (ms|s|min|h|d):")
        assert lasting.sub(" for X:", summary["trouble"]) == lasting.sub(" for X:", problem)
        page = client.get("/status", headers=BEARER).text
        assert 'id="trouble"' in page and "Delivery running." not in page
        # The retrying view: pending deliveries that failed at least once.
        retrying = client.get("/admin/api/deliveries?state=retrying", headers=BEARER).json()["data"]
        assert [(d["state"], d["attempts"] > 0, d["last_status"]) for d in retrying] == [("pending", True, 503)]
        assert "Retrying deliveries" in client.get("/status?state=retrying", headers=BEARER).text
        # Roark back: the next attempt that gets through clears it.
        fake_roark.set_default(Respond(201))
        client.post("/webhooks/retell", content=sample("retell/call_ended"),
                    headers=retell_headers(sample("retell/call_ended")))
        eventually(lambda: client.get("/health", headers=BEARER).json()["data"]["status"] == "healthy",
                   timeout=15, message="recovery was not noticed")
        assert client.get("/admin/api/summary", headers=BEARER).json()["data"]["trouble"] is None
