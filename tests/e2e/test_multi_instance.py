"""Three `relay serve` processes sharing one PostgreSQL outbox, one of them SIGKILLed
mid-run: nothing acknowledged is lost, and nothing is forwarded twice unless a lease
expired."""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from relay.testing.behaviours import Slow
from relay.testing.fake_roark import FakeRoark
from tests.e2e.conftest import RelayProcess
from tests.helpers import ROARK_KEY, eventually, fresh_schema, retell_headers, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

WAIT = 30  # seconds; upper bounds on conditions, never slept
LEASE = 3.0  # short, so the killed process's claims come back within the test
CALLS = 90  # distinct calls, half VAPI, half Retell
RESENDS = 30  # provider retries of calls already sent, to another instance where possible


def webhook(provider: str, call_id: str) -> tuple[str, bytes, dict[str, str]]:
    if provider == "vapi":
        body = with_call_id("vapi/end-of-call-report", call_id)
        return "/webhooks/vapi", body, vapi_headers()
    body = with_call_id("retell/call_ended", call_id)
    return "/webhooks/retell", body, retell_headers(body)


def forwarded_key(request) -> tuple[str, str]:
    if request.path == "/v1/vapi/call":
        return "vapi", request.json["vapi_end_of_call_report_payload"]["call"]["id"]
    return "retell", request.json["retell_call_ended_payload"]["call"]["call_id"]


@pytest.mark.timeout(120)
def test_three_instances_one_killed_lose_nothing_and_duplicate_only_expired_leases(
    postgres_url, relay_env, tmp_path
):
    started = time.monotonic()
    # One fake Roark per instance, so the test knows which process sent what. The victim's
    # answers are slow, so it surely has deliveries in flight when it is killed.
    fakes = [FakeRoark(api_key=ROARK_KEY).start() for _ in range(3)]
    fakes[0].set_default(Slow(1.0))
    for fake in fakes[1:]:
        fake.set_default(Slow(0.05))
    relays: list[RelayProcess] = []
    with fresh_schema(postgres_url) as url:
        try:
            for i, fake in enumerate(fakes):
                env = {**relay_env, "RELAY_DATABASE_URL": url, "ROARK_BASE_URL": fake.url,
                       "ROARK_TIMEOUT_SECONDS": "2", "RELAY_LEASE_SECONDS": str(LEASE),
                       "RELAY_POLL_INTERVAL_SECONDS": "0.5", "RELAY_FORWARD_CONCURRENCY": "4"}
                relays.append(RelayProcess(env, tmp_path / f"relay-{i}.log"))
            # Started together, so their migrations collide (the advisory lock serialises them).
            with ThreadPoolExecutor(len(relays)) as pool:
                list(pool.map(RelayProcess.start, relays))
            victim = relays[0]

            rng = random.Random(20240611)
            calls = [("vapi" if i % 2 else "retell", f"multi-{i:03d}") for i in range(CALLS)]
            sends = list(calls)
            for _ in range(RESENDS):  # retries land after their first send, on any instance
                sends.insert(rng.randrange(len(sends) // 3, len(sends) + 1), rng.choice(calls))
            acknowledged: set[tuple[str, str]] = set()
            lock = threading.Lock()
            third_sent = threading.Event()
            counter = itertools.count(1)

            def send(index: int, key: tuple[str, str]) -> None:
                # Like a provider behind a balancer: a refused or failed send goes to the next
                # instance, until one answers 2xx.
                for attempt in range(2 * len(relays)):
                    relay = relays[(index + attempt) % len(relays)]
                    path, body, headers = webhook(*key)
                    try:
                        response = httpx.post(f"{relay.url}{path}", content=body, headers=headers,
                                              timeout=10)
                    except httpx.TransportError:
                        continue
                    if response.is_success:
                        assert response.json()["data"]["status"] in ("accepted", "duplicate")
                        with lock:
                            acknowledged.add(key)
                        break
                if next(counter) >= len(sends) // 3:
                    third_sent.set()

            with ThreadPoolExecutor(6) as pool:
                sent = [pool.submit(send, i, key) for i, key in enumerate(sends)]
                assert third_sent.wait(WAIT)
                fakes[0].wait_for(lambda rs: fakes[0].in_flight >= 1, WAIT)
                victim.kill()  # SIGKILL: no shutdown, its leases stay behind
                killed_at = time.time()
                for future in sent:
                    future.result()
            assert victim.process.returncode == -signal.SIGKILL
            assert acknowledged == set(calls), "the surviving instances should take every webhook"

            # Every acknowledged webhook reaches Roark (a 2xx from a fake) at least once.
            def accepted():
                return [r for fake in fakes for r in fake.accepted()]

            eventually(lambda: acknowledged <= {forwarded_key(r) for r in accepted()}, WAIT,
                       message="acknowledged webhooks were not all forwarded")
            with psycopg.connect(url) as conn:
                eventually(lambda: conn.execute(
                    "SELECT count(*) FILTER (WHERE state <> 'delivered') FROM deliveries"
                ).fetchone()[0] == 0, WAIT)
                rows = conn.execute(
                    "SELECT d.provider, w.call_id, d.attempts, count(a.id) FROM deliveries d "
                    "JOIN webhooks w ON w.id = d.webhook_id "
                    "LEFT JOIN delivery_attempts a ON a.delivery_id = d.id GROUP BY d.id, w.call_id"
                ).fetchall()
            for fake in fakes:  # requests the killed process left behind are answered
                fake.wait_for(lambda rs, fake=fake: fake.in_flight == 0, WAIT)

            # One row per (provider, call id), whichever instances received the copies.
            assert sorted((p, c) for p, c, _, _ in rows) == sorted(calls)
            forwards = Counter(forwarded_key(r) for r in accepted())
            duplicates = sum(n - 1 for n in forwards.values())
            # A claim that never recorded its outcome: attempts counts every claim, and
            # delivery_attempts every outcome recorded under a live lease. Here Roark always
            # answers well within the lease, so such claims are exactly the deliveries that
            # were in flight on the killed process. Only they can have been forwarded
            # twice: once by the killed process (Roark may have taken it just before or
            # even after the kill), and again by a survivor once the lease expired.
            lost = {(p, c): attempts - recorded for p, c, attempts, recorded in rows}
            in_flight_on_killed = sum(lost.values())
            print(f"\nmulti-instance: {len(sends)} webhooks sent ({len(calls)} calls), "
                  f"{sum(forwards.values())} forwarded, {duplicates} forwarded twice after an "
                  f"expired lease, {in_flight_on_killed} in flight on the killed instance, "
                  f"{time.monotonic() - started:.1f} s")
            assert in_flight_on_killed >= 1, "the kill should have caught deliveries in flight"
            assert duplicates <= in_flight_on_killed
            for key, count in forwards.items():
                if count > 1:
                    assert lost[key] >= count - 1, f"{key} forwarded {count} times without a lost lease"
                    first, second = sorted(r.received_at for r in accepted() if forwarded_key(r) == key)[:2]
                    # sent again only after the lease expired, never while it was alive
                    assert second - first >= LEASE - 1.0 and second >= killed_at
            # The survivors' requests all meet Roark's contract (the killed one may have died
            # halfway through sending one).
            problems = [(r.path, r.problems) for fake in fakes[1:] for r in fake.requests if r.problems]
            assert problems == []
        finally:
            for relay in relays:
                if relay.process is not None and relay.process.poll() is None:
                    relay.kill()
            for fake in fakes:
                fake.stop()
