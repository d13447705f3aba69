"""How many bytes of request bodies (and of answers passed through) the process holds at
once.

Without a bound, the memory a relay needs is set by whoever sends to it: sixty
concurrent 21 MB bodies took one to 1.15 GB, and inside a 512 MB machine far fewer got
it killed, losing whatever was in flight. Two pools for bodies, because the danger
differs: bodies not yet verified (anyone on the internet can send those, so the pool is
small, and one client address gets only a share of it) and verified bodies on their way
into the outbox. A request that would take a pool past its limit is answered 503 with
Retry-After, which providers retry, instead of being read further.

Bytes are counted as they arrive, never as announced: a `Content-Length` costs its sender
nothing, so reserving it let a few connections that sent no body at all hold the whole
pool.
"""

from __future__ import annotations


class ByteBudget:
    """`limit` bytes in all and, with `per_client`, that many per client address."""

    def __init__(self, limit: int, per_client: int | None = None) -> None:
        self.limit = limit
        self.per_client = per_client
        self.held = 0
        self._by_client: dict[str, int] = {}

    def take(self, size: int, client: str | None = None, own: int = 0) -> bool:
        """Hold `size` more bytes for a request of `client` holding `own` already, if
        they fit. A request that holds everything held (in the pool, or of its client's
        share) always fits, so one body up to the size limit is never refused by an idle
        relay, nor a client's first body by its share."""
        if self.held > own and self.held + size > self.limit:
            return False
        if self.per_client is not None and client is not None:
            mine = self._by_client.get(client, 0)
            if mine > own and mine + size > self.per_client:
                return False
            self._by_client[client] = mine + size
        self.held += size
        return True

    def give_back(self, size: int, client: str | None = None) -> None:
        self.held -= size
        if self.per_client is not None and client is not None:
            left = self._by_client.pop(client, 0) - size
            if left:
                self._by_client[client] = left

    def client_held(self, client: str) -> int:
        return self._by_client.get(client, 0)


class BodyHold:
    """One request's share of a budget, moved between pools as it is verified and given
    back, all of it, when the request ends."""

    def __init__(self, pool: ByteBudget, client: str | None = None) -> None:
        self.pool = pool
        self.client = client
        self.size = 0

    def grow(self, size: int) -> bool:
        if not self.pool.take(size, self.client, self.size):
            return False
        self.size += size
        return True

    def move_to(self, pool: ByteBudget) -> bool:
        if pool is self.pool:
            return True
        if not pool.take(self.size, self.client):
            return False
        self.pool.give_back(self.size, self.client)
        self.pool = pool
        return True

    def release(self) -> None:
        self.pool.give_back(self.size, self.client)
        self.size = 0
