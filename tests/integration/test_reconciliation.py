"""Reconciliation runs against fake VAPI and Retell APIs on 127.0.0.1, on both outbox
backends: paging (with a server that caps `limit`), deduplication against webhooks that
did come, 429 + Retry-After, 5xx and dropped connections, failing part-way and resuming,
refused keys, unreachable APIs and instances taking turns. Sleeps are recorded, never
slept."""

import asyncio
import json

import pytest

from relay.core.metrics import Metrics
from relay.outbox import AsyncOutbox, DeliveryFilter, NewDelivery
from relay.providers import PROVIDERS
from relay.reconciliation.command import reconcile_now
from relay.reconciliation.run import Tally, keep_lease
from relay.reconciliation.service import Reconcilers
from relay.settings import Settings
from relay.testing.behaviours import Accept, RateLimited, Reset, Respond
from relay.testing.fake_providers import FakeRetell, FakeVapi, retell_call, vapi_call
from tests.helpers import ROARK_KEY, free_port, with_call_id

NOW = 1_750_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Sleeps(list):
    """An injected sleep: remembers each wait and returns at once."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def vapi():
    with FakeVapi("vapi-private-key", cap=4) as fake:
        yield fake


@pytest.fixture
def retell():
    with FakeRetell("retell-api-key", cap=3) as fake:
        yield fake


def settings(outbox_url, vapi=None, retell=None, **extra) -> Settings:
    # Unpaced unless a test is about pacing: the sleeps recorded are then the retries' alone.
    env = {"ROARK_API_KEY": ROARK_KEY, "RELAY_DATABASE_URL": outbox_url,
           "RELAY_RECONCILE_REQUEST_INTERVAL_SECONDS": "0"}
    if vapi is not None:
        env |= {"VAPI_API_KEY": vapi.api_key, "VAPI_API_BASE_URL": vapi.url}
    if retell is not None:
        env |= {"RETELL_API_KEY": retell.api_key, "RETELL_API_BASE_URL": retell.url}
    return Settings.from_env({**env, **extra})


class Harness:
    """A relay's reconcilers on `backend`, driven one run at a time."""

    def __init__(self, config: Settings, backend, owner: str = "instance-1") -> None:
        self.clock, self.sleeps, self.metrics = Clock(), Sleeps(), Metrics()
        self.config, self.backend, self.owner = config, backend, owner

    def run(self, name: str) -> Tally:
        async def go() -> Tally:
            outbox = AsyncOutbox(self.backend, self.clock)
            reconcilers = Reconcilers(self.config, outbox, self.metrics, sleep=self.sleeps, clock=self.clock)
            reconcilers.owner = self.owner
            provider, source = PROVIDERS[name], reconcilers.sources[name]
            api = reconcilers.api(provider, source)
            try:
                return await reconcilers.run(provider, source, api)
            finally:
                await api.aclose()
                await outbox.close()
        return asyncio.run(go())

    def state(self, name: str):
        return {s.provider: s for s in self.backend.reconciliations()}[name]

    def rows(self, provider: str):
        listed = self.backend.list_deliveries(DeliveryFilter(provider=provider), None, 1000)
        return sorted((self.backend.get(d.id) for d in listed), key=lambda d: d.call_id)


def webhook_came(backend, provider: str, call_id: str) -> None:
    """Store a webhook as ingest would, for a call whose webhook did arrive."""
    body = with_call_id("vapi/end-of-call-report" if provider == "vapi" else "retell/call_ended", call_id)
    envelope = PROVIDERS[provider].envelope(body)
    backend.insert_many([NewDelivery(provider, envelope.event, envelope.call_id, envelope.dedupe_key, body,
                                     NOW - HOUR)], NOW - HOUR)


