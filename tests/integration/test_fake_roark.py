"""The fake Roark upstream behaves like the contract says, over real loopback HTTP."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing.behaviours import Accept, RateLimited, Reset, Respond, Slow
from relay.testing.fake_roark import FakeRoark
from relay.testing.roark_contract import load_contract, validator_for

SPEC_PATH = Path("/work/shared/roark-openapi.json")
API_KEY = "rk_test"
VAPI_REPORT = {
    "type": "end-of-call-report",
    "endedReason": "customer-ended-call",
    "call": {"id": "call-123", "type": "inboundPhoneCall"},
    "startedAt": "2025-05-19T15:13:32.000Z",
    "endedAt": "2025-05-19T15:14:02.500Z",
    "artifact": {"transcript": "AI: Hello\nUser: Hi"},
}
RETELL_ENDED = {
    "event": "call_ended",
    "call": {"call_id": "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6", "call_type": "web_call"},
}
VAPI_BODY = {"vapi_end_of_call_report_payload": VAPI_REPORT, "skip_already_imported": True}
RETELL_BODY = {"retell_call_ended_payload": RETELL_ENDED, "properties": {"campaign": "spring"}}
JSON_CONTENT = {"Content-Type": "application/json"}


@pytest.fixture
def fake() -> Iterator[FakeRoark]:
    with FakeRoark(api_key=API_KEY) as server:
        yield server


def connect(fake: FakeRoark, authorization: str | None = f"Bearer {API_KEY}") -> httpx.Client:
    headers = {"Authorization": authorization} if authorization else {}
    # Plain HTTP on loopback: skipping the CA bundle saves ~100 ms per client.
    return httpx.Client(base_url=fake.url, headers=headers, timeout=5, verify=False)


@pytest.fixture
def client(fake: FakeRoark) -> Iterator[httpx.Client]:
    with connect(fake) as http:
        yield http


def assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    validator_for("ErrorResponse").validate(body)
    assert body["error_type"] == error_type


def test_valid_vapi_body_gets_201_and_a_uuid(fake: FakeRoark, client: httpx.Client) -> None:
    response = client.post("/v1/vapi/call", json=VAPI_BODY)

    assert response.status_code == 201
    assert uuid.UUID(response.json()["data"]["call_id"]).version == 4
    [received] = fake.accepted()
    assert received.json == VAPI_BODY
    assert received.headers["authorization"] == f"Bearer {API_KEY}"
    assert received.problems == ()


def test_valid_retell_body_gets_201_and_a_uuid(client: httpx.Client) -> None:
    response = client.post("/v1/retell/call", json=RETELL_BODY)

    assert response.status_code == 201
    uuid.UUID(response.json()["data"]["call_id"])


def test_wrapped_vapi_message_is_rejected(fake: FakeRoark, client: httpx.Client) -> None:
    wrapped = {"vapi_end_of_call_report_payload": {"message": VAPI_REPORT}}

    response = client.post("/v1/vapi/call", json=wrapped)

    assert_error(response, 400, "validation")
    assert "wrapped" in response.json()["message"]
    assert fake.requests[0].status == 400 and fake.requests[0].problems


@pytest.mark.parametrize("path", ["/v1/vapi/call", "/v1/retell/call"])
def test_missing_required_field_is_rejected(client: httpx.Client, path: str) -> None:
    response = client.post(path, json={"properties": {}})

    assert_error(response, 400, "validation")
    assert "required property" in response.json()["message"]


def test_retell_payload_must_be_a_call_ended_envelope(client: httpx.Client) -> None:
    analyzed = {"retell_call_ended_payload": {"event": "call_analyzed"}}

    response = client.post("/v1/retell/call", json=analyzed)

    assert_error(response, 400, "validation")
    assert "call_ended" in response.json()["message"]
    assert ".call must be an object" in response.json()["message"]


@pytest.mark.parametrize("authorization", [None, "Bearer rk_wrong", "Basic cms6dGVzdA=="])
def test_missing_or_wrong_bearer_is_401(fake: FakeRoark, authorization: str | None) -> None:
    with connect(fake, authorization) as http:
        response = http.post("/v1/vapi/call", json=VAPI_BODY)

    assert_error(response, 401, "authentication")
    assert fake.requests[0].status == 401


def test_unknown_path_is_404(fake: FakeRoark, client: httpx.Client) -> None:
    assert_error(client.post("/v1/bland/call", json=VAPI_BODY), 404, "not_found")
    assert_error(client.get("/v1/vapi/call"), 404, "not_found")
    assert [r.status for r in fake.requests] == [404, 404]


def test_health_reports_healthy(client: httpx.Client) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    validator_for("HealthResponse").validate(response.json()["data"])
    assert response.json()["data"]["status"] == "healthy"


def test_evaluation_job_read_checks_the_key_then_finds_no_job(fake: FakeRoark, client: httpx.Client) -> None:
    job = "/v1/evaluation/job/00000000-0000-0000-0000-000000000000"
    assert_error(client.get(job), 404, "not_found")
    assert_error(client.get("/v1/evaluation/job/not-a-uuid"), 400, "validation")
    with connect(fake, "Bearer rk_wrong") as http:
        assert_error(http.get(job), 401, "authentication")
    assert_error(client.get(job + "/runs"), 404, "not_found")  # a route the fake does not serve


def test_camel_mode_accepts_camel_and_rejects_snake() -> None:
    camel_body = {"vapiEndOfCallReportPayload": VAPI_REPORT, "skipAlreadyImported": True}
    with FakeRoark(api_key=API_KEY, field_case="camel") as camel, connect(camel) as http:
        accepted = http.post("/v1/vapi/call", json=camel_body)
        retell = http.post("/v1/retell/call", json={"retellCallEndedPayload": RETELL_ENDED})
        rejected = http.post("/v1/vapi/call", json=VAPI_BODY)

    assert accepted.status_code == 201 and "callId" in accepted.json()["data"]
    assert retell.status_code == 201
    assert_error(rejected, 400, "validation")
    assert "vapiEndOfCallReportPayload" in rejected.json()["message"]


def test_wrong_content_type_and_bad_json_are_400(client: httpx.Client) -> None:
    as_text = {"Content-Type": "text/plain"}
    text = client.post("/v1/vapi/call", content=json.dumps(VAPI_BODY), headers=as_text)
    broken = client.post("/v1/vapi/call", content=b"{not json", headers=JSON_CONTENT)

    assert_error(text, 400, "validation")
    assert "Content-Type" in text.json()["message"]
    assert_error(broken, 400, "validation")
    assert "not valid JSON" in broken.json()["message"]


def test_chunked_body_is_411_not_a_hang(fake: FakeRoark, client: httpx.Client) -> None:
    chunks = iter([json.dumps(VAPI_BODY).encode()])

    response = client.post("/v1/vapi/call", content=chunks, headers=JSON_CONTENT)

    assert_error(response, 411, "validation")
    assert client.post("/v1/vapi/call", json=VAPI_BODY).status_code == 201


def test_oversized_body_is_answered_400_not_reset() -> None:
    with FakeRoark(api_key=API_KEY, max_body_bytes=1024) as small:
        # Larger than the socket buffers, so the fake must drain it to get the 400 through.
        big = {"vapi_end_of_call_report_payload": {**VAPI_REPORT, "padding": "x" * 8_000_000}}
        with connect(small) as http:
            response = http.post("/v1/vapi/call", json=big)

    assert_error(response, 400, "validation")
    assert response.json()["error_code"] == "payload_too_large"


def test_script_of_500_then_accept(fake: FakeRoark, client: httpx.Client) -> None:
    fake.script(Respond(500), Accept())

    first = client.post("/v1/vapi/call", json=VAPI_BODY)
    second = client.post("/v1/vapi/call", json=VAPI_BODY)

    assert_error(first, 500, "internal")
    assert second.status_code == 201
    assert [r.status for r in fake.requests] == [500, 201]


def test_failure_behaviour_still_records_problems(fake: FakeRoark, client: httpx.Client) -> None:
    fake.set_default(Respond(503, headers={"Retry-After": "3"}))

    wrapped = {"vapi_end_of_call_report_payload": {"message": {}}}

    response = client.post("/v1/vapi/call", json=wrapped)

    assert_error(response, 503, "internal")
    assert response.headers["retry-after"] == "3"
    assert fake.requests[0].status == 503 and fake.requests[0].problems


def test_rate_limited_sends_retry_after(fake: FakeRoark, client: httpx.Client) -> None:
    fake.script(RateLimited(retry_after="7", retry_after_ms="6500"))

    response = client.post("/v1/vapi/call", json=VAPI_BODY)

    assert_error(response, 429, "rate_limit")
    assert response.headers["retry-after"] == "7"
    assert response.headers["retry-after-ms"] == "6500"


def test_reset_makes_the_client_see_a_transport_error(
    fake: FakeRoark, client: httpx.Client
) -> None:
    fake.script(Reset())

    with pytest.raises(httpx.TransportError):
        client.post("/v1/vapi/call", json=VAPI_BODY)

    assert fake.requests[0].status == 0
    assert client.post("/v1/vapi/call", json=VAPI_BODY).status_code == 201


def test_slow_request_does_not_block_others(fake: FakeRoark, client: httpx.Client) -> None:
    fake.script(Slow(0.5))
    slow_elapsed: list[float] = []

    def post_slowly() -> None:
        with connect(fake) as own:
            started = time.monotonic()
            own.post("/v1/vapi/call", json=VAPI_BODY).raise_for_status()
            slow_elapsed.append(time.monotonic() - started)

    worker = threading.Thread(target=post_slowly)
    worker.start()
    fake.wait_for(lambda _: fake.in_flight == 1, timeout=5)
    started = time.monotonic()
    quick = client.post("/v1/retell/call", json=RETELL_BODY)
    quick_elapsed = time.monotonic() - started
    worker.join(timeout=5)

    assert quick.status_code == 201 and quick_elapsed < 0.4
    assert slow_elapsed and slow_elapsed[0] >= 0.5
    assert [r.path for r in fake.requests] == ["/v1/retell/call", "/v1/vapi/call"]


def test_chaos_share_one_fails_every_request_and_zero_none(
    fake: FakeRoark, client: httpx.Client
) -> None:
    fake.chaos(1.0, [Respond(502), RateLimited()], seed=7)
    failed = [client.post("/v1/vapi/call", json=VAPI_BODY).status_code for _ in range(10)]
    fake.chaos(0, [], 0)
    passed = [client.post("/v1/vapi/call", json=VAPI_BODY).status_code for _ in range(10)]

    assert set(failed) <= {502, 429} and len(set(failed)) == 2
    assert passed == [201] * 10


def test_chaos_is_reproducible_for_a_seed(client: httpx.Client, fake: FakeRoark) -> None:
    def run() -> list[int]:
        fake.chaos(0.5, [Respond(500)], seed=42)
        return [client.post("/v1/vapi/call", json=VAPI_BODY).status_code for _ in range(20)]

    first = run()
    assert run() == first and {500, 201} == set(first)


def test_stop_returns_quickly_with_a_slow_request_in_flight() -> None:
    fake = FakeRoark(api_key=API_KEY).start()
    fake.script(Slow(30))
    outcome: list[BaseException] = []

    def post() -> None:
        try:
            with connect(fake) as http:
                http.post("/v1/vapi/call", json=VAPI_BODY)
        except httpx.TransportError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=post)
    worker.start()
    fake.wait_for(lambda _: fake.in_flight == 1, timeout=5)
    started = time.monotonic()
    fake.stop()
    stopped_in = time.monotonic() - started
    worker.join(timeout=5)

    assert stopped_in < 1.0
    assert not worker.is_alive() and outcome, "the slow request should end without an answer"
    assert fake.requests[0].status == 0


def test_wait_for_times_out_with_a_useful_message(fake: FakeRoark, client: httpx.Client) -> None:
    client.get("/health")

    with pytest.raises(TimeoutError, match=r"saw 1 request\(s\)"):
        fake.wait_for(lambda requests: len(requests) >= 2, timeout=0.05)


def test_wait_for_returns_once_the_predicate_holds(fake: FakeRoark, client: httpx.Client) -> None:
    poster = threading.Thread(target=lambda: client.post("/v1/vapi/call", json=VAPI_BODY))
    poster.start()

    requests = fake.wait_for(lambda seen: any(r.status == 201 for r in seen), timeout=5)

    poster.join(timeout=5)
    assert requests[0].path == "/v1/vapi/call"
    fake.clear()
    assert fake.requests == []


@pytest.mark.skipif(not SPEC_PATH.exists(), reason=f"no spec at {SPEC_PATH} to compare against")
def test_embedded_contract_matches_the_spec() -> None:
    spec_schemas = json.loads(SPEC_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    embedded = load_contract()["components"]["schemas"]

    for name, schema in embedded.items():
        assert schema == spec_schemas.get(name), f"{name} drifted from {SPEC_PATH}; re-copy it"
