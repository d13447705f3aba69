"""The webhook endpoints, in process, on a temp SQLite file, forwarding to a loopback fake."""

import json
import sqlite3

import pytest
from starlette.testclient import TestClient

from relay.http.app import create_app
from relay.settings import Settings
from relay.web.requests import STORE_RETRY_AFTER_SECONDS
from tests.helpers import VAPI_SECRET, retell_headers, sample, vapi_headers, with_call_id

ERROR_KEYS = {"error_type", "error_code", "message", "request_id"}


@pytest.fixture
def client(relay_settings):
    with TestClient(create_app(relay_settings), raise_server_exceptions=False) as client:
        yield client


def rows(settings: Settings) -> list[tuple]:
    path = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT provider, event, call_id, body FROM webhooks ORDER BY id").fetchall()


def assert_error(response, status: int, error_code: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body.keys() >= ERROR_KEYS
    assert body["request_id"] == response.headers["x-request-id"]
    if error_code:
        assert body["error_code"] == error_code
    return body


def test_signed_retell_call_ended_is_stored_verbatim(client, relay_settings):
    body = sample("retell/call_ended")
    response = client.post("/webhooks/retell", content=body, headers=retell_headers(body))
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "accepted"
    assert response.headers["x-request-id"].startswith("req_")
    [(provider, event, call_id, stored)] = rows(relay_settings)
    assert (provider, event, call_id) == ("retell", "call_ended", "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6")
    assert stored == body


def test_vapi_end_of_call_report_with_secret_header_or_bearer(client, relay_settings):
    first = with_call_id("vapi/end-of-call-report", "call-a")
    second = with_call_id("vapi/end-of-call-report", "call-b")
    assert client.post("/webhooks/vapi", content=first, headers=vapi_headers()).status_code == 200
    bearer = {"content-type": "application/json", "authorization": f"Bearer {VAPI_SECRET}"}
    assert client.post("/webhooks/vapi", content=second, headers=bearer).status_code == 200
    assert [r[2] for r in rows(relay_settings)] == ["call-a", "call-b"]


def test_duplicate_webhook_is_acknowledged_but_stored_once(client, relay_settings):
    body = sample("vapi/end-of-call-report")
    first = client.post("/webhooks/vapi", content=body, headers=vapi_headers())
    again = client.post("/webhooks/vapi", content=body, headers=vapi_headers())
    assert first.json()["data"]["status"] == "accepted"
    assert again.status_code == 200
    assert again.json()["data"] == {**first.json()["data"], "status": "duplicate"}
    assert len(rows(relay_settings)) == 1


@pytest.mark.parametrize(
    "path, name",
    [("/webhooks/vapi", "vapi/status-update"), ("/webhooks/vapi", "vapi/tool-calls"),
     ("/webhooks/vapi", "vapi/assistant-request"), ("/webhooks/retell", "retell/call_started"),
     ("/webhooks/retell", "retell/call_analyzed")],
)
def test_other_events_are_ignored_quickly(client, relay_settings, path, name):
    body = sample(name)
    headers = vapi_headers() if "vapi" in path else retell_headers(body)
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ignored"
    assert rows(relay_settings) == []


def test_payload_without_call_id_is_stored_and_deduped_by_content(client, relay_settings):
    body = json.dumps({"event": "call_ended", "call": {"agent_id": "a"}}).encode()
    other = json.dumps({"event": "call_ended", "call": {"agent_id": "b"}}).encode()
    for payload in (body, body, other):
        assert client.post("/webhooks/retell", content=payload, headers=retell_headers(payload)).status_code == 200
    assert [(r[2], r[3]) for r in rows(relay_settings)] == [(None, body), (None, other)]


@pytest.mark.parametrize("call_id", [12345, ["x"], {"id": 1}, "x" * 1000, True])
def test_odd_call_ids_fall_back_to_content_dedupe(client, relay_settings, call_id):
    body = json.dumps({"message": {"type": "end-of-call-report", "call": {"id": call_id}}}).encode()
    assert client.post("/webhooks/vapi", content=body, headers=vapi_headers()).status_code == 200
    [(_, _, stored_id, _)] = rows(relay_settings)
    assert stored_id == (str(call_id) if type(call_id) is int else None)


def test_bad_signature_is_401_and_not_stored(client, relay_settings):
    body = sample("retell/call_ended")
    headers = retell_headers(body, key="not-the-key")
    assert_error(client.post("/webhooks/retell", content=body, headers=headers), 401, "invalid_signature")
    assert_error(client.post("/webhooks/retell", content=body, headers={"content-type": "application/json"}),
                 401, "missing_signature")
    assert_error(client.post("/webhooks/vapi", content=body, headers=vapi_headers("wrong")), 401)
    assert rows(relay_settings) == []


def test_stale_retell_signature_is_refused(client):
    body = sample("retell/call_ended")
    import time
    headers = retell_headers(body, now=time.time() - 301)
    assert_error(client.post("/webhooks/retell", content=body, headers=headers), 401, "stale_timestamp")


def test_unconfigured_provider_fails_closed(relay_env):
    env = {k: v for k, v in relay_env.items() if k not in ("RETELL_API_KEY", "VAPI_SECRET")}
    with TestClient(create_app(Settings.from_env(env))) as client:
        body = sample("retell/call_ended")
        body_json = assert_error(client.post("/webhooks/retell", content=body, headers=retell_headers(body)),
                                 401, "provider_not_configured")
        assert "RETELL_API_KEY" in body_json["message"]
        vapi = client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())
        assert "VAPI_SECRET" in assert_error(vapi, 401, "provider_not_configured")["message"]


