"""A relay on a small machine, flooded with large bodies: it stays inside 512 MB, keeps
answering /health, and loses nothing it acknowledged.

Forty-five concurrent 21 MB requests at once: 25 that are not authentic (a third with no
credential at all, the rest with a well-formed Retell signature that does not match) and
20 valid VAPI reports. Bodies beyond the relay's budgets are answered 503 + Retry-After,
as a provider's retry would then find room; the valid ones are sent again until stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from relay.testing.behaviours import Respond
from tests.e2e.conftest import rows
from tests.helpers import retell_headers, sample, vapi_headers

pytestmark = pytest.mark.e2e

REPORT_BYTES = 21 * 1024 * 1024
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
#: A load balancer's health check waits seconds (deploy/fly.toml: 5 s); half that still
#: catches a relay whose loop stalls under the flood, with room for a 2-core machine.
HEALTH_WITHIN_SECONDS = 2.0


def large_report(call_id: str) -> bytes:
    """A VAPI end-of-call report padded with many small transcript messages, the shape
    that costs a JSON parser most."""
    document = json.loads(sample("vapi/end-of-call-report"))
    document["message"]["call"]["id"] = call_id
    message = {"role": "user", "message": "yes, that works for me", "time": 1700000000000,
               "secondsFromStart": 12.5}
    one = len(json.dumps(message)) + 2
    document["message"]["artifact"]["messages"] = [message] * (REPORT_BYTES // one)
    return json.dumps(document).encode()


# Polls /health from a process of its own: in the test's process, the threads sending the
# flood (and the fake Roark parsing what it is sent) would delay the polling itself.
_WATCH = """
import json, os, sys, time
import httpx
url, stop = sys.argv[1], sys.argv[2]
slowest, failures = 0.0, []
with httpx.Client(timeout=5) as client:
    while not os.path.exists(stop):
        started = time.monotonic()
        try:
            status = client.get(url).status_code
            if status != 200:
                failures.append(f"HTTP {status}")
        except httpx.HTTPError as error:
            failures.append(repr(error))
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.1)
print(json.dumps({"slowest": slowest, "failures": failures}))
"""


class HealthWatch:
    """Polls /health all along; the slowest answer is what a load balancer would see."""

    def __init__(self, url: str, stop_file: Path) -> None:
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop_file = stop_file
        self._process = subprocess.Popen([sys.executable, "-c", _WATCH, f"{url}/health", str(stop_file)],
                                         stdout=subprocess.PIPE)

    def __enter__(self) -> HealthWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_file.touch()
        output, _ = self._process.communicate(timeout=15)
        seen = json.loads(output)
        self.slowest, self.failures = seen["slowest"], seen["failures"]


def send(url: str, body: bytes, headers: dict[str, str]) -> int | None:
    """The status answered, or None when the connection ended before an answer."""
    try:
        return httpx.post(url, content=body, headers=headers, timeout=60).status_code
    except httpx.HTTPError:
        return None


def test_a_flood_of_large_bodies_stays_inside_a_small_machine(start_relay, relay_env, fake_roark, tmp_path):
    fake_roark.set_default(Respond(201))  # what Roark does with them is not the question here
    relay = start_relay({**relay_env, "RELAY_LOG_LEVEL": "warning"})
    reports = {f"flood-{n}": large_report(f"flood-{n}") for n in range(20)}
    forged = large_report("forged")
    requests = [("/webhooks/vapi", forged, {"content-type": "application/json"})] * 8
    requests += [("/webhooks/retell", forged, retell_headers(forged, key="retell_key_not_ours"))] * 17
    requests += [("/webhooks/vapi", body, vapi_headers()) for body in reports.values()]

    with HealthWatch(relay.url, tmp_path / "stop-watching") as health, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: send(relay.url + r[0], r[1], r[2]), requests))
        forged_answers, valid_answers = answers[:25], answers[25:]
        assert set(forged_answers) <= {401, 503, None}, forged_answers
        assert 401 in forged_answers  # refused from the headers alone, body or no body
        assert set(valid_answers) <= {200, 503}, valid_answers
        # Providers send a 503'd webhook again; here one at a time, until all are stored.
        for (call_id, body), answer in zip(reports.items(), valid_answers, strict=True):
            deadline = time.monotonic() + 60
            while answer != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                answer = send(f"{relay.url}/webhooks/vapi", body, vapi_headers())
            assert answer == 200, f"{call_id} never stored"

    figures = {"peak_rss_mib": round(relay.peak_rss() / 2**20), "slowest_health_s": round(health.slowest, 3),
               "first_answers": {str(a): answers.count(a) for a in set(answers)}}
    print(f"\nmemory bounds: {json.dumps(figures)}")
    assert relay.peak_rss() < MEMORY_LIMIT_BYTES, figures
    assert health.slowest < HEALTH_WITHIN_SECONDS and not health.failures, (health.slowest, health.failures[:5])
    stored = {row["call_id"] for row in rows(relay_env)}
    assert stored == set(reports)