def test_vapi_calls_whose_webhook_never_came_are_queued_once(backend, vapi, outbox_url):
    vapi.add(*(vapi_call(f"call-{n:02}", NOW - 20 * HOUR + n * HOUR) for n in range(11)))
    vapi.add(vapi_call("long-call", NOW - HOUR, created_at=NOW - 2 * HOUR, status="in-progress"),
             vapi_call("just-ended", NOW - 100))
    webhook_came(backend, "vapi", "call-03")
    webhook_came(backend, "vapi", "call-07")
    relay = Harness(settings(outbox_url, vapi), backend)

    tally = relay.run("vapi")
    assert (tally.ended, tally.held, tally.queued) == (11, 2, 9)
    rows = relay.rows("vapi")
    queued = [d for d in rows if d.origin == "reconciliation"]
    assert sorted(d.call_id for d in queued) == [f"call-{n:02}" for n in range(11) if n not in (3, 7)]
    assert all(d.event == "end-of-call-report" and json.loads(d.body)["message"]["call"]["id"] == d.call_id
               for d in queued)
    listings = [r for r in vapi.requests if r.path == "/call"]
    assert len(listings) > 3 and all(r.query["limit"] == "50" for r in listings)  # the server capped at 4
    assert relay.state("vapi").reconciled_until == NOW - 600
    assert relay.metrics.reconciled.labels("vapi")._value.get() == 9

    # Next run: the call that had just ended is past its grace; the long call ended since.
    vapi.add(vapi_call("long-call", NOW + 500, created_at=NOW - 2 * HOUR))
    relay.clock.now = NOW + 1200
    tally = relay.run("vapi")
    assert (tally.queued, sorted(tally.queued_calls)) == (2, ["just-ended", "long-call"])
    assert len(relay.rows("vapi")) == 13


def test_retell_fetches_only_the_calls_the_outbox_lacks(backend, retell, outbox_url):
    retell.add(*(retell_call(f"call-{n}", NOW - 10 * HOUR + n * HOUR) for n in range(8)))
    retell.add(retell_call("ongoing", NOW - 2 * HOUR, status="ongoing"))
    for call_id in ("call-1", "call-4", "call-6"):
        webhook_came(backend, "retell", call_id)
    relay = Harness(settings(outbox_url, retell=retell), backend)

    tally = relay.run("retell")
    assert (tally.listed, tally.held, tally.queued) == (8, 3, 5)
    fetched = sorted(r.path.rsplit("/", 1)[1] for r in retell.requests if r.path.startswith("/v2/get-call/"))
    assert fetched == ["call-0", "call-2", "call-3", "call-5", "call-7"]
    listings = [r.json for r in retell.requests if r.path == "/v3/list-calls"]
    assert [body.get("pagination_key") for body in listings] == [None, "call-2", "call-5"]
    stored = {d.call_id: json.loads(d.body) for d in relay.rows("retell") if d.origin == "reconciliation"}
    assert stored["call-0"]["event"] == "call_ended" and "call_analysis" not in stored["call-0"]["call"]
    assert stored["call-0"]["call"]["transcript_object"]  # fetched whole, not the listing's cut


def test_rate_limits_server_errors_and_dropped_connections_are_ridden_out(backend, vapi, outbox_url):
    vapi.add(vapi_call("call-1", NOW - HOUR))
    # aiohttp sends again by itself once when a kept-alive connection drops; twice is an error
    vapi.script(RateLimited("7"), Respond(503), Reset(), Reset())
    relay = Harness(settings(outbox_url, vapi), backend)
    assert relay.run("vapi").queued == 1
    assert relay.sleeps == [7, 2, 4]  # Retry-After honoured, then exponential backoff
    assert relay.state("vapi").last_error is None


def test_a_retry_after_beyond_a_minute_ends_the_run_for_the_next_to_try(backend, vapi, outbox_url):
    vapi.add(vapi_call("call-1", NOW - HOUR))
    vapi.script(RateLimited("3600"))
    relay = Harness(settings(outbox_url, vapi), backend)
    assert relay.run("vapi").queued == 0 and relay.sleeps == []
    state = relay.state("vapi")
    assert "asked the relay to wait 3600 s" in state.last_error and state.failing_since == NOW
    assert state.reconciled_until is None and state.lease_owner is None
    assert relay.run("vapi").queued == 1 and relay.state("vapi").failing_since is None


