"""Upstream chaos: a real `relay serve` in front of a fake Roark that fails a share of
requests with 500, 502, 503 (with and without Retry-After), 429 with Retry-After or
retry-after-ms, timeouts and connection resets.

What it shows:
- every delivery ends delivered, each attempt is recorded once, attempts are numbered
  1..n with n within RELAY_RETRY_MAX_ATTEMPTS, and consecutive attempts of a delivery
  are never closer than the policy's backoff (jitter included) nor than Retry-After;
- nothing is sent to a rate-limited upstream before its Retry-After: neither the
  delivery that was told to wait nor any other (checked on the relay's own attempt
  records with several deliveries in flight, and on the fake's arrival times with one);
- a delivery that always fails stops after exactly RELAY_RETRY_MAX_ATTEMPTS, on schedule.

RELAY_CHAOS_SHARE sets the share of failed requests (default 0.5); RELAY_CHAOS_CALLS
the number of webhooks.
"""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
import time
from collections import defaultdict

import pytest

from relay.core.backoff import RetryPolicy, backoff_delay
from relay.testing.behaviours import RateLimited, Reset, Respond, Slow
from relay.testing.roark_contract import error_body
from tests.e2e.conftest import rows
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

SHARE = float(os.environ.get("RELAY_CHAOS_SHARE", "0.5"))
CALLS = int(os.environ.get("RELAY_CHAOS_CALLS", "40"))
WAIT = max(90, CALLS)  # upper bound for everything to settle; never slept
TIMEOUT = 1.0  # ROARK_TIMEOUT_SECONDS
CLOCK_SLACK = 0.005  # the attempt records round nothing, but clocks tick in steps


def attempts_for(share: float, calls: int, risk: float = 1e-6) -> int:
    """Enough attempts that any delivery failing them all (share ** attempts, per
    delivery) stays below `risk` for the whole run: the test must not be a lottery."""
    if share <= 0:
        return 12
    if share >= 0.95:
        raise ValueError("RELAY_CHAOS_SHARE must stay below 0.95 for deliveries to get through")
    return max(12, math.ceil(math.log(risk / calls) / math.log(share)))


POLICY = RetryPolicy(max_attempts=attempts_for(SHARE, CALLS), base_delay=0.05, max_delay=0.4)


def waiting(status: int, code: str, **headers: str) -> Respond:
    """A failure whose error code names the wait it asks for (the relay records the
    code with the attempt, so the test can tell which Retry-After each attempt got)."""
    return Respond(status, error_body(status, "try later", code), headers)


CHAOS = [
    Respond(500), Respond(502), Respond(503),
    waiting(503, "wait_1000ms", **{"Retry-After": "1"}),
    RateLimited("1"),  # rate_limit_exceeded: 1 s
    waiting(429, "wait_300ms", **{"Retry-After": "5", "retry-after-ms": "300"}),  # ms wins
    Slow(TIMEOUT + 0.5),  # the relay times out first
    Reset(),
]


def asked_wait(status: int | None, error: str | None) -> float:
    """The Retry-After the fake sent with this answer (0 when none)."""
    if error and "wait_1000ms" in error:
        return 1.0
    if error and "wait_300ms" in error:
        return 0.3
    if status == 429:
        return 1.0
    return 0.0


def chaos_env(relay_env: dict[str, str], concurrency: int) -> dict[str, str]:
    return {
        **relay_env,
        "ROARK_TIMEOUT_SECONDS": str(TIMEOUT),
        "RELAY_LEASE_SECONDS": "5",
        "RELAY_RETRY_BASE_SECONDS": str(POLICY.base_delay),
        "RELAY_RETRY_MAX_DELAY_SECONDS": str(POLICY.max_delay),
        "RELAY_RETRY_MAX_ATTEMPTS": str(POLICY.max_attempts),
        "RELAY_FORWARD_CONCURRENCY": str(concurrency),
    }


def send_calls(relay, scan, prefix: str, count: int) -> None:
    for i in range(count):
        if i % 2:
            body, headers = with_call_id("vapi/end-of-call-report", f"{prefix}-{i}"), vapi_headers()
            path = "/webhooks/vapi"
        else:
            body = with_call_id("retell/call_ended", f"{prefix}-{i}")
            headers, path = retell_headers(body), "/webhooks/retell"
        scan.forbid_headers(headers)
        response = relay.post(path, body, headers)
        scan.served(response)
        assert response.status_code == 200, response.text


