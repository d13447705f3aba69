"""Fetching Roark's verdicts (RELAY_RESULTS) in the forwarding process: every poll it owes
a fetch of each kind to the calls newly delivered to Roark, claims the due fetches under
a lease, asks Roark, and records what it answered; once a verdict has finished, it owes
it to the destinations that ask for it (`roark:evaluation`, `roark:sentiment`).

    404            Roark does not know the call yet: asked again later
    429            asked again no sooner than its Retry-After
    401, 403       fetching pauses RELAY_AUTH_PAUSE_SECONDS, saying why (as delivery does)
    anything else  asked again, waits doubling, until RELAY_RESULTS_GIVE_UP_SECONDS

Nothing here touches a delivery's state: a fetch that fails leaves the delivery delivered.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import httpx
import msgspec
import structlog

from relay import __version__
from relay.core.errors import StoreUnavailable
from relay.core.metrics import Metrics
from relay.core.periodic import every
from relay.core.transport import Transport, describe_error, parse_retry_after, request_timeout
from relay.outbox import AsyncOutbox, NewDelivery, Result, ResultState
from relay.results.verdict import Timing, finished, next_fetch, verdict
from relay.settings import Settings

log = structlog.get_logger("relay.results")

PATHS = {"evaluation": "/v1/call/{}/evaluation-run", "sentiment": "/v1/call/{}/sentiment-run"}
EVENT_TYPES = {"evaluation": "roark.evaluation.completed", "sentiment": "roark.sentiment.completed"}
#: Evaluations carry evidence and metrics: larger than an upload's answer.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
#: Calls newly delivered, scheduled per statement.
SCHEDULE_BATCH = 1000
#: Deliveries are looked at again this far back: one committed a moment late is not missed.
SCHEDULE_OVERLAP_SECONDS = 5.0


def event_body(kind: str, result: Result, data: object) -> bytes:
    """What a destination receives: the spec's `data` exactly as Roark answered it."""
    return msgspec.json.encode({"type": EVENT_TYPES[kind], "provider": result.provider,
                                "provider_call_id": result.call_id, "roark_call_id": result.roark_call_id,
                                "data": data})


