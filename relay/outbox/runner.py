"""Run a blocking outbox backend from the event loop.

Writes go through one thread of their own, one at a time and in order (SQLite has one
writer anyway, and queueing here is cheaper than queueing on its file lock); reads use a
few other threads. Inserts and completions are group-committed: while one transaction
runs, newly arrived webhooks (or delivery results) gather, and the next transaction
stores them all with a single sync. Each webhook is still acknowledged only after the
commit that holds it, and each completion reports whether its lease still held.

Few, large transactions matter twice here: each costs a sync, and each statement the
writer thread runs hands the GIL to the event loop and back. While the loop is busy,
taking it back costs up to the interpreter's switch interval: at Python's default 5 ms a
claim of 200 rows took 0.5 s under load (BENCHMARKS.md), hence SWITCH_INTERVAL.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from relay.outbox.model import (
    Attempt,
    Backend,
    Completion,
    Delivery,
    DeliveryFilter,
    ForwarderReport,
    Inserted,
    NewDelivery,
    Pause,
    ROARK,
    Progress,
    Reconciliation,
    RunOutcome,
    State,
)
from relay.outbox.traffic import Bucket

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

#: Upper bound on one group commit, so a flood cannot build one giant transaction.
MAX_BATCH = 512
#: Threads for reads (status page, health, metrics), which never wait on the writer.
READ_THREADS = 4
#: Longest the event loop keeps the GIL from a database thread that wants it (seconds).
SWITCH_INTERVAL = 0.001


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
        except Exception as error:  # every waiter learns its item was not written
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
            for future in drained:
                if not future.done():
                    future.set_result(None)

    async def drain(self) -> None:
        """Return once every write submitted so far has been settled."""
        if self._queued:
            future = asyncio.get_running_loop().create_future()
            self._drained.append(future)
            await future


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AsyncOutbox:
    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._clock = clock
        # Process-wide, and set here because these threads are what needs it: the loop
        # gives up the GIL sooner, database threads wait for it less (see the docstring).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._writer, self._readers = _executors()
        self._inserts: GroupCommit[NewDelivery, Inserted] = GroupCommit(
            lambda: self._writer, lambda items: self.backend.insert_many(items, self._clock()))
        self._completions: GroupCommit[tuple[int, str, Completion], bool] = GroupCommit(
            lambda: self._writer, self.backend.complete_many)

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    async def insert(self, item: NewDelivery, timeout: float | None = None) -> Inserted:
        """Store one webhook durably; returns once its transaction has committed, or raises
        TimeoutError after `timeout` seconds (the commit goes on, and may still land)."""
        return await self._inserts.submit(item, timeout)

    async def migrate(self) -> int:
        return await self._write(self.backend.migrate)

    async def claim(self, token: str, lease_seconds: float, limit: int,
                    max_bytes: int | None = None, destination: str = ROARK) -> list[Delivery]:
        return await self._write(self.backend.claim, token, self._clock(), lease_seconds, limit,
                                 max_bytes, destination)

    async def complete(self, delivery_id: int, token: str, completion: Completion) -> bool:
        """Apply `completion` if `token` still holds the lease (see Backend.complete_many)."""
        return await self._completions.submit((delivery_id, token, completion))

    async def get(self, delivery_id: int) -> Delivery | None:
        return await self._read(self.backend.get, delivery_id)

    async def attempts(self, delivery_id: int) -> list[Attempt]:
        return await self._read(self.backend.attempts, delivery_id)

    async def list_deliveries(self, where: DeliveryFilter, before_id: int | None, limit: int) -> list[Delivery]:
        return await self._read(self.backend.list_deliveries, where, before_id, limit)

    async def replay(self, ids: Sequence[int] | None, where: DeliveryFilter) -> list[int]:
        return await self._write(self.backend.replay, ids, where, self._clock())

    async def prune(self, received_before: float, states: Sequence[State], limit: int) -> int:
        return await self._write(self.backend.prune, received_before, states, limit)

    async def revoke_session(self, nonce: str, expires_at: float) -> None:
        await self._write(self.backend.revoke_session, nonce, expires_at, self._clock())

    async def session_revoked(self, nonce: str) -> bool:
        return await self._read(self.backend.session_revoked, nonce, self._clock())

    async def counts(self) -> dict[State, int]:
        return await self._read(self.backend.counts)

    async def counts_by_provider(self) -> dict[str, dict[State, int]]:
        return await self._read(self.backend.counts_by_provider)

    async def counts_by_destination(self) -> dict[str, dict[State, int]]:
        return await self._read(self.backend.counts_by_destination)

    async def fail_unconfigured(self, destinations: Sequence[str]) -> dict[str, int]:
        return await self._write(self.backend.fail_unconfigured, destinations, self._clock())

    async def pause_destination(self, destination: str, reason: str) -> None:
        await self._write(self.backend.pause_destination, destination, reason, self._clock())

    async def resume_destination(self, destination: str) -> bool:
        return await self._write(self.backend.resume_destination, destination)

    async def paused_destinations(self) -> dict[str, Pause]:
        return await self._read(self.backend.paused_destinations)

    async def report_forwarders(self, reports: Sequence[ForwarderReport]) -> None:
        """Record what the forwarders say about their destinations (Backend.report_forwarders)."""
        await self._write(self.backend.report_forwarders, reports)

    async def forwarder_reports(self) -> dict[str, ForwarderReport]:
        return await self._read(self.backend.forwarder_reports)

    async def oldest_pending_received_at(self) -> float | None:
        return await self._read(self.backend.oldest_pending_received_at)

    async def oldest_claims(self) -> dict[str, float]:
        return await self._read(self.backend.oldest_claims)

    async def traffic(self, step: float, count: int, destination: str | None = None) -> list[Bucket]:
        return await self._read(self.backend.traffic, self._clock(), step, count, destination)

    async def ping(self) -> None:
        await self._read(self.backend.ping)

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

    # --- reconciliation (relay.reconciliation) ----------------------------------------

    async def reconciliations(self) -> list[Reconciliation]:
        return await self._read(self.backend.reconciliations)

    async def lease_reconciliation(self, provider: str, owner: str, seconds: float) -> Reconciliation | None:
        now = self._clock()
        return await self._write(self.backend.lease_reconciliation, provider, owner, now, now + seconds)

    async def save_reconciliation(self, provider: str, owner: str, progress: Progress, seconds: float) -> bool:
        return await self._write(self.backend.save_reconciliation, provider, owner, progress,
                                 self._clock() + seconds)

    async def end_reconciliation(self, provider: str, owner: str, outcome: RunOutcome | None) -> bool:
        return await self._write(self.backend.end_reconciliation, provider, owner, outcome)

    async def held(self, provider: str, dedupe_keys: Sequence[str]) -> set[str]:
        return await self._read(self.backend.held, provider, dedupe_keys)

    async def renew_reconciliation(self, provider: str, owner: str, seconds: float) -> bool:
        return await self._write(self.backend.renew_reconciliation, provider, owner, self._clock() + seconds)


def _executors() -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """One thread for writes, in order; a few for reads."""
    return (ThreadPoolExecutor(1, thread_name_prefix="relay-outbox-write"),
            ThreadPoolExecutor(READ_THREADS, thread_name_prefix="relay-outbox-read"))