def attempts(env: dict[str, str]) -> dict[int, list[sqlite3.Row]]:
    path = env["RELAY_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        by_delivery = defaultdict(list)
        for row in conn.execute("SELECT * FROM delivery_attempts ORDER BY delivery_id, attempt, id"):
            by_delivery[row["delivery_id"]].append(row)
        return by_delivery


def ended(row: sqlite3.Row) -> float:
    return row["started_at"] + row["duration_ms"] / 1000


def check_schedule(history: list[sqlite3.Row], policy: RetryPolicy) -> list[str]:
    """How a delivery's attempts break the policy: numbering, count, spacing."""
    problems = []
    if [a["attempt"] for a in history] != list(range(1, len(history) + 1)):
        problems.append(f"attempts numbered {[a['attempt'] for a in history]}")
    if len(history) > policy.max_attempts:
        problems.append(f"{len(history)} attempts > {policy.max_attempts}")
    for before, after in itertools.pairwise(history):
        gap = after["started_at"] - ended(before)
        lowest = max(backoff_delay(policy, before["attempt"], lambda: 0.0),
                     asked_wait(before["status_code"], before["error"]))
        if gap < lowest - CLOCK_SLACK:
            problems.append(f"attempt {after['attempt']} {gap:.3f} s after the previous "
                            f"({before['status_code']} {before['error']}); policy says >= {lowest:.3f} s")
    return problems


# The forwarder re-checks the gate before sending (tests/integration/test_rate_limit_gate.py),
# so no attempt may start inside a Retry-After at all.
CLAIM_RACE_WINDOW = 0.0


def rate_limit_breaches(by_delivery: dict[int, list[sqlite3.Row]], window: float = 0.0) -> list[str]:
    """Attempts of any delivery started after the relay read a Retry-After (later than
    `window` after it) and before it ran out. Requests already on their way when the
    answer came are fine."""
    everything = sorted((a for history in by_delivery.values() for a in history), key=lambda a: a["started_at"])
    breaches = []
    for told in everything:
        wait = asked_wait(told["status_code"], told["error"])
        if not wait:
            continue
        seen = ended(told)
        for other in everything:
            if seen + max(window, CLOCK_SLACK) < other["started_at"] < seen + wait - CLOCK_SLACK:
                breaches.append(f"delivery {other['delivery_id']} attempt {other['attempt']} sent "
                                f"{other['started_at'] - seen:.3f} s after a {told['status_code']} "
                                f"asking for {wait:g} s")
    return breaches


@pytest.mark.timeout(180)
def test_every_delivery_ends_delivered_within_the_policy(start_relay, relay_env, fake_roark, tmp_path,
                                                         secret_scan, record_property):
    started = time.monotonic()
    env = chaos_env(relay_env, concurrency=4)
    fake_roark.chaos(SHARE, CHAOS, seed=1234)
    relay = start_relay(env)
    send_calls(relay, secret_scan, "chaos", CALLS)

    def settled():
        stored = rows(env)
        done = len(stored) == CALLS and all(r["state"] in ("delivered", "failed") for r in stored)
        return stored if done and fake_roark.in_flight == 0 else None

    stored = eventually(settled, WAIT, interval=0.1,
                        message=f"not settled: {sorted((r['state'], r['attempts']) for r in rows(env))}")
    secret_scan.logged(tmp_path / "relay.log")
    assert [r["state"] for r in stored] == ["delivered"] * CALLS, [(r["call_id"], r["last_error"]) for r in stored
                                                                   if r["state"] != "delivered"]
    by_delivery = attempts(env)
    problems = {r["id"]: check_schedule(by_delivery[r["id"]], POLICY) for r in stored}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    for row in stored:
        history = by_delivery[row["id"]]
        assert len(history) == row["attempts"]
        assert history[-1]["outcome"] == "delivered" and history[-1]["status_code"] == 201
        assert all(a["outcome"] == "retryat" for a in history[:-1])

    # Each attempt reached the fake exactly once (resets and timeouts included).
    sent = defaultdict(int)
    for request in fake_roark.requests:
        payload = request.json and (request.json.get("vapi_end_of_call_report_payload")
                                    or request.json.get("retell_call_ended_payload"))
        call = payload.get("call", {}) if payload else {}
        sent[call.get("id") or call.get("call_id")] += 1
    assert {r["call_id"]: r["attempts"] for r in stored} == dict(sent)

    breaches = rate_limit_breaches(by_delivery, CLAIM_RACE_WINDOW)
    claim_races = rate_limit_breaches(by_delivery)
    # Counted on the relay's side: a request the fake held past the relay's timeout is
    # recorded by the fake with the 201 nobody read.
    total = sum(len(h) for h in by_delivery.values())
    failed = sum(1 for h in by_delivery.values() for a in h if a["outcome"] != "delivered")
    statuses = defaultdict(int)
    for history in by_delivery.values():
        for a in history:
            statuses[a["status_code"] or (a["error"] or "?").split(" ")[0].split(":")[0]] += 1
    figures = {
        "deliveries": CALLS,
        "requests": len(fake_roark.requests),
        "chaos_share_configured": SHARE,
        "failed_share_observed": round(failed / total, 2),
        "max_attempts_allowed": POLICY.max_attempts,
        "attempt_results": dict(statuses),
        "max_attempts_used": max(len(h) for h in by_delivery.values()),
        "sent_during_retry_after_claim_race": len(claim_races),
        "sent_during_retry_after_otherwise": len(breaches),
        "seconds": round(time.monotonic() - started, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    assert not breaches, breaches[:10]


@pytest.mark.timeout(120)
def test_nothing_reaches_a_rate_limited_upstream_before_retry_after(start_relay, relay_env, fake_roark,
                                                                   tmp_path, secret_scan):
    # One delivery at a time, so the fake's arrival times alone prove the point.
    env = chaos_env(relay_env, concurrency=1)
    fake_roark.chaos(0.5, [RateLimited("1"), Respond(503, headers={"retry-after-ms": "400"})], seed=99)
    relay = start_relay(env)
    send_calls(relay, secret_scan, "limited", 12)
    eventually(lambda: [r["state"] for r in rows(env)] == ["delivered"] * 12, WAIT, interval=0.1,
               message=f"not delivered: {[r['state'] for r in rows(env)]}")
    secret_scan.logged(tmp_path / "relay.log")
    requests = sorted(fake_roark.requests, key=lambda r: r.received_at)
    told = 0
    for before, after in itertools.pairwise(requests):
        wait = {429: 1.0, 503: 0.4}.get(before.status, 0.0)
        told += bool(wait)
        assert after.received_at - before.received_at >= wait, (
            f"a request arrived {after.received_at - before.received_at:.3f} s after a "
            f"{before.status} asking for {wait} s")
    assert told >= 3  # the seed makes sure the gate was exercised


@pytest.mark.timeout(60)
def test_a_delivery_that_always_fails_stops_after_max_attempts_on_schedule(start_relay, relay_env,
                                                                           fake_roark, tmp_path, secret_scan):
    policy = RetryPolicy(max_attempts=5, base_delay=0.05, max_delay=0.4)
    env = {**chaos_env(relay_env, concurrency=2), "RELAY_RETRY_MAX_ATTEMPTS": str(policy.max_attempts)}
    fake_roark.set_default(Respond(502))
    relay = start_relay(env)
    send_calls(relay, secret_scan, "doomed", 3)
    stored = eventually(lambda: (r := rows(env)) and all(x["state"] == "failed" for x in r) and r, WAIT,
                        interval=0.05)
    secret_scan.logged(tmp_path / "relay.log")
    by_delivery = attempts(env)
    for row in stored:
        history = by_delivery[row["id"]]
        assert row["attempts"] == len(history) == policy.max_attempts
        assert not check_schedule(history, policy)
        for before, after in itertools.pairwise(history):
            gap = after["started_at"] - ended(before)
            # not later than the longest jittered delay plus a poll and some scheduling
            assert gap <= backoff_delay(policy, before["attempt"], lambda: 1.0) + 1.0
        assert "gave up after 5 attempts" in row["last_error"]
    assert len(fake_roark.requests) == 3 * policy.max_attempts
