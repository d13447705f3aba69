"""How many bytes of request bodies the process holds at once.

Without a bound, the memory a relay needs is set by whoever sends to it: sixty
concurrent 21 MB bodies took one to 1.15 GB, and inside a 512 MB machine far fewer got
it killed, losing whatever was in flight. Two pools, because the danger differs: bodies
not yet verified (anyone on the internet can send those, so the pool is small) and
verified bodies on their way into the outbox. A request that would take a pool past its
limit is answered 503 with Retry-After, which providers retry, instead of being read.
"""

from __future__ import annotations


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes if they fit (one request alone always fits, so a
        single body up to the size limit is never refused by an idle relay)."""
        if self.held and self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class BodyHold:
    """One request's share of a budget, moved between pools as it is verified and given
    back, all of it, when the request ends."""

    def __init__(self, pool: ByteBudget) -> None:
        self.pool = pool
        self.size = 0

    def grow(self, size: int) -> bool:
        if not self.pool.take(size):
            return False
        self.size += size
        return True

    def move_to(self, pool: ByteBudget) -> bool:
        if pool is self.pool:
            return True
        if not pool.take(self.size):
            return False
        self.pool.give_back(self.size)
        self.pool = pool
        return True

    def release(self) -> None:
        self.pool.give_back(self.size)
        self.size = 0
