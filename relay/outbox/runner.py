"""Run a blocking outbox backend from the event loop.

Writes go through one thread of their own, one at a time and in order (SQLite has one
writer anyway, and queueing here is cheaper than queueing on its file lock); reads use a
few other threads. Inserts and completions are group-committed: while one transaction
runs, newly arrived webhooks (or delivery results) gather, and the next transaction
stores them all with a single sync. Each webhook is still acknowledged only after the
commit that holds it, and each completion reports whether its lease still held.

Few, large transactions matter twice here: each costs a sync, and each statement the
writer thread runs hands the GIL to the event loop and back (which is why every relay
process shortens the interpreter's switch interval: relay.core.runtime).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from relay.outbox.model import Completion, Inserted, NewDelivery
from relay.outbox.store import Alerts, Backend, Counts, Deliveries, Pauses, Reconciliations, Reports, Results, Sessions

T = TypeVar("T")
P = ParamSpec("P")
Item = TypeVar("Item")
Result = TypeVar("Result")

#: Upper bound on one group commit, so a flood cannot build one giant transaction.
MAX_BATCH = 512
#: Threads for reads (status page, health, metrics), which never wait on the writer.
READ_THREADS = 4


class GroupCommit(Generic[Item, Result]):
    """Hands `write` (on the writer thread) everything submitted since its previous call
    began; each submitter gets its own item's result (or the batch's exception) once
    that call returns.

    The writer thread queues the next call itself, behind whatever other writes (claims,
    replays) were queued meanwhile, instead of waiting for the event loop to ask: the
    loop is often busy for milliseconds at a stretch (thirty webhooks arriving at once),
    and writes that waited for it ran in lockstep with it, never beside it."""

    def __init__(self, executor: Callable[[], Executor],
                 write: Callable[[list[Item]], Sequence[Result]]) -> None:
        self._executor = executor
        self._write = write
        self._lock = threading.Lock()
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._queued = False  # a call of _flush is queued or running
        self._drained: list[asyncio.Future[None]] = []  # drain()s waiting for it to end

    async def submit(self, item: Item, timeout: float | None = None) -> Result:
        """`item`'s result; TimeoutError after `timeout` seconds, while its write goes on."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        with self._lock:
            self._pending.append((item, future))
            queue, self._queued = not self._queued, True
        if queue:
            self._executor().submit(self._flush, loop)
        # A caller going away (a client hanging up, a timeout) ends its own wait only; the
        # commit others wait on goes on. A bare timer, not asyncio.timeout, whose
        # bookkeeping (the current task, rescheduling, uncancelling) cost more than the
        # rest of the wait, on every webhook.
        expiry = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            if expiry is not None:
                expiry.cancel()

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: one write, then the next queued if more was submitted."""
        with self._lock:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        outcome: Sequence[Result] | BaseException
        try:
            outcome = self._write([item for item, _ in batch])
        except Exception as error:  # noqa: BLE001  (every waiter learns its item was not written)
            outcome = error
        with self._lock:
            more = self._queued = bool(self._pending)
        try:
            loop.call_soon_threadsafe(self._settle, batch, outcome, not more)
            if more:
                self._executor().submit(self._flush, loop)
        except RuntimeError:  # the loop or the executor closed under us: nobody waits
            pass

    def _settle(self, batch: list[tuple[Item, asyncio.Future[Result]]],
                outcome: Sequence[Result] | BaseException, idle: bool) -> None:
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[i])
        if idle:
            drained, self._drained = self._drained, []
            for waiter in drained:
                if not waiter.done():
                    waiter.set_result(None)

    async def drain(self) -> None:
        """Return once every write submitted so far has been settled."""
        if self._queued:
            future = asyncio.get_running_loop().create_future()
            self._drained.append(future)
            await future


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _OffLoop(Generic[P, T]):
    """A backend method as an awaitable of the outbox: run on its writer thread (in order,
    one at a time) or on one of its reader threads, with the same arguments."""

    def __init__(self, method: Callable[Concatenate[Any, P], T], *, writes: bool) -> None:
        self._name = method.__name__
        self._writes = writes

    def __get__(self, outbox: AsyncOutbox, owner: type | None = None) -> Callable[P, Awaitable[T]]:
        method = getattr(outbox.backend, self._name)
        executor = outbox._writer if self._writes else outbox._readers

        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await asyncio.get_running_loop().run_in_executor(executor, partial(method, *args, **kwargs))

        return run


def _reads(method: Callable[Concatenate[Any, P], T]) -> _OffLoop[P, T]:
    return _OffLoop(method, writes=False)


def _writes(method: Callable[Concatenate[Any, P], T]) -> _OffLoop[P, T]:
    return _OffLoop(method, writes=True)


class AsyncOutbox:
    """The backend from the event loop: every method of `Backend` under the same name and
    arguments, awaited. Inserts and completions are group-committed (see GroupCommit);
    `clock` dates an insert's transaction."""

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._writer, self._readers = _executors()
        self._inserts: GroupCommit[NewDelivery, Inserted] = GroupCommit(
            lambda: self._writer, lambda items: self.backend.insert_many(items, clock()))
        self._completions: GroupCommit[tuple[int, str, Completion], bool] = GroupCommit(
            lambda: self._writer, self.backend.complete_many)

    async def insert(self, item: NewDelivery, timeout: float | None = None) -> Inserted:
        """Store one webhook durably; returns once its transaction has committed, or raises
        TimeoutError after `timeout` seconds (the commit goes on, and may still land)."""
        return await self._inserts.submit(item, timeout)

    async def complete(self, delivery_id: int, token: str, completion: Completion) -> bool:
        """Apply `completion` if `token` still holds the lease (see Deliveries.complete_many)."""
        return await self._completions.submit((delivery_id, token, completion))

    migrate = _writes(Backend.migrate)
    ping = _reads(Backend.ping)

    claim = _writes(Deliveries.claim)
    get = _reads(Deliveries.get)
    list_deliveries = _reads(Deliveries.list_deliveries)
    attempts = _reads(Deliveries.attempts)
    replay = _writes(Deliveries.replay)
    prune = _writes(Deliveries.prune)
    fail_unconfigured = _writes(Deliveries.fail_unconfigured)

    counts = _reads(Counts.counts)
    counts_by_provider = _reads(Counts.counts_by_provider)
    counts_by_destination = _reads(Counts.counts_by_destination)
    oldest_pending_received_at = _reads(Counts.oldest_pending_received_at)
    oldest_claims = _reads(Counts.oldest_claims)
    traffic = _reads(Counts.traffic)

    pause_destination = _writes(Pauses.pause_destination)
    resume_destination = _writes(Pauses.resume_destination)
    paused_destinations = _reads(Pauses.paused_destinations)

    report_forwarders = _writes(Reports.report_forwarders)
    forwarder_reports = _reads(Reports.forwarder_reports)

    revoke_session = _writes(Sessions.revoke_session)
    session_revoked = _reads(Sessions.session_revoked)

    reconciliations = _reads(Reconciliations.reconciliations)
    lease_reconciliation = _writes(Reconciliations.lease_reconciliation)
    save_reconciliation = _writes(Reconciliations.save_reconciliation)
    renew_reconciliation = _writes(Reconciliations.renew_reconciliation)
    end_reconciliation = _writes(Reconciliations.end_reconciliation)
    held = _reads(Reconciliations.held)

    open_alerts = _reads(Alerts.open_alerts)
    open_alert = _writes(Alerts.open_alert)
    see_alert = _writes(Alerts.see_alert)
    resolve_alert = _writes(Alerts.resolve_alert)
    remind_alert = _writes(Alerts.remind_alert)
    acknowledge_alert = _writes(Alerts.acknowledge_alert)
    get_alert = _reads(Alerts.get_alert)
    alerts_since = _reads(Alerts.alerts_since)
    claim_alert_messages = _writes(Alerts.claim_alert_messages)
    finish_alert_message = _writes(Alerts.finish_alert_message)
    alert_channels = _reads(Alerts.alert_channels)
    mute_subject = _writes(Alerts.mute_subject)
    muted_subjects = _reads(Alerts.muted_subjects)
    waiting_by_destination = _reads(Alerts.waiting_by_destination)
    dead_letters = _reads(Alerts.dead_letters)

    last_scheduled = _reads(Results.last_scheduled)
    schedule_results = _writes(Results.schedule_results)
    claim_results = _writes(Results.claim_results)
    record_result = _writes(Results.record_result)
    results_for = _reads(Results.results_for)
    list_results = _reads(Results.list_results)
    bad_calls = _reads(Results.bad_calls)

    async def close(self) -> None:
        """Finish pending commits, wait for every running operation (a cancelled caller
        does not stop its thread: closing connections under a running statement crashed
        the process), then close the backend. Like the backends, the outbox reopens if
        used again."""
        await self._inserts.drain()
        await self._completions.drain()
        (writer, readers), (self._writer, self._readers) = (self._writer, self._readers), _executors()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, readers.shutdown)
        await loop.run_in_executor(writer, self.backend.close)
        await loop.run_in_executor(None, writer.shutdown)


def _executors() -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """One thread for writes, in order; a few for reads."""
    return (ThreadPoolExecutor(1, thread_name_prefix="relay-outbox-write"),
            ThreadPoolExecutor(READ_THREADS, thread_name_prefix="relay-outbox-read"))
