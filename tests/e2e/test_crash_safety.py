"""Crash safety: a real `relay serve` SIGKILLed again and again under load loses nothing.

Eight sender threads post signed VAPI and Retell webhooks (every call at least once,
a share of them again later, as providers retry) while the test kills the relay with
SIGKILL and starts it again, at least 10 times, with the forwarder delivering to a fake
Roark whose answers are sometimes slow (so kills land mid-delivery too). A sender that
gets no answer or a 503 sends the webhook again once a relay is back, as a provider
would. After the last start:

- every webhook that was answered 2xx is in the outbox, byte for byte, and was delivered
  to the fake Roark;
- the outbox holds each call once (no duplicates);
- deliveries sent more than once are counted and reported; there can be at most one per
  delivery in flight at a kill (its lease expired), never more.

RELAY_CRASH_CYCLES raises the number of kills (a soak: see docs/development.md, "Attack suites").
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from relay.testing.behaviours import Slow
from tests.e2e.conftest import rows
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id
from tests.secret_scan import SecretScan

pytestmark = pytest.mark.e2e

CYCLES = int(os.environ.get("RELAY_CRASH_CYCLES", "12"))
CALLS = int(os.environ.get("RELAY_CRASH_CALLS", "240"))  # distinct calls, half per provider
RESEND_SHARE = 0.4  # calls sent again later, as provider retries
SENDERS = 8
CONCURRENCY = 4  # RELAY_FORWARD_CONCURRENCY: deliveries one process can have in flight
WAIT = 30  # upper bound on any single wait, never slept


@dataclass
class Target:
    """Where the live relay is; senders wait on `up` while it is down."""

    url: str | None = None
    up: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, url: str | None) -> None:
        with self.lock:
            self.url = url
            (self.up.set if url else self.up.clear)()


@dataclass
class Tally:
    acked: dict[tuple[str, str], bytes] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    changed: threading.Condition = field(default_factory=threading.Condition)
    unexpected: list[str] = field(default_factory=list)

    def count(self) -> int:
        return self.statuses["2xx"]


def webhook(provider: str, call_id: str) -> tuple[bytes, dict[str, str]]:
    if provider == "vapi":
        return with_call_id("vapi/end-of-call-report", call_id), vapi_headers()
    body = with_call_id("retell/call_ended", call_id)
    return body, retell_headers(body)  # signed now: a retry is signed afresh, as Retell does


def sender(jobs: queue.Queue, target: Target, tally: Tally, scan: SecretScan, done: threading.Event) -> None:
    with httpx.Client(timeout=10) as http:
        while not done.is_set():
            try:
                provider, call_id = jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                while not done.is_set():
                    if not target.up.wait(timeout=0.5):
                        continue
                    url = target.url
                    body, headers = webhook(provider, call_id)
                    scan.forbid_headers(headers)
                    try:
                        response = http.post(f"{url}/webhooks/{provider}", content=body, headers=headers)
                    except httpx.TransportError:
                        with tally.changed:
                            tally.statuses["no answer"] += 1
                        continue  # the relay died under us: send it again, as a provider would
                    scan.served(response, f"webhook answer {response.status_code}")
                    with tally.changed:
                        if 200 <= response.status_code < 300:
                            tally.statuses["2xx"] += 1
                            tally.statuses[response.json()["data"]["status"]] += 1
                            tally.acked.setdefault((provider, call_id), body)
                            tally.changed.notify_all()
                            break
                        tally.statuses[str(response.status_code)] += 1
                        if response.status_code != 503:
                            tally.unexpected.append(
                                f"{provider} {call_id}: {response.status_code} {response.text[:200]}")
                            break
            finally:
                jobs.task_done()


def forwarded_call(request) -> tuple[str, str] | None:
    if request.json is None:
        return None
    if request.path == "/v1/vapi/call":
        return "vapi", request.json["vapi_end_of_call_report_payload"]["call"]["id"]
    return "retell", request.json["retell_call_ended_payload"]["call"]["call_id"]


@pytest.mark.timeout(240)
def test_sigkill_under_load_loses_nothing_acknowledged(start_relay, relay_env, fake_roark, tmp_path,
                                                      secret_scan, record_property):
    started = time.monotonic()
    env = {
        **relay_env,
        "ROARK_TIMEOUT_SECONDS": "1",
        "RELAY_LEASE_SECONDS": "2",  # a killed process's claims come back after 2 s
        "RELAY_RETRY_MAX_ATTEMPTS": str(CYCLES + 16),  # kills spend attempts too (leases expire)
        "RELAY_FORWARD_CONCURRENCY": str(CONCURRENCY),
    }
    rng = random.Random(20240611)
    fake_roark.chaos(0.25, [Slow(0.3)], seed=7)  # a quarter of deliveries are in flight a while

    calls = [("vapi" if i % 2 else "retell", f"crash-{i:04d}") for i in range(CALLS)]
    rng.shuffle(calls)
    resends = rng.sample(calls, int(CALLS * RESEND_SHARE))
    jobs: queue.Queue = queue.Queue()
    for job in calls + resends:  # retries come after first sends, often to a later process
        jobs.put(job)

    target, tally, done = Target(), Tally(), threading.Event()
    threads = [threading.Thread(target=sender, args=(jobs, target, tally, secret_scan, done), daemon=True)
               for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    kills = 0
    try:
        per_cycle = max(4, len(calls + resends) // (CYCLES + 2))
        for _ in range(CYCLES):
            relay = start_relay(env)
            target.set(relay.url)
            # Kill after a varying number of acknowledgements in this life: early, late,
            # in the middle of a group commit or of deliveries.
            goal = tally.count() + rng.randint(1, per_cycle)
            with tally.changed:
                tally.changed.wait_for(lambda goal=goal: tally.count() >= goal or jobs.unfinished_tasks == 0, WAIT)
            target.set(None)
            relay.kill()
            kills += 1
        final = start_relay(env)
        target.set(final.url)
        eventually(lambda: jobs.unfinished_tasks == 0, WAIT, interval=0.05,
                   message=f"senders did not finish: {jobs.unfinished_tasks} left; {tally.statuses}")
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=15)
    secret_scan.logged(tmp_path / "relay.log")
    assert not tally.unexpected, tally.unexpected[:5]

    # Every acknowledged webhook is stored once, verbatim, and ends delivered.
    def settled():
        stored = rows(env)
        return stored if stored and all(r["state"] == "delivered" for r in stored) else None

    stored = eventually(settled, WAIT, interval=0.1,
                        message=f"not all delivered: {Counter(r['state'] for r in rows(env))}")
    by_call = Counter((r["provider"], r["call_id"]) for r in stored)
    assert max(by_call.values()) == 1, [k for k, n in by_call.items() if n > 1][:5]
    assert len({(r["provider"], r["dedupe_key"]) for r in stored}) == len(stored)
    bodies = {(r["provider"], r["call_id"]): bytes(r["body"]) for r in stored}
    missing = [key for key in tally.acked if key not in bodies]
    assert not missing, f"acknowledged but not in the outbox: {missing[:5]}"
    assert all(bodies[key] == body for key, body in tally.acked.items())
    assert set(bodies) == set(calls)  # every call was acknowledged in the end

    sends = Counter(forwarded_call(r) for r in fake_roark.requests if r.method == "POST")
    accepted = {forwarded_call(r) for r in fake_roark.accepted()}
    assert set(tally.acked) <= accepted, f"acknowledged but never delivered: {sorted(set(tally.acked) - accepted)[:5]}"
    sent_twice = {key: n for key, n in sends.items() if n > 1}
    # At most the deliveries one process can have in flight, per kill, are sent again.
    assert len(sent_twice) <= kills * CONCURRENCY, sent_twice
    assert all(n <= 1 + kills for n in sent_twice.values()), sent_twice

    figures = {
        "kills": kills,
        "calls": len(calls),
        "webhook_sends_answered_2xx": tally.count(),
        "answered_accepted": tally.statuses["accepted"],
        "answered_duplicate": tally.statuses["duplicate"],
        "sends_without_answer": tally.statuses["no answer"],
        "answered_503": tally.statuses["503"],
        "outbox_rows": len(stored),
        "deliveries_sent_more_than_once": len(sent_twice),
        "extra_sends": sum(n - 1 for n in sent_twice.values()),
        "seconds": round(time.monotonic() - started, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
