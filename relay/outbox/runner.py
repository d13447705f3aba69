"""Run a blocking outbox backend from the event loop.

Writes go through one worker at a time (SQLite has one writer anyway, and queueing here
is cheaper than queueing on its file lock). Inserts are group-committed: while one
transaction is being synced, newly arrived webhooks gather, and the next transaction
stores them all with a single sync. Each webhook is still acknowledged only after the
commit that holds it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread

from relay.outbox.model import (
    Attempt,
    Backend,
    Completion,
    Delivery,
    DeliveryFilter,
    Inserted,
    NewDelivery,
    State,
)

T = TypeVar("T")

#: Upper bound on one group commit, so a flood cannot build one giant transaction.
MAX_BATCH = 512


class AsyncOutbox:
    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._clock = clock
        self._writer = anyio.CapacityLimiter(1)
        self._pending: list[tuple[NewDelivery, asyncio.Future[Inserted]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._writer)

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    async def insert(self, item: NewDelivery) -> Inserted:
        """Store one delivery durably; returns once its transaction has committed."""
        future: asyncio.Future[Inserted] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # shield: a client hanging up must not cancel a commit others wait on
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                results = await self._write(
                    self.backend.insert_many, [item for item, _ in batch], self._clock()
                )
            except Exception as error:  # every waiter learns its webhook was not stored
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
            else:
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)

    async def migrate(self) -> int:
        return await self._write(self.backend.migrate)

    async def claim(self, token: str, lease_seconds: float, limit: int) -> list[Delivery]:
        return await self._write(self.backend.claim, token, self._clock(), lease_seconds, limit)

    async def complete(self, delivery_id: int, token: str, completion: Completion) -> bool:
        return await self._write(self.backend.complete, delivery_id, token, completion)

    async def get(self, delivery_id: int) -> Delivery | None:
        return await self._read(self.backend.get, delivery_id)

    async def attempts(self, delivery_id: int) -> list[Attempt]:
        return await self._read(self.backend.attempts, delivery_id)

    async def list_deliveries(self, where: DeliveryFilter, before_id: int | None, limit: int) -> list[Delivery]:
        return await self._read(self.backend.list_deliveries, where, before_id, limit)

    async def replay(self, ids: Sequence[int] | None, where: DeliveryFilter) -> list[int]:
        return await self._write(self.backend.replay, ids, where, self._clock())

    async def prune(self, received_before: float, states: Sequence[State]) -> int:
        return await self._write(self.backend.prune, received_before, states)

    async def counts(self) -> dict[State, int]:
        return await self._read(self.backend.counts)

    async def counts_by_provider(self) -> dict[str, dict[State, int]]:
        return await self._read(self.backend.counts_by_provider)

    async def oldest_pending_received_at(self) -> float | None:
        return await self._read(self.backend.oldest_pending_received_at)

    async def ping(self) -> None:
        await self._read(self.backend.ping)

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        await self._write(self.backend.close)