def test_insecure_opt_out_accepts_unsigned(relay_env):
    env = {**relay_env, "RELAY_INSECURE_SKIP_VERIFICATION": "retell"}
    env.pop("RETELL_API_KEY")
    with TestClient(create_app(Settings.from_env(env))) as client:
        body = sample("retell/call_ended")
        response = client.post("/webhooks/retell", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200


def test_invalid_json_is_400(client):
    for body in (b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"[" * 100_000 + b"]" * 100_000,
                 b'{"message": {"cost": NaN}}', b'{"message": {"cost": 1e999}}',
                 b'{"message": {"n": ' + b"9" * 5000 + b"}}"):
        assert_error(client.post("/webhooks/vapi", content=body, headers=vapi_headers()), 400)


def test_vapi_body_without_message_is_400(client):
    body = json.dumps({"type": "end-of-call-report"}).encode()
    response = client.post("/webhooks/vapi", content=body, headers=vapi_headers())
    assert assert_error(response, 400)["parameter"] == "message"


@pytest.mark.parametrize("content_type",
                         [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(client, content_type):
    headers = {"x-vapi-secret": VAPI_SECRET}
    if content_type:
        headers["content-type"] = content_type
    response = client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=headers)
    assert_error(response, 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(client):
    headers = {**vapi_headers(), "content-type": "application/json; charset=utf-8"}
    assert client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=headers).status_code == 200


def test_oversized_body_is_413_by_header_and_by_stream(relay_env):
    env = {**relay_env, "RELAY_MAX_BODY_BYTES": "2048"}
    with TestClient(create_app(Settings.from_env(env))) as client:
        big = b'{"message": {"pad": "' + b"x" * 4096 + b'"}}'
        assert_error(client.post("/webhooks/vapi", content=big, headers=vapi_headers()), 413, "payload_too_large")

        def chunks():  # no Content-Length: the relay must count as it reads
            for _ in range(10):
                yield b"x" * 1024

        assert_error(client.post("/webhooks/vapi", content=chunks(), headers=vapi_headers()), 413)


def test_unknown_routes_and_methods_are_error_responses(client):
    assert_error(client.post("/webhooks/twilio", content=b"{}", headers=vapi_headers()), 404)
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/webhooks/vapi"), 405)


def test_webhook_paths_route_like_the_router(client):
    """POSTs to /webhooks/* skip Starlette's router (relay.http.app.Relay): the paths it takes
    and leaves must answer as the declared routes would."""
    assert_error(client.post("/webhooks/vapi/", content=b"{}", headers=vapi_headers()), 404)
    assert_error(client.post("/webhooks/vapi/a/b", content=b"{}", headers=vapi_headers()), 404)
    assert_error(client.post("/webhooks", content=b"{}", headers=vapi_headers()), 404)
    refused = client.put("/webhooks/vapi/web", content=b"{}")
    assert_error(refused, 405)
    assert refused.headers["allow"] == "POST"
    # Reaching the endpoint itself: its source is looked up (and, here, not configured).
    unknown = assert_error(client.post("/webhooks/vapi/web", content=b"{}", headers=vapi_headers()), 404)
    assert "web" in unknown["message"]
    body = with_call_id("vapi/end-of-call-report", "call-with-query")
    assert client.post("/webhooks/vapi?team=a", content=body, headers=vapi_headers()).status_code == 200


def test_unexpected_error_in_a_webhook_is_a_500_with_one_request_id(client, monkeypatch):
    from relay.providers.vapi import VAPI

    def broken(raw_body):
        raise RuntimeError("a bug")

    monkeypatch.setattr(VAPI, "envelope", broken)
    response = client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())
    assert_error(response, 500, "internal_error")
    assert len(response.headers.get_list("x-request-id")) == 1


def test_request_id_is_echoed_only_when_safe(client):
    ok = client.get("/health", headers={"x-request-id": "abc-123"})
    assert ok.headers["x-request-id"] == "abc-123"
    hostile = client.get("/health", headers={"x-request-id": "abc\r\nset-cookie: x"[:20].replace("\r\n", " ")})
    assert hostile.headers["x-request-id"].startswith("req_")


def test_health_reports_database(client):
    response = client.get("/health")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["status"] == "healthy"
    assert data["dependencies"]["database"] == "healthy"
    assert {"version", "timestamp", "uptime_seconds"} <= data.keys()


def test_store_failure_answers_503_with_retry_after(client, relay_settings):
    path = relay_settings.database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None, timeout=10)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        body = sample("vapi/end-of-call-report")
        response = client.post("/webhooks/vapi", content=body, headers=vapi_headers())
        assert_error(response, 503, "store_unavailable")
        assert response.headers["retry-after"] == str(STORE_RETRY_AFTER_SECONDS)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # recovered without a restart
    response = client.post("/webhooks/vapi", content=sample("vapi/end-of-call-report"), headers=vapi_headers())
    assert response.status_code == 200