def test_a_retell_run_that_fails_part_way_resumes_from_its_last_complete_page(backend, retell, outbox_url):
    retell.add(*(retell_call(f"call-{n}", NOW - 10 * HOUR + n * HOUR) for n in range(7)))
    # list, 3 fetches, list, 3 fetches, then the third page keeps failing
    retell.script(*[Accept()] * 8, *[Respond(500)] * 5)
    relay = Harness(settings(outbox_url, retell=retell), backend)
    assert relay.run("retell").queued == 6
    state = relay.state("retell")
    assert state.pending_token == "call-5" and "failed 5 times, last: HTTP 500" in state.last_error

    before = len(retell.requests)
    relay.clock.now += 900
    retell.add(retell_call("call-later", NOW + 100))
    tally = relay.run("retell")
    assert tally.queued_calls == ["call-6", "call-later"]  # the window left part-way, then the time since
    resumed = [r.json for r in retell.requests[before:] if r.path == "/v3/list-calls"]
    assert [body.get("pagination_key") for body in resumed] == ["call-5", None]
    assert resumed[1]["filter_criteria"]["end_timestamp"]["value"][0] == (state.pending_end - 300) * 1000
    assert relay.state("retell").reconciled_until == NOW + 300 and relay.state("retell").pending_token is None
    assert len(relay.rows("retell")) == 8


def test_a_resume_the_provider_refuses_starts_the_window_again(backend, retell, outbox_url):
    retell.add(*(retell_call(f"call-{n}", NOW - 10 * HOUR + n * HOUR) for n in range(4)))
    retell.script(*[Accept()] * 4, *[Respond(500)] * 5)
    relay = Harness(settings(outbox_url, retell=retell), backend)
    relay.run("retell")
    assert relay.state("retell").pending_token == "call-2"
    retell.script(Respond(400, {"status": "error", "message": "invalid pagination_key"}))
    relay.run("retell")
    state = relay.state("retell")
    assert "HTTP 400" in state.last_error and state.pending_token is None
    before = len(retell.requests)
    assert relay.run("retell").queued == 1
    assert retell.requests[before].json.get("pagination_key") is None


def test_a_vapi_run_that_fails_part_way_resumes_past_the_calls_it_stored(backend, vapi, outbox_url):
    vapi.add(*(vapi_call(f"call-{n}", NOW - 10 * HOUR + n * HOUR) for n in range(10)))
    vapi.script(Accept(), Accept(), *[Respond(502)] * 5)
    relay = Harness(settings(outbox_url, vapi), backend)
    assert relay.run("vapi").queued == 7  # two pages of four, the oldest of the first listed again
    token = relay.state("vapi").pending_token
    assert token.startswith("Le:")
    before = len(vapi.requests)
    assert relay.run("vapi").queued == 3
    assert vapi.requests[before].query["createdAtLe"] == token.removeprefix("Le:")
    assert len(relay.rows("vapi")) == 10


def test_a_refused_key_fails_at_once_naming_the_variable(backend, vapi, outbox_url):
    relay = Harness(settings(outbox_url, vapi, VAPI_API_KEY="not-the-key"), backend)
    relay.run("vapi")
    assert relay.sleeps == [] and len(vapi.requests) == 1
    assert "VAPI refused VAPI_API_KEY (HTTP 401" in relay.state("vapi").last_error
    assert relay.metrics.reconcile_runs.labels("vapi", "failed")._value.get() == 1


def test_a_call_gone_between_listing_and_fetching_is_skipped(backend, retell, outbox_url):
    retell.add(retell_call("call-1", NOW - HOUR), retell_call("call-2", NOW - HOUR))
    real_answer = retell.answer

    def vanishing(method, path, query, body):
        if path == "/v2/get-call/call-1":
            return 404, {"status": "error", "message": "Not Found"}
        return real_answer(method, path, query, body)

    retell.answer = vanishing
    tally = Harness(settings(outbox_url, retell=retell), backend).run("retell")
    assert (tally.queued, tally.gone, tally.queued_calls) == (1, 1, ["call-2"])


