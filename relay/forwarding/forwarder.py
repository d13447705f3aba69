"""The background forwarders: one per destination (Roark's first), each claiming only
its own due deliveries and sending them with its own client.

They run in a forwarding process of their own or in the server's (relay.forwarding.background). Each has
its own concurrency, connection pool, pause and rate-limit gate, so a destination that
is down or slow never holds up another: its deliveries wait in the store, not in a
shared queue. Nothing here sleeps on a retry schedule: every outcome is written back to
the row (next attempt time, attempts, last error), so a restart resumes exactly where
the store says.

Conditions that hold back a forwarder's claims:
- a pause, when the receiver rejects our credentials or URL (401/403/3xx): rows go back
  to pending with their attempt refunded, and /health reports degraded until a later
  try succeeds (in memory: a restart tries again);
- a rate-limit gate, when the receiver answers with Retry-After: nothing is sent before it;
- a stop, when a destination answers 410 Gone: kept in the store, so every instance
  skips it until an operator resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypedDict

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from relay.core.errors import StoreUnavailable
from relay.core.metrics import Metrics, status_class
from relay.core.names import ROARK
from relay.forwarding.attempt import MAX_ERROR_TEXT, Outcome, claimed_body
from relay.forwarding.retry import (
    AttemptResult,
    Delivered,
    GiveUp,
    PauseDelivery,
    Receiver,
    RetryAt,
    StopReceiver,
    decide,
    parse_retry_after,
)
from relay.forwarding.trouble import Repeated, UpstreamTrouble, retryable_failure
from relay.outbox import AsyncOutbox, Attempt, Completion, Delivery, ForwarderReport, State
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding.forwarder")

#: Body bytes in flight at most (plus one delivery, however large): each costs its size
#: several times over while sent, so a claim of many large reports at once would hold
#: hundreds of MB. Bodies of a few KB never come near it.
MAX_BYTES_IN_FLIGHT = 16 * 1024 * 1024


class Client(Protocol):
    """What a forwarder sends with: `relay.forwarding.roark.RoarkClient`, or a destination's."""

    receiver: Receiver

    async def deliver(self, delivery: Delivery, now: float) -> Outcome: ...

    async def aclose(self) -> None: ...


class _Settled(TypedDict):
    """What every `Completion` of an attempt says, whatever the decision."""

    now: float
    status_code: int | None
    error: str | None
    attempt: Attempt


