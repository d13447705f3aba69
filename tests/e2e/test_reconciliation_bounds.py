"""Reconciliation, attacked (hardening round three, 3, 5 and 8): a real `relay serve`
whose forwarding process reconciles against fake provider APIs that send pages of long
calls, die mid-run, never stop paging, or trickle an answer.

Before, a VAPI page of 50 long calls, or Retell calls of a megabyte each, were decoded
whole and their webhooks built all at once: the forwarding process was OOM-killed in a
512 MB machine, and the dead run's 15-minute lease kept both providers from being
reconciled while /health said all was well. A listing that always had more was followed
for ever. Now a run holds about one answer and one call, a dead run's lease is short and
reported, and a run lists so many pages at most.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import httpx
import pytest

from relay.testing.behaviours import Accept, Slow, Trickle
from relay.testing.fake_providers import FakeRetell, FakeVapi, retell_call, vapi_call
from tests.e2e.conftest import SMALL_MACHINE_BYTES
from tests.helpers import RETELL_KEY, eventually

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "rC4nT8wQ1zL6yH3kM9vB2xJ7pF5dS0gE"
VAPI_KEY = "vapi-private-key-0123456789"
WAIT = 20
#: What the forwarding process may reach at most, as the other memory tests allow: the
#: relay itself, a run's answer (RELAY_RECONCILE_MAX_ANSWER_BYTES) and call a few times
#: over as they are read, built and stored, and the deliveries in flight beside it.
FORWARDING_PEAK_BYTES = SMALL_MACHINE_BYTES // 2


def reconciling(relay_env: dict[str, str], retell: FakeRetell, vapi: FakeVapi | None = None,
                **settings: str) -> dict[str, str]:
    """A relay that reconciles once at start, every call that ended up to now."""
    env = {**relay_env, "RETELL_API_BASE_URL": retell.url, "RELAY_RECONCILE_INTERVAL_SECONDS": "3600",
           "RELAY_RECONCILE_GRACE_SECONDS": "0", "RELAY_ADMIN_TOKEN": ADMIN_TOKEN, **settings}
    if vapi is not None:
        env |= {"VAPI_API_KEY": vapi.api_key, "VAPI_API_BASE_URL": vapi.url}
    return env


def query(env: dict[str, str], sql: str, *params: object) -> list[tuple]:
    """Read the relay's SQLite outbox (bodies left alone: they are megabytes)."""
    with sqlite3.connect(env["RELAY_DATABASE_URL"].removeprefix("sqlite:///")) as conn:
        return conn.execute(sql, params).fetchall()


def reconciled(env: dict[str, str], provider: str) -> set[str]:
    return {call_id for (call_id,) in query(
        env, "SELECT call_id FROM webhooks WHERE provider = ? AND origin = 'reconciliation'", provider)}


def run_state(env: dict[str, str], provider: str) -> dict:
    found = query(env, "SELECT lease_owner, last_run_at, last_error FROM reconciliation WHERE provider = ?", provider)
    return dict(zip(("lease_owner", "last_run_at", "last_error"), found[0], strict=True)) if found else {}


def waited(relay, condition, failure: str, cgroup=None):
    """`condition`'s first truthy value within WAIT seconds; else a failure saying what
    the relay logged (and how often its processes were killed for memory)."""
    try:
        return eventually(condition, WAIT)
    except AssertionError:
        killed = f" ({cgroup.oom_kills} processes killed for memory)" if cgroup is not None else ""
        raise AssertionError(f"{failure}{killed}; log:\n{relay.logs()[-3000:]}") from None