def test_instances_take_turns_and_a_lease_left_by_a_crash_runs_out(backend, vapi, outbox_url):
    vapi.add(vapi_call("call-1", NOW - HOUR))
    relay = Harness(settings(outbox_url, vapi), backend)
    lease = relay.config.reconcile_lease_seconds
    backend.lease_reconciliation("vapi", "crashed-instance", NOW - 10, NOW - 10 + lease)
    assert relay.run("vapi").window is None and vapi.requests == []
    assert relay.metrics.reconcile_runs.labels("vapi", "skipped")._value.get() == 1
    relay.clock.now = NOW - 10 + lease
    assert relay.run("vapi").queued == 1


def test_relay_reconcile_says_what_it_found_and_fails_on_an_unreachable_api(backend, vapi, retell, outbox_url):
    vapi.add(vapi_call("call-1", NOW - HOUR), vapi_call("call-2", NOW - 2 * HOUR))
    webhook_came(backend, "vapi", "call-2")
    unreachable = f"http://127.0.0.1:{free_port()}"
    config = settings(outbox_url, vapi, retell, RETELL_API_BASE_URL=unreachable)
    lines: list[tuple[str, bool]] = []
    sleeps = Sleeps()
    ok = asyncio.run(reconcile_now(config, backend, ["vapi", "retell"], None, False,
                                   lambda line, error: lines.append((line, error)), sleep=sleeps,
                                   clock=Clock()))
    assert not ok and sleeps == [1, 2, 4, 8]
    assert lines[0] == ("vapi: 2025-06-14T15:06:40Z to 2025-06-15T14:56:40Z: 2 calls listed, 2 ended, "
                        "1 already held, 1 queued", False)
    assert lines[1] == ("  queued: call-1", False)
    assert lines[2][1] and lines[2][0].startswith(f"retell: FAILED: Retell POST {unreachable}/v3/list-calls "
                                                  "failed 5 times, last: ")


# --- bounds: what a run may hold, list and take, whatever the provider sends ------------


def test_a_page_too_large_is_asked_for_again_with_half_as_many_calls(backend, outbox_url):
    with FakeVapi("vapi-private-key") as vapi:
        vapi.add(*(vapi_call(f"call-{n}", NOW - HOUR - n) for n in range(10)), transcript_bytes=12_000)
        relay = Harness(settings(outbox_url, vapi, RELAY_RECONCILE_MAX_ANSWER_BYTES="65536"), backend)
        assert relay.run("vapi").queued == 10
        limits = [r.query["limit"] for r in vapi.requests]
        # 10 calls of 16 KB do not fit in 64 KiB, 6 do not either; 3 do, for the rest of the window
        assert limits[:5] == ["50", "25", "12", "6", "3"] and set(limits[5:]) == {"3"}
        assert relay.sleeps == [] and relay.state("vapi").last_error is None  # never asked again as it was

        vapi.add(vapi_call("long-call", NOW - 700), transcript_bytes=100_000)
        relay.clock.now += 900
        assert relay.run("vapi").queued == 0
    error = relay.state("vapi").last_error
    assert error.startswith("VAPI's answer to GET /call is larger than RELAY_RECONCILE_MAX_ANSWER_BYTES (65536) "
                            "allows") and error.endswith("with one call a page: raise "
                                                         "RELAY_RECONCILE_MAX_ANSWER_BYTES to reconcile that call")
    assert [r.query["limit"] for r in vapi.requests][-6:] == ["50", "25", "12", "6", "3", "1"] and relay.sleeps == []


def test_an_endless_listing_stops_at_the_page_cap_and_the_next_run_goes_on(backend, retell, outbox_url):
    retell.endless = "fresh"
    relay = Harness(settings(outbox_url, retell=retell, RELAY_RECONCILE_MAX_PAGES="5"), backend)
    assert relay.run("retell").queued == 5
    state = relay.state("retell")
    assert state.last_error == ("Retell reconciliation stopped after 5 pages, as many as one run may list "
                                "(RELAY_RECONCILE_MAX_PAGES); the progress up to the last page stored is kept")
    assert state.pending_token == "endless-5" and state.lease_owner is None
    assert relay.metrics.reconcile_runs.labels("retell", "failed")._value.get() == 1

    before = len(retell.requests)
    assert relay.run("retell").queued == 5
    listings = [r.json for r in retell.requests[before:] if r.path == "/v3/list-calls"]
    assert len(listings) == 5 and listings[0]["pagination_key"] == "endless-5"
    assert relay.state("retell").pending_token == "endless-10"