class Forwarder:
    def __init__(
        self,
        outbox: AsyncOutbox,
        client: Client,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        *,
        destination: str = ROARK,
        concurrency: int | None = None,
    ) -> None:
        self._outbox = outbox
        self.client = client
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rand = rand
        self.destination = destination
        self._concurrency = concurrency or settings.forward_concurrency
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[int, tuple[Delivery, str, asyncio.Task[None]]] = {}
        self._inflight_bytes = 0
        self._slot_freed = asyncio.Event()
        # While a backlog drains, claim once an eighth of the slots is free, not as each
        # delivery ends; an idle forwarder (nothing in flight) claims whatever is due.
        self._min_claim = max(1, self._concurrency // 8)
        self._task: asyncio.Task[None] | None = None
        # A result we fail to record would be sent again after the lease expires, so keep
        # trying through short store hiccups (a locked database) for part of the lease.
        self._store_retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            stop=stop_after_delay(settings.lease_seconds / 2),
            wait=wait_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        )
        self.paused_until = 0.0
        self.pause_reason: str | None = None
        self.rate_limited_until = 0.0
        self.trouble = UpstreamTrouble(client.receiver.name)

    @property
    def paused(self) -> bool:
        return self.pause_reason is not None

    @property
    def receiver(self) -> str:
        """Whom it delivers to, as operators are told."""
        return self.client.receiver.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-forwarder-{self.destination}")

    def report(self, now: float) -> ForwarderReport:
        """Its state, for a server process that shows it from the store (relay.forwarding.background)."""
        trouble = self.trouble.state
        return ForwarderReport(
            destination=self.destination, reported_at=now, paused_reason=self.pause_reason,
            paused_until=self.paused_until, rate_limited_until=self.rate_limited_until,
            failing_since=trouble.failing_since, last_failure_at=trouble.last_failure,
            last_success_at=trouble.last_success, failure=trouble.failure, failure_status=trouble.status)

    def wake(self) -> None:
        """New work was stored: claim now instead of at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; let in-flight deliveries finish within the grace period, then
        cancel the rest and hand their rows back so the next start delivers them."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        if self._task is not None:
            await self._task
        tasks = [task for _, _, task in self._inflight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self._settings.shutdown_grace_seconds)
        unfinished = list(self._inflight.values())
        for _, _, task in unfinished:
            task.cancel()
        await asyncio.gather(*(task for _, _, task in unfinished), return_exceptions=True)
        for delivery, token, _ in unfinished:
            completion = Completion(State.PENDING, self._clock(), next_attempt_at=self._clock(),
                                    refund_attempt=True)
            try:
                await self._outbox.complete(delivery.id, token, completion)
            except StoreUnavailable:
                pass  # its lease expires and another start claims it again
        log.info("forwarder_stopped", destination=self.destination, released=len(unfinished))

    async def _idle(self, seconds: float, until_slot_freed: bool = False) -> None:
        """Wait at most `seconds` for new work (or a delivery to end) signalled since the
        top of this round of `_run`, which cleared the events."""
        events = [self._wake, self._slot_freed] if until_slot_freed else [self._wake]
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _run(self) -> None:
        settings = self._settings
        token_prefix = uuid.uuid4().hex[:12]
        while not self._stopping:
            # Cleared before looking for work, not when about to wait for more: a wake-up
            # that comes meanwhile (new work, a delivery ending, stop) is then not lost,
            # where clearing later would make, say, shutdown wait out a poll interval.
            self._wake.clear()
            self._slot_freed.clear()
            now = self._clock()
            hold_until = max(self.paused_until, self.rate_limited_until)
            if hold_until > now:
                await self._idle(min(hold_until - now, settings.poll_interval_seconds))
                continue
            if not self._room_to_claim():
                await self._slot_freed.wait()
                continue
            free = self._concurrency - len(self._inflight)
            free_bytes = MAX_BYTES_IN_FLIGHT - self._inflight_bytes
            token = f"{token_prefix}-{uuid.uuid4().hex[:12]}"
            try:
                claimed = await self._outbox.claim(token, self._clock(), settings.lease_seconds, free,
                                                   max(free_bytes, 1), self.destination)
            except StoreUnavailable as error:
                log.warning("claim_failed", destination=self.destination, error=str(error))
                await self._idle(settings.poll_interval_seconds)
                continue
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery, token))
                self._inflight[delivery.id] = (delivery, token, task)
                self._inflight_bytes += len(claimed_body(delivery))
            if len(claimed) < free:
                # Short: nothing more is due, or bodies filled MAX_BYTES_IN_FLIGHT, which
                # a delivery ending makes room in; empty: only new work or time helps.
                await self._idle(settings.poll_interval_seconds, until_slot_freed=bool(claimed))

    async def _deliver(self, delivery: Delivery, token: str) -> None:
        started = self._clock()
        start = time.perf_counter()
        try:
            hold_until = max(self.paused_until, self.rate_limited_until)
            if hold_until > started:
                # Claimed just before a Retry-After (or a pause) arrived: honour it too,
                # without spending an attempt.
                await self._complete_with_retries(delivery.id, token, Completion(
                    State.PENDING, started, next_attempt_at=hold_until, refund_attempt=True))
                return
            try:
                outcome = await self.client.deliver(delivery, started)
            except Exception as error:  # the relay's own failure: no retry will mend it
                log.exception("delivery_not_sent", delivery_id=delivery.id, destination=self.destination,
                              consequence="failed at once; replay it once the relay is fixed")
                message = f"the relay could not send it: {type(error).__name__}: {error}"[:MAX_ERROR_TEXT]
                outcome = Outcome(AttemptResult(None, error=message, permanent=True), error=message)
            duration_ms = (time.perf_counter() - start) * 1000
            await self._record(delivery, token, outcome, started, duration_ms)
        except StoreUnavailable as error:
            log.error("delivery_result_not_recorded", delivery_id=delivery.id, error=str(error),
                      consequence="sent again once its lease expires")
        except Exception as error:  # recording it failed: end the claim rather than leave it
            log.exception("delivery_result_not_recorded", delivery_id=delivery.id, destination=self.destination,
                          consequence="failed; replay it once the relay is fixed")
            message = f"the relay could not record its result: {type(error).__name__}: {error}"[:MAX_ERROR_TEXT]
            with contextlib.suppress(Exception):
                await self._outbox.complete(delivery.id, token, Completion(State.FAILED, self._clock(), error=message))
        finally:
            if self._inflight.pop(delivery.id, None) is not None:
                self._inflight_bytes -= len(claimed_body(delivery))
            if self._room_to_claim():  # not at every delivery's end: each wake-up costs a round
                self._slot_freed.set()

    def _room_to_claim(self) -> bool:
        """Whether a claim is worth its transaction: for many rows at once, with room for
        their bodies while any is in flight."""
        return (self._concurrency - len(self._inflight) >= self._min_claim
                and (self._inflight_bytes < MAX_BYTES_IN_FLIGHT or not self._inflight))

    async def _record(
        self, delivery: Delivery, token: str, outcome: Outcome, started: float, duration_ms: float
    ) -> None:
        now = self._clock()
        result = outcome.result
        decision = decide(self._settings.retry, delivery.attempts, result, now, self._rand,
                          self.client.receiver)
        attempt = Attempt(delivery.attempts, started, duration_ms, result.status_code,
                          outcome.error, type(decision).__name__.lower())
        base = _Settled(now=now, status_code=result.status_code, error=outcome.error, attempt=attempt)
        match decision:
            case Delivered():
                completion = Completion(State.DELIVERED, roark_call_id=outcome.roark_call_id, **base)
            case RetryAt(at=at):
                completion = Completion(State.PENDING, next_attempt_at=at, **base)
            case GiveUp(reason=reason):
                # The reason names the status (or transport error) already: what is left of
                # the attempt's error is Roark's own words, said once.
                detail = (outcome.error or "").removeprefix(result.summary).lstrip(" :")
                error = f"{reason}: {detail}" if detail else reason
                completion = Completion(State.FAILED, **(base | {"error": error}))
            case PauseDelivery(reason=reason):
                completion = Completion(State.PENDING, next_attempt_at=now, refund_attempt=True, **base)
                self._pause(reason, now)
            case StopReceiver(reason=reason):
                completion = Completion(State.FAILED, **(base | {"error": reason}))
                await self._stop_receiving(reason)
        if isinstance(decision, Delivered) and self.paused:
            log.info("delivery_resumed", after=self.pause_reason)
            self.pause_reason = None
        if result.status_code in (429, 503):
            wait = parse_retry_after(result.headers, now)
            if wait is not None:
                self.rate_limited_until = max(
                    self.rate_limited_until, now + min(wait, self._settings.retry.max_retry_after)
                )
        self._metrics.attempts.labels(delivery.provider, self.destination, attempt.outcome,
                                      status_class(result.status_code)).inc()
        self._metrics.attempt_seconds.labels(delivery.provider, self.destination).observe(duration_ms / 1000)
        kept = await self._complete_with_retries(delivery.id, token, completion)
        said: bool | Repeated = True
        failing = retryable_failure(result.status_code)
        if failing:
            said = self.trouble.failure(now, result.status_code, outcome.error or result.summary)
        else:  # an answer that is not "try again later": Roark is up
            self.trouble.success(now)
        if isinstance(said, Repeated):
            log.warning("delivery_failures_repeated", destination=self.destination, error=said.failure,
                        count=said.count, since_seconds=round(now - said.since, 1))
        ended = isinstance(decision, GiveUp | StopReceiver)
        if said is True or ended:
            (log.warning if failing or ended else log.info)(
                "delivery_attempt",
                delivery_id=delivery.id,
                destination=self.destination,
                provider=delivery.provider,
                call_id=delivery.call_id,
                attempt=delivery.attempts,
                status=result.status_code,
                outcome=attempt.outcome,
                state=completion.state.value,
                error=outcome.error,
                next_attempt_in=round(completion.next_attempt_at - now, 3)
                if completion.next_attempt_at is not None else None,
                duration_ms=round(duration_ms, 1),
                lease_lost=not kept,
            )

    def _pause(self, reason: str, now: float) -> None:
        if not self.paused:
            log.error("delivery_paused", destination=self.destination, reason=reason,
                      retry_in_seconds=self._settings.auth_pause_seconds)
        self.pause_reason = reason
        self.paused_until = now + self._settings.auth_pause_seconds

    async def _stop_receiving(self, reason: str) -> None:
        log.error("destination_stopped", destination=self.destination, reason=reason,
                  resume=f"relay destinations resume {self.destination}")
        try:
            await self._store_retrying.copy()(self._outbox.pause_destination, self.destination, reason,
                                              self._clock())
        except StoreUnavailable as error:  # the next 410 stops it again
            log.error("destination_stop_not_recorded", destination=self.destination, error=str(error))

    async def _complete_with_retries(self, delivery_id: int, token: str, completion: Completion) -> bool:
        # Tried once before tenacity is involved: a tenacity call copies the policy (which
        # concurrent deliveries need) and runs its state machine, many times the cost of
        # the plain await, on every delivery, and the first try almost always succeeds.
        try:
            return await self._outbox.complete(delivery_id, token, completion)
        except StoreUnavailable:
            pass
        return await self._store_retrying.copy()(self._outbox.complete, delivery_id, token, completion)


class Forwarders:
    """Every destination's forwarder, Roark's first, started, woken and stopped together;
    one listener on the store wakes them all when any process stores new work."""

    def __init__(self, outbox: AsyncOutbox, forwarders: Sequence[Forwarder]) -> None:
        self._outbox = outbox
        self.by_destination = {f.destination: f for f in forwarders}
        self._unlisten: Callable[[], None] | None = None

    @property
    def roark(self) -> Forwarder:
        return self.by_destination[ROARK]

    def __iter__(self) -> Iterator[Forwarder]:
        return iter(self.by_destination.values())

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for forwarder in self:
            forwarder.start()

        def wake_soon() -> None:  # on the backend's listening thread
            loop.call_soon_threadsafe(self.wake)

        self._unlisten = self._outbox.backend.listen(wake_soon)

    def wake(self) -> None:
        for forwarder in self:
            forwarder.wake()

    def silent_since(self, now: float) -> float | None:
        return None  # they run in this process: they cannot be silent while it answers

    async def stop(self) -> None:
        """Stop every forwarder (see `Forwarder.stop`), then close their connections."""
        if self._unlisten is not None:
            self._unlisten()
        await asyncio.gather(*(forwarder.stop() for forwarder in self))
        for forwarder in self:
            await forwarder.client.aclose()
