"""A newcomer's first hour, as real processes: `relay send-sample` aimed the way people
aim it, `relay demo`'s hints run as printed, a port already taken, and what `relay
serve` says at start-up about what it does on its own."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys

import httpx
import pytest

import relay
from relay.testing.fake_providers import FakeRetell
from tests.helpers import RETELL_KEY, eventually, free_port, relay_process

pytestmark = pytest.mark.e2e


def test_send_sample_takes_the_relays_url_or_the_webhook_url_as_pasted(start_relay, relay_env, tmp_path):
    env = {**relay_env, "RELAY_SOURCES": '{"acme": {"business_name": "Acme"}}'}
    served = start_relay(env)
    for given, target in [
        (served.url, f"{served.url}/webhooks/vapi"),
        (f"{served.url}/", f"{served.url}/webhooks/vapi"),
        (f"{served.url}/webhooks/vapi", f"{served.url}/webhooks/vapi"),  # as configured in VAPI
        (f"{served.url}/webhooks/vapi/acme", f"{served.url}/webhooks/vapi/acme"),  # a named source's
    ]:
        sent = relay_process(env, "send-sample", "vapi", "--url", given, cwd=tmp_path)
        assert sent.returncode == 0, (given, sent.stdout, sent.stderr)
        assert sent.stdout.startswith(f"end-of-call-report -> {target}: HTTP 200\n") and '"accepted"' in sent.stdout
    wrong = relay_process(env, "send-sample", "retell", "--url", f"{served.url}/webhooks/vapi", cwd=tmp_path)
    assert wrong.returncode == 2 and "is the vapi webhook URL" in wrong.stderr


def test_the_demos_hints_work_as_printed(tmp_path):
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "relay", "demo", "--port", str(port)], cwd=tmp_path,
                            env={"PATH": os.environ["PATH"]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    try:
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if "Ctrl-C stops" in line:
                break
        output = "\n".join(lines)
        # nothing but the table between its heading and the hints: no log line amid it
        start = lines.index("Sending signed sample webhooks:") + 1
        table = lines[start:lines.index("", start)]
        assert len(table) == 8 and all(re.fullmatch(r"  \S.* -> \d{3} \w+", row) for row in table), output
        assert "throwaway secrets" in output
        printed = [line.split(":", 1)[1] if line.startswith(("CLI:", "Send another:")) else line
                   for line in lines if "relay send-sample" in line or "relay deliveries list" in line]
        assert len(printed) == 3, output
        for command in printed:
            words = shlex.split(command)
            at = words.index("relay")
            env = dict(word.split("=", 1) for word in words[:at])
            result = relay_process(env, *words[at + 1:], cwd=tmp_path)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            if "send-sample" in command:
                assert f"-> http://127.0.0.1:{port}/webhooks/" in result.stdout and "HTTP 200" in result.stdout
            else:
                assert "demo-" in result.stdout  # the demo's own calls, in the demo's database
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=20)


def test_serve_on_a_port_in_use_says_so_before_starting_anything(tmp_path, relay_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = relay_process(relay_env, "serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"relay serve: port {port} is in use; choose another with PORT={port + 1} "
                             f"or --port {port + 1}\n")
    assert result.stdout == ""  # no forwarding process started, nothing logged
    assert not (tmp_path / "relay.db").exists()  # nor the database touched


def test_start_up_says_what_runs_on_its_own_and_which_variables_are_ignored(start_relay, relay_env):
    with FakeRetell(RETELL_KEY) as retell:
        served = start_relay({**relay_env, "RETELL_API_BASE_URL": retell.url,
                              "RELAY_RECONCILE_INTERVAL_SECONDS": "900", "RELAY_DESTINATION": "[]"})

        def events():
            return [json.loads(line) for line in served.logs().splitlines()]

        [on] = eventually(lambda: [e for e in events() if e["event"] == "reconciliation_on"])
    assert on["provider"] == "retell" and on["turn_off"] == "RELAY_RECONCILE_INTERVAL_SECONDS=0"
    assert on["why"].startswith("RETELL_API_KEY is set: Retell's API is asked now and every 900 s which calls ended")
    [unknown] = [e for e in events() if e["event"] == "unknown_setting"]
    assert unknown["level"] == "warning" and "did you mean RELAY_DESTINATIONS?" in unknown["warning"]


def test_the_version_is_one_string_everywhere(start_relay, relay_env, tmp_path):
    served = start_relay(relay_env)
    health = httpx.get(f"{served.url}/health", timeout=10).json()["data"]  # anyone may ask: no token
    printed = relay_process({}, "--version", cwd=tmp_path)
    assert printed.stdout == f"relay, version {relay.__version__}\n"
    assert health["version"] == relay.__version__