def test_a_run_stops_once_it_has_taken_as_long_as_it_may(backend, retell, outbox_url):
    retell.endless = "fresh"
    relay = Harness(settings(outbox_url, retell=retell, RELAY_RECONCILE_MAX_RUN_SECONDS="250"), backend)
    listing = retell.answer

    def slow_listing(method, path, query, body):  # each page takes 100 s of the run's clock
        relay.clock.now += 100 if path == "/v3/list-calls" else 0
        return listing(method, path, query, body)

    retell.answer = slow_listing
    assert relay.run("retell").queued == 3
    state = relay.state("retell")
    assert state.last_error.startswith("Retell reconciliation stopped after 5 min and 3 pages, as long as one "
                                       "run may last (RELAY_RECONCILE_MAX_RUN_SECONDS)")
    assert state.pending_token == "endless-3"


@pytest.mark.parametrize("answers, why", [
    ("repeat", "all its 3 calls were listed before"),
    ([{"items": [], "has_more": True, "pagination_key": "same"}] * 2, "its pagination token 'same' came before"),
])
def test_a_listing_that_repeats_a_page_stops_the_run(backend, retell, outbox_url, answers, why):
    retell.add(*(retell_call(f"call-{n}", NOW - HOUR + n) for n in range(4)))
    if answers == "repeat":
        retell.endless = "repeat"
    else:
        retell.script(*(Respond(200, answer) for answer in answers))
    relay = Harness(settings(outbox_url, retell=retell), backend)
    relay.run("retell")
    listings = [r for r in retell.requests if r.path == "/v3/list-calls"]
    assert len(listings) == 2
    assert relay.state("retell").last_error == (f"Retell repeated a page ({why}), so its listing would never "
                                                "end: the run stops there")


def test_requests_to_a_provider_are_paced(backend, retell, outbox_url):
    retell.add(*(retell_call(f"call-{n}", NOW - HOUR + n) for n in range(4)))
    retell.script(Accept(), Respond(503))  # the first get-call is tried again
    relay = Harness(settings(outbox_url, retell=retell, RELAY_RECONCILE_REQUEST_INTERVAL_SECONDS="2"), backend)
    answer = retell.answer

    def taking_half_a_second(method, path, query, body):
        relay.clock.now += 0.5
        return answer(method, path, query, body)

    retell.answer = taking_half_a_second
    assert relay.run("retell").queued == 4
    # list, get (503), get again, 2 gets, list, get: each starts 2 s after the one before
    # began, of which the answer took 0.5; a try again waits the interval too (its backoff is 1 s)
    assert len(retell.requests) == 7 and relay.sleeps == [1.5, 2, 1.5, 1.5, 1.5, 1.5]


def test_a_run_renews_its_lease_while_it_lives(backend, outbox_url):
    clock = Clock()

    async def renewing() -> None:
        outbox = AsyncOutbox(backend, clock)
        waits = []

        async def wait(seconds: float) -> None:
            if len(waits) == 3:
                raise asyncio.CancelledError  # the run ended
            waits.append(seconds)
            clock.now += seconds

        try:
            with pytest.raises(asyncio.CancelledError):
                await keep_lease(outbox, "vapi", "instance-1", 60, clock, wait)
        finally:
            await outbox.close()
        assert waits == [20, 20, 20]

    backend.lease_reconciliation("vapi", "instance-1", NOW, NOW + 60)
    asyncio.run(renewing())
    assert backend.lease_reconciliation("vapi", "instance-2", NOW + 100, NOW + 160) is None  # renewed to NOW + 120
    assert backend.lease_reconciliation("vapi", "instance-2", NOW + 120, NOW + 180) is not None
    assert not backend.renew_reconciliation("vapi", "instance-1", NOW + 200)  # taken over: renewing ends