class ResultFetcher:
    def __init__(self, settings: Settings, outbox: AsyncOutbox, metrics: Metrics,
                 transport: httpx.AsyncBaseTransport | None = None, clock: Callable[[], float] = time.time) -> None:
        assert settings.roark_api_key is not None  # forwarding settings require it
        self._settings = settings
        self._outbox = outbox
        self._metrics = metrics
        self._clock = clock
        self._timing = Timing(settings.results_delay_seconds, settings.results_max_delay_seconds,
                              settings.results_give_up_seconds)
        self._client = httpx.AsyncClient(
            base_url=settings.roark_base_url.rstrip("/"), timeout=request_timeout(settings.roark_timeout_seconds),
            transport=transport or Transport(max_connections=settings.results_concurrency,
                                             proxy=settings.roark_proxy, max_response_bytes=MAX_ANSWER_BYTES),
            headers={"Authorization": f"Bearer {settings.roark_api_key.reveal()}",
                     "User-Agent": f"roark-relay/{__version__}"})
        self._scheduled_after: float | None = None
        self._paused_until = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(every(self._settings.poll_interval_seconds, self._stop, self._poll),
                                         name="relay-results")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._client.aclose()

    async def _poll(self) -> None:
        try:
            await self.poll()
        except StoreUnavailable as error:  # the next poll tries again; nothing is lost
            log.warning("results_poll_failed", error=str(error))

    async def poll(self) -> int:
        """Schedule what was newly delivered, then fetch what is due; returns how many were fetched."""
        now = self._clock()
        await self.schedule(now)
        if now < self._paused_until:
            return 0
        claimed = await self._outbox.claim_results(secrets.token_hex(8), now,
                                                   self._settings.roark_timeout_seconds * 2 + 10,
                                                   self._settings.results_concurrency)
        await asyncio.gather(*(self._fetch(result) for result in claimed))
        return len(claimed)

    async def schedule(self, now: float) -> None:
        """Owe a fetch of each kind to every call delivered to Roark since the last poll."""
        settings, outbox = self._settings, self._outbox
        if self._scheduled_after is None:
            last = await outbox.last_scheduled()
            oldest = now - settings.results_give_up_seconds - settings.results_delay_seconds
            self._scheduled_after = oldest if last is None else max(oldest, last - settings.results_delay_seconds)
        after = self._scheduled_after - SCHEDULE_OVERLAP_SECONDS
        while (last := await outbox.schedule_results(settings.results, settings.results_delay_seconds, after,
                                                     SCHEDULE_BATCH)) is not None:
            self._scheduled_after = max(self._scheduled_after, last)
            if last == after:
                break
            after = last

    async def _fetch(self, result: Result) -> None:
        kind, now = result.kind, self._clock()
        try:
            response = await self._client.get(PATHS[kind].format(result.roark_call_id))
        except httpx.TransportError as error:
            await self._again(result, None, describe_error(error), None, now)
            return
        status = response.status_code
        if status in (401, 403):
            self._paused_until = now + self._settings.auth_pause_seconds
            reason = f"Roark answered {status} to a results fetch: check ROARK_API_KEY"
            log.error("results_paused", status=status, reason=reason,
                      retry_in_seconds=self._settings.auth_pause_seconds)
            self._metrics.result_fetches.labels(kind, "paused").inc()
            await self._outbox.record_result(result, ResultState.PENDING, self._paused_until, status=status,
                                             error=reason, now=now, counted=False)
            return
        if status == 200:
            try:
                data = response.json()["data"]
            except (ValueError, KeyError, TypeError):
                await self._again(result, status, "the answer has no data field", None, now)
                return
            if finished(kind, data):
                await self._complete(result, data, now)
                return
            await self._again(result, status, "not finished yet", None, now, data=data)
            return
        problem = "Roark does not know the call yet" if status == 404 else f"answered {status}"
        await self._again(result, status, problem, parse_retry_after(response.headers, now), now)

    async def _again(self, result: Result, status: int | None, error: str, retry_after: float | None, now: float,
                     data: object = None) -> None:
        again = next_fetch(self._timing, result.attempts + 1, result.due_from, now, retry_after)
        outcome = "pending" if status in (200, 404) else "failed"
        self._metrics.result_fetches.labels(result.kind, outcome if again is not None else "given_up").inc()
        found = verdict(result.kind, data) if data is not None else None
        await self._outbox.record_result(
            result, ResultState.PENDING if again is not None else ResultState.GIVEN_UP,
            again if again is not None else now, status=status, error=error, data=data,
            score=found.score if found else None, classification=found.classification if found else None, now=now)
        if again is None:
            log.info("result_given_up", delivery_id=result.delivery_id, kind=result.kind,
                     roark_call_id=result.roark_call_id, attempts=result.attempts + 1, error=error)

    async def _complete(self, result: Result, data: object, now: float) -> None:
        found = verdict(result.kind, data)
        destinations = tuple(d.name for d in self._settings.destinations
                             if d.wants_result(result.kind, found.classification, found.score))
        if destinations and result.provider is not None:
            # Owed before the verdict is recorded: a crash between the two fetches it again,
            # and the event's dedupe key keeps it from being owed twice.
            await self._outbox.insert(NewDelivery(
                result.provider, f"roark:{result.kind}", result.call_id, f"roark:{result.kind}:{result.roark_call_id}",
                event_body(result.kind, result, data), now, origin="results", destinations=destinations))
        recorded = await self._outbox.record_result(result, ResultState.COMPLETED, now, status=200, data=data,
                                                    score=found.score, classification=found.classification, now=now)
        if not recorded:
            return  # the lease was lost: whoever holds it records it
        self._metrics.result_fetches.labels(result.kind, "completed").inc()
        if result.kind == "evaluation":
            if found.score is not None:
                self._metrics.evaluation_scores.observe(found.score)
            self._metrics.evaluated_calls.labels(found.classification or "none").inc()
        log.info("result_completed", delivery_id=result.delivery_id, kind=result.kind,
                 roark_call_id=result.roark_call_id, score=found.score, classification=found.classification,
                 destinations=destinations)
