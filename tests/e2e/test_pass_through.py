"""VAPI's request-response messages passed through a real relay to the team's own server
and its answer back, while end-of-call reports go on being stored and forwarded."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from relay.providers.vapi import VAPI, VapiSettings
from relay.settings import Settings
from tests.e2e.conftest import rows
from tests.helpers import ROARK_KEY, VAPI_SECRET, eventually, free_port, sample, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "kR7vQ2xL9mW4pZ8tN3bY6cF1hJ5dS0gA"
TOOL_RESULT = b'{"results": [{"toolCallId": "call_1", "result": "booked for Friday 10:00"}]}'


class TeamServer:
    """The team's application: records what it is sent and answers as told, per message
    type (`answers`), after `delays` seconds, and once `gate` is set when there is one."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: dict[str, tuple[int, str, bytes]] = {}
        self.delays: dict[str, float] = {}
        self.gate: threading.Event | None = None
        team = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                team.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                kind = json.loads(body)["message"]["type"]
                time.sleep(team.delays.get(kind, 0))
                if team.gate is not None:
                    team.gate.wait(30)
                status, content_type, answer = team.answers.get(kind, (200, "application/json", TOOL_RESULT))
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/vapi/server"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def team():
    server = TeamServer()
    yield server
    server.close()


def post(relay, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{relay.url}/webhooks/vapi", content=body, headers=headers, timeout=30)


def test_messages_that_wait_for_an_answer_get_the_team_servers(start_relay, relay_env, team, fake_roark):
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url, "VAPI_SERVER_TIMEOUT_SECONDS": "1",
                         "RELAY_ADMIN_TOKEN": ADMIN_TOKEN})
    tool_calls = sample("vapi/tool-calls")
    headers = {**vapi_headers(), "x-call-id": "call-7", "user-agent": "Vapi/1.0"}

    answer = post(relay, tool_calls, headers)
    assert (answer.status_code, answer.headers["content-type"], answer.content) == (
        200, "application/json", TOOL_RESULT)
    [(sent_headers, sent_body)] = team.received
    assert sent_body == tool_calls  # byte for byte
    # VAPI's own headers, so the team's server verifies VAPI's credential as before.
    assert sent_headers["x-vapi-secret"] == VAPI_SECRET
    assert sent_headers["x-call-id"] == "call-7" and sent_headers["user-agent"] == "Vapi/1.0"

    # Its answer, whatever it is, goes back unchanged.
    team.answers["assistant-request"] = (404, "text/plain; charset=utf-8", b"no assistant for +15550100")
    answer = post(relay, sample("vapi/assistant-request"), vapi_headers())
    assert (answer.status_code, answer.headers["content-type"], answer.content) == (
        404, "text/plain; charset=utf-8", b"no assistant for +15550100")

    # A forged message never reaches the team's server.
    assert post(relay, tool_calls, vapi_headers("not-the-secret")).status_code == 401
    assert len(team.received) == 2

    # Too slow: answered before VAPI gives up, as an ErrorResponse.
    team.delays["tool-calls"] = 3
    started = time.monotonic()
    answer = post(relay, tool_calls, vapi_headers())
    assert answer.status_code == 504 and answer.json()["error_code"] == "gateway_timeout"
    assert time.monotonic() - started < 2.5

    assert rows(relay_env) == []  # nothing of it is stored
    metrics = httpx.get(f"{relay.url}/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert 'relay_passed_through_total{event="tool-calls",provider="vapi",status="200"} 1.0' in metrics
    assert 'relay_passed_through_total{event="tool-calls",provider="vapi",status="unanswered"} 1.0' in metrics


def test_a_team_server_that_cannot_be_reached_is_a_502(start_relay, relay_env):
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": f"http://127.0.0.1:{free_port()}/nobody-home"})
    answer = post(relay, sample("vapi/tool-calls"), vapi_headers())
    assert answer.status_code == 502
    assert answer.json()["error_code"] == "bad_gateway" and answer.json()["request_id"]


def test_a_slow_team_server_does_not_hold_up_end_of_call_reports(start_relay, relay_env, team, fake_roark):
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url, "VAPI_SERVER_TIMEOUT_SECONDS": "10"})
    team.delays["tool-calls"] = 4
    with ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(post, relay, sample("vapi/tool-calls"), vapi_headers()) for _ in range(8)]
        eventually(lambda: len(team.received) == 8, timeout=5, message="the tool calls did not reach the team")
        started = time.monotonic()
        report = with_call_id("vapi/end-of-call-report", "while-tools-run")
        assert post(relay, report, vapi_headers()).json()["data"]["status"] == "accepted"
        assert time.monotonic() - started < 1.0
        fake_roark.wait_for(lambda requests: any(r.status == 201 for r in requests), timeout=10)
        assert not any(future.done() for future in waiting)  # the team's server is still at it
        assert all(future.result().status_code == 200 for future in waiting)


def test_without_a_team_server_such_messages_are_acknowledged_as_ignored(start_relay, relay_env):
    relay = start_relay(relay_env)
    answer = post(relay, sample("vapi/tool-calls"), vapi_headers())
    assert answer.status_code == 200 and answer.json()["data"]["status"] == "ignored"
    assert "have nowhere to go" in relay.logs() and "VAPI_SERVER_URL" in relay.logs()


def test_assistant_requests_are_answered_within_vapis_seven_and_a_half_seconds():
    config = Settings.from_env({"ROARK_API_KEY": ROARK_KEY, "VAPI_SERVER_URL": "https://team.example"}).providers["vapi"]
    assert isinstance(config, VapiSettings)
    assert VAPI.answer_deadline(config, "assistant-request") == 7.0
    assert VAPI.answer_deadline(config, "tool-calls") == 19.0