def test_control_characters_in_ids_and_events(client, relay_settings):
    body = json.dumps({"message": {"type": "end-of-call-report", "call": {"id": "abc\u0000def"}}}).encode()
    assert client.post("/webhooks/vapi", content=body, headers=vapi_headers()).status_code == 200
    assert rows(relay_settings)[0][2] is None  # not an id: deduped by content instead
    bad_event = json.dumps({"message": {"type": "end-of-call\u0000report"}}).encode()
    assert_error(client.post("/webhooks/vapi", content=bad_event, headers=vapi_headers()), 400)


def test_query_properties_can_be_turned_off_leaving_named_sources(relay_env):
    env = {**relay_env, "RELAY_QUERY_PROPERTIES": "false", "RELAY_SOURCES": '{"acme": {"business_name": "Acme"}}'}
    settings = Settings.from_env(env)
    body = sample("retell/call_ended")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        refused = client.post("/webhooks/retell/acme?business_name=Globex", content=body,
                              headers=retell_headers(body))
        assert "RELAY_QUERY_PROPERTIES" in assert_error(refused, 400, "query_properties_disabled")["message"]
        assert rows(settings) == []
        assert client.post("/webhooks/retell/acme", content=body, headers=retell_headers(body)).status_code == 200
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        [(stored,)] = conn.execute("SELECT properties FROM webhooks").fetchall()
    assert json.loads(stored) == {"business_name": "Acme"}
