"""The pass-through, attacked (hardening round three, 6 and 9): answers in a memory
budget, what the team's server is told of the connection, header bytes outside ASCII,
replayed signatures, the team server's address kept from callers, and a connection
pool that says when it is full."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from relay.providers import vapi
from tests.e2e.test_pass_through import TeamServer, team  # noqa: F401 - the fixture
from tests.helpers import VAPI_SECRET, eventually, free_port, sample, vapi_headers
from tests.secret_scan import VAPI_HMAC_SECRET

pytestmark = pytest.mark.e2e

HMAC = vapi.HmacScheme(secrets=(VAPI_HMAC_SECRET,))
FOUR_MB = 4 * 1024 * 1024 - 100  # under the 4 MiB an answer may be
PASS_THROUGH_BUDGET = 32 * 1024 * 1024  # RELAY_PASS_THROUGH_BUDGET_BYTES's default


def hmac_headers(body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", **vapi.sign_hmac(HMAC, body, str(int(time.time())))}


def server_peak(relay) -> int:
    """The server process's peak resident memory so far (it alone passes answers through)."""
    with open(f"/proc/{relay.process.pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def settled(count, quiet: float = 0.5, timeout: float = 20) -> None:
    """Wait until `count()` stops changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last = count()
    while time.monotonic() < deadline:
        time.sleep(quiet)  # polls another process's progress; bounded by `timeout`
        if (now := count()) == last:
            return
        last = now


def post(relay, body: bytes, headers: dict[str, str], timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{relay.url}/webhooks/vapi", content=body, headers=headers, timeout=timeout)


def test_answers_held_at_once_stay_in_their_budget(start_relay, relay_env, team, small_machine,  # noqa: F811
                                                   record_property):
    team.answers["tool-calls"] = (200, "application/json", b'{"result": "' + b"x" * FOUR_MB + b'"}')
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url, "RELAY_LOG_LEVEL": "warning"},
                        cgroup=small_machine)
    before = server_peak(relay)
    tool_calls = sample("vapi/tool-calls")
    team.gate = threading.Event()  # every answer comes at once, once all that may arrive did
    with ThreadPoolExecutor(200) as pool:
        sent = [pool.submit(post, relay, tool_calls, vapi_headers()) for _ in range(200)]
        settled(lambda: len(team.received))
        team.gate.set()
        answers = [future.result() for future in sent]
    statuses = {status: sum(a.status_code == status for a in answers) for status in {a.status_code for a in answers}}
    grew = server_peak(relay) - before
    record_property("statuses", statuses)
    record_property("grew_mib", grew // 2**20)
    assert relay.process.poll() is None and relay.children(), "the relay died under 200 answers of 4 MB"
    assert statuses.keys() <= {200, 502, 503} and statuses.get(200), statuses
    for answer in answers:
        if answer.status_code == 200:
            assert len(answer.content) == FOUR_MB + 14
        else:  # said why
            assert "RELAY_PASS_THROUGH_BUDGET_BYTES" in answer.json()["message"] or \
                "holds as much of such answers" in answer.json()["message"], answer.json()
    # An answer is in memory about twice (read, then written back): three budgets is plenty.
    assert grew < 3 * PASS_THROUGH_BUDGET, f"grew {grew // 2**20} MiB for a {PASS_THROUGH_BUDGET // 2**20} MiB budget"
    if small_machine is not None:
        assert small_machine.oom_kills == 0


def test_the_team_server_hears_of_the_connection_from_the_relay_not_the_caller(start_relay, relay_env,
                                                                             team):  # noqa: F811
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url, "VAPI_HMAC_SECRET": VAPI_HMAC_SECRET})
    tool_calls = sample("vapi/tool-calls")
    said = {"x-forwarded-for": "6.6.6.6", "forwarded": "for=6.6.6.6;proto=https", "x-real-ip": "6.6.6.6",
            "via": "1.1 evil", "cookie": "session=stolen", "authorization": "Bearer not-checked-by-anyone",
            "x-forwarded-proto": "https", "x-call-id": "call-9"}
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30) as elsewhere:
        # Not from 127.0.0.1, whose X-Forwarded-For uvicorn believes by default.
        sent = elsewhere.post(f"{relay.url}/webhooks/vapi", content=tool_calls,
                              headers={**hmac_headers(tool_calls), **said})
    assert sent.status_code == 200
    # With the shared secret in Authorization, that header is the credential: it goes on.
    bearer = {"content-type": "application/json", "authorization": f"Bearer {VAPI_SECRET}"}
    assert post(relay, tool_calls, bearer).status_code == 200
    (first, _), (second, _) = team.received
    assert (first["x-forwarded-for"], first["x-forwarded-proto"], first["via"]) == (
        "127.0.0.2", "http", "1.1 roark-relay")
    assert not {"forwarded", "x-real-ip", "cookie", "authorization"} & first.keys()
    assert first["x-signature"] and first["x-call-id"] == "call-9"  # VAPI's own, for the team's server to check
    assert second["authorization"] == f"Bearer {VAPI_SECRET}"


def test_a_replayed_signature_is_refused_within_its_window(start_relay, relay_env, team):  # noqa: F811
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url, "VAPI_HMAC_SECRET": VAPI_HMAC_SECRET})
    tool_calls = sample("vapi/tool-calls")
    captured = hmac_headers(tool_calls)
    answers = [post(relay, tool_calls, captured) for _ in range(11)]
    assert [a.status_code for a in answers] == [200] + [401] * 10
    assert {a.json()["error_code"] for a in answers[1:]} == {"replayed_signature"}
    assert len(team.received) == 1
    # A message the team's server never answered may come again (VAPI's backoffPlan).
    team.answers["tool-calls"] = (200, "application/json", b"{}")
    unanswered = sample("vapi/assistant-request")
    signed = hmac_headers(unanswered)
    team.delays["assistant-request"] = 2
    assert post(relay, unanswered, signed, timeout=30).status_code in (200, 504)


def test_a_502_keeps_the_team_servers_address_to_the_relays_log(start_relay, relay_env):
    port = free_port()
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": f"http://127.0.0.1:{port}/hidden-path"})
    answer = post(relay, sample("vapi/tool-calls"), vapi_headers())
    assert answer.status_code == 502
    message = answer.json()["message"]
    assert str(port) not in message and "127.0.0.1" not in message and "hidden-path" not in message, message
    assert answer.json()["request_id"] in relay.logs() and str(port) in relay.logs()


def test_a_full_connection_pool_says_so(start_relay, relay_env, team):  # noqa: F811
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url, "VAPI_SERVER_TIMEOUT_SECONDS": "10",
                         "RELAY_PASS_THROUGH_CONNECTIONS": "3"})
    # Answered 1.5 s within its 10 s, holding its connection meanwhile, until 1.5 s after
    # the assistant-requests below (sent at once) have given up: margins a busy machine
    # does not eat (0.5 s each once gave a 504 under CI's load).
    team.delays["tool-calls"] = 8.5
    with ThreadPoolExecutor(8) as pool:
        holding = [pool.submit(post, relay, sample("vapi/tool-calls"), vapi_headers()) for _ in range(3)]
        eventually(lambda: len(team.received) == 3, timeout=5)
        # An assistant-request has 7 s at most: none of the three connections is free by then.
        waiting = list(pool.map(lambda _: post(relay, sample("vapi/assistant-request"), vapi_headers()), range(5)))
        assert [f.result().status_code for f in holding] == [200] * 3
    assert [(a.status_code, a.json()["error_code"]) for a in waiting] == [(504, "connections_busy")] * 5
    assert "RELAY_PASS_THROUGH_CONNECTIONS" in waiting[0].json()["message"]
    assert len(team.received) == 3  # the five never reached it


@pytest.mark.parametrize("path", ["/webhooks/vapi", "/webhooks/retell", "/health", "/status", "/admin/api/summary",
                                  "/login"])
def test_a_header_byte_outside_ascii_is_never_a_500(start_relay, relay_env, team, path):  # noqa: F811
    relay = start_relay({**relay_env, "VAPI_SERVER_URL": team.url,
                         "RELAY_ADMIN_TOKEN": "kR7vQ2xL9mW4pZ8tN3bY6cF1hJ5dS0gA"})
    body = sample("vapi/tool-calls")
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"x-vapi-secret: {VAPI_SECRET}\r\nContent-Length: {len(body)}\r\n").encode()
    for name in (b"x-note", b"user-agent", b"authorization", b"cookie", b"x-request-id"):
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.sendall(head + name + b": caf\xe9 \xff\r\nConnection: close\r\n\r\n" + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split()[1])
        assert status < 500, (path, name, answer[:300])
