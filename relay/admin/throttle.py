"""How fast the login form may be guessed at: failed logins per client and overall.

Each client (by IP address) and the relay as a whole have a budget of failed logins
that refills evenly over a minute: FAILURES_PER_CLIENT and FAILURES_OVERALL. A failed
login spends one from both; once either is spent, every wrong token from there is
answered 429 with Retry-After. The right token is never refused: the admin token holds
64 bits or more, which no rate of guessing finds, so the throttle only bounds what
failed logins cost, and guessers (on one address or many, or behind a proxy everyone
shares) cannot lock the operator out. Scripts are never affected (a Bearer header is
not a login).

Behind a proxy the client is whatever address uvicorn reports: the proxy's own, unless
uvicorn trusts its X-Forwarded-For (FORWARDED_ALLOW_IPS); then every client shares one
budget, which still bounds guessing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FAILURES_PER_CLIENT = 10
FAILURES_OVERALL = 60
PERIOD_SECONDS = 60.0


class Bucket:
    """A budget of `size` failures, refilled at `size` per `period` seconds."""

    __slots__ = ("at", "level", "rate", "size")

    def __init__(self, size: int, period: float, now: float) -> None:
        self.size = size
        self.rate = size / period
        self.level = float(size)
        self.at = now

    def refill(self, now: float) -> float:
        self.level = min(self.size, self.level + (now - self.at) * self.rate)
        self.at = now
        return self.level

    def wait(self, now: float) -> float:
        """Seconds until one failure may be spent (0: now)."""
        return max(0.0, (1.0 - self.refill(now)) / self.rate)


class LoginThrottle:
    def __init__(self, per_client: int = FAILURES_PER_CLIENT, overall: int = FAILURES_OVERALL,
                 period: float = PERIOD_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_client = per_client
        self._period = period
        self._clock = clock
        self._overall = Bucket(overall, period, clock())
        self._clients: dict[str, Bucket] = {}

    def wait(self, client: str) -> float:
        """Seconds before `client` may try to log in again; 0 when it may now."""
        now = self._clock()
        bucket = self._clients.get(client)
        return max(self._overall.wait(now), bucket.wait(now) if bucket else 0.0)

    def failed(self, client: str) -> None:
        """Spend one failure from `client`'s budget and the overall one."""
        now = self._clock()
        # Buckets that are whole again hold nothing worth keeping: forgetting them keeps
        # this at most as large as the failures of the last period.
        self._clients = {c: b for c, b in self._clients.items() if b.refill(now) < b.size}
        bucket = self._clients.setdefault(client, Bucket(self._per_client, self._period, now))
        bucket.level -= 1
        self._overall.refill(now)
        self._overall.level -= 1

    def __len__(self) -> int:
        """Clients being tracked."""
        return len(self._clients)