def peak(pid: int) -> int:
    """A process's peak resident memory so far."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def survived_in_bounds(relay, forwarding: int, cgroup, record_property) -> None:
    """The forwarding process is the one started with the relay, and its peak (and the
    machine's) stayed far below what a small machine has."""
    assert relay.process.poll() is None and relay.children() == [forwarding], "the forwarding process died"
    figures = {"forwarding_peak_mib": peak(forwarding) // 2**20, "relay_peak_mib": relay.peak_rss() // 2**20}
    if cgroup is not None:
        figures |= {"cgroup_peak_mib": cgroup.peak // 2**20, "oom_kills": cgroup.oom_kills}
    for name, value in figures.items():
        record_property(name, value)
    assert figures.get("oom_kills", 0) == 0, figures
    assert peak(forwarding) < FORWARDING_PEAK_BYTES, figures


def test_vapi_pages_of_long_calls_are_read_a_few_calls_at_a_time(start_relay, relay_env, small_machine,
                                                                 record_property):
    with FakeVapi(VAPI_KEY) as vapi, FakeRetell(RETELL_KEY) as retell:
        now = time.time()
        # A page of 50 is 60 MB, under the 64 MB the relay read before, and far more as objects.
        vapi.add(*(vapi_call(f"long-{n}", now - 60 - n) for n in range(50)), transcript_bytes=1_200_000)
        env = reconciling(relay_env, retell, vapi)
        relay = start_relay(env, cgroup=small_machine)
        [forwarding] = relay.children()
        waited(relay, lambda: len(reconciled(env, "vapi")) == 50, "not every long call was stored", small_machine)
        waited(relay, lambda: '"event":"reconcile_finished"' in relay.logs(), "the run did not end", small_machine)
        survived_in_bounds(relay, forwarding, small_machine, record_property)
        limits = [int(r.query["limit"]) for r in vapi.requests if r.path == "/call"]
    assert limits[:3] == [50, 25, 12] and max(limits[3:]) == 12  # 12 calls are 14.4 MB, under 16 MiB


def test_retell_calls_of_a_megabyte_are_stored_one_at_a_time(start_relay, relay_env, small_machine,
                                                             record_property):
    with FakeRetell(RETELL_KEY, cap=50) as retell:
        retell.omitted = ()  # listed whole, transcripts and all: 50 MB a page
        now = time.time()
        retell.add(*(retell_call(f"long-{n}", now - 60 - n) for n in range(50)), transcript_bytes=1_000_000)
        env = reconciling(relay_env, retell)
        relay = start_relay(env, cgroup=small_machine)
        [forwarding] = relay.children()
        waited(relay, lambda: len(reconciled(env, "retell")) == 50, "not every long call was stored", small_machine)
        waited(relay, lambda: '"event":"reconcile_finished"' in relay.logs(), "the run did not end", small_machine)
        survived_in_bounds(relay, forwarding, small_machine, record_property)


def test_a_run_whose_process_died_is_reported_and_taken_over_after_its_lease(start_relay, relay_env):
    with FakeRetell(RETELL_KEY) as retell:
        retell.add(retell_call("call-1", time.time() - 60))
        retell.script(Accept(), Slow(60))  # the run hangs on its get-call, and is killed there
        env = reconciling(relay_env, retell, RELAY_RECONCILE_LEASE_SECONDS="5")
        relay = start_relay(env)
        [forwarding] = relay.children()
        owner = eventually(lambda: run_state(env, "retell").get("lease_owner"), WAIT)
        assert f":{forwarding}:" in owner
        eventually(lambda: retell.scripted == 0, WAIT)  # listed, and the get-call is under way
        os.kill(forwarding, signal.SIGKILL)

        def health() -> dict:
            return httpx.get(f"{relay.url}/health", headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                             timeout=5).json()["data"]

        reported = waited(relay, lambda: (data := health())["problems"] and data, "/health said nothing")
        assert reported["status"] == "degraded" and reported["dependencies"]["reconciliation"] == "degraded"
        [problem] = reported["problems"]
        assert problem.startswith(f"Retell reconciliation run by {owner} stopped without finishing")
        page = httpx.get(f"{relay.url}/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
        assert f"a run by {owner} stopped without finishing" in page
        summary = httpx.get(f"{relay.url}/admin/api/summary", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert summary.json()["data"]["reconciliation"]["retell"]["stopped_run_owner"] == owner

        # The forwarding process the relay started again takes the run over once the lease ran out.
        waited(relay, lambda: reconciled(env, "retell") == {"call-1"}, "the run was not taken over")
        state = eventually(lambda: (state := run_state(env, "retell"))["last_run_at"] and state, WAIT)
        assert state["lease_owner"] is None and state["last_error"] is None
        assert forwarding not in relay.children()
        assert health()["problems"] == [] and '"event":"reconcile_skipped"' in relay.logs()


def test_an_endless_listing_ends_the_run_at_the_page_cap(start_relay, relay_env):
    with FakeRetell(RETELL_KEY) as retell:
        retell.endless = "fresh"
        env = reconciling(relay_env, retell, RELAY_RECONCILE_MAX_PAGES="20")
        relay = start_relay(env)
        waited(relay, lambda: '"event":"reconcile_failed"' in relay.logs(), "the run did not end")
        listings = [r for r in retell.requests if r.path == "/v3/list-calls"]
    failed = next(line for line in relay.logs().splitlines() if '"event":"reconcile_failed"' in line)
    assert "stopped after 20 pages" in failed and "RELAY_RECONCILE_MAX_PAGES" in failed
    assert len(listings) == 20 and run_state(env, "retell")["last_error"].startswith(
        "Retell reconciliation stopped after 20 pages")


def test_a_get_call_that_trickles_is_cut_at_its_deadline_and_tried_again(start_relay, relay_env):
    with FakeRetell(RETELL_KEY) as retell:
        retell.add(retell_call("call-1", time.time() - 60))
        retell.script(Accept(), Trickle(0.5))  # a byte every half second, for a quarter of an hour
        env = reconciling(relay_env, retell, RELAY_RECONCILE_TIMEOUT_SECONDS="1")
        relay = start_relay(env)
        waited(relay, lambda: reconciled(env, "retell") == {"call-1"}, "the trickling get-call was never cut")
    retry = next(line for line in relay.logs().splitlines() if '"event":"reconcile_api_retry"' in line)
    assert '"request":"GET /v2/get-call/call-1"' in retry and "no whole answer within 1 s" in retry
