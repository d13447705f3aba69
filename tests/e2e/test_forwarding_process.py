"""Forwarding in a process of its own: the child `relay serve` starts (RELAY_FORWARD
=process, the default), and `relay forward` run alone beside a server that does not
forward (RELAY_FORWARD=off), as a Heroku worker would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import rows
from tests.helpers import eventually, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e
WAIT = 20
ADMIN_TOKEN = "admin-token-for-forwarding-tests-0123456789"


def forwarding_child(relay) -> int:
    [pid] = eventually(lambda: relay.children(), WAIT, message="no forwarding process started")
    assert f'"pid":{pid},"event":"forwarding_process_started"' in relay.logs()
    return pid


def fresh_interpreter(pid: int) -> bool:
    """A restarted child runs `relay forward`; the first is a copy of the server."""
    return b"\x00forward\x00" in Path(f"/proc/{pid}/cmdline").read_bytes()


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # ended, not yet reaped by a parent that is itself gone


def test_serve_forwards_from_a_child_process_restarted_when_it_dies(start_relay, relay_env, fake_roark):
    relay = start_relay({**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN, "RELAY_METRICS_INTERVAL_SECONDS": "0.2"})
    child = forwarding_child(relay)
    assert not fresh_interpreter(child)
    first = with_call_id("vapi/end-of-call-report", "call-before")
    assert relay.post("/webhooks/vapi", first, vapi_headers()).status_code == 200
    fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)

    # The child's counters reach the server's /metrics (it rewrites its file every 0.2 s here).
    def attempts_shown() -> bool:
        text = httpx.get(f"{relay.url}/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
        return any(line.startswith("relay_delivery_attempts_total{") and 'outcome="delivered"' in line
                   for line in text.splitlines())
    eventually(attempts_shown, WAIT, interval=0.2, message="the forwarding process's counters never reached /metrics")

    os.kill(child, signal.SIGKILL)
    eventually(lambda: "forwarding_process_exited" in relay.logs(), WAIT)
    [replacement] = eventually(lambda: [p for p in relay.children() if p != child], WAIT,
                               message="the forwarding process was not restarted")
    assert fresh_interpreter(replacement)
    second = with_call_id("vapi/end-of-call-report", "call-after")
    assert relay.post("/webhooks/vapi", second, vapi_headers()).status_code == 200
    fake_roark.wait_for(lambda rs: len(rs) >= 2, WAIT)
    eventually(lambda: [r["state"] for r in rows(relay_env)] == ["delivered", "delivered"], WAIT)


def test_a_forwarding_process_told_to_stop_is_started_again_without_an_error(start_relay, relay_env):
    relay = start_relay(relay_env)
    child = forwarding_child(relay)
    eventually(lambda: "forwarding_started" in relay.logs(), WAIT)
    os.kill(child, signal.SIGTERM)
    eventually(lambda: [p for p in relay.children() if p != child], WAIT, message="not started again")
    assert "forwarding_process_stopped" in relay.logs()
    assert "forwarding_process_exited" not in relay.logs()


def test_a_server_killed_outright_takes_its_forwarding_process_with_it(start_relay, relay_env):
    relay = start_relay(relay_env)
    child = forwarding_child(relay)
    relay.kill()
    eventually(lambda: gone(child), WAIT, message="the forwarding process outlived its server")


def test_a_server_stopped_stops_its_forwarding_process(start_relay, relay_env):
    relay = start_relay(relay_env)
    child = forwarding_child(relay)
    eventually(lambda: "forwarding_started" in relay.logs(), WAIT)
    assert relay.terminate() == -signal.SIGTERM  # as uvicorn ends: the signal raised again
    assert gone(child)
    assert '"forwarder_stopped"' in relay.logs()


def test_relay_forward_alone_delivers_what_a_non_forwarding_server_stores(start_relay, relay_env, fake_roark, tmp_path):
    env = {**relay_env, "RELAY_FORWARD": "off", "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
           # Long enough that only the store's wake-up (SQLite's data_version) explains a
           # prompt delivery.
           "RELAY_POLL_INTERVAL_SECONDS": "30"}
    relay = start_relay(env)
    assert relay.children() == []
    body = with_call_id("vapi/end-of-call-report", "call-worker")
    assert relay.post("/webhooks/vapi", body, vapi_headers()).status_code == 200

    log = open(tmp_path / "forward.log", "wb")
    worker = subprocess.Popen([shutil.which("relay"), "forward"], env={"PATH": os.environ["PATH"], **env},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
        later = with_call_id("vapi/end-of-call-report", "call-worker-later")
        assert relay.post("/webhooks/vapi", later, vapi_headers()).status_code == 200
        fake_roark.wait_for(lambda rs: len(rs) >= 2, 5)

        def health() -> dict:
            return httpx.get(f"{relay.url}/health", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()["data"]
        assert health()["dependencies"]["roark_delivery"] == "healthy"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=WAIT) == 0
        log.close()
    assert "forwarding_started" in (tmp_path / "forward.log").read_text()
