"""How far apart attempts are: a pure function of the policy and the attempt.

Defaults follow Svix: exponential backoff from 5 s, x3 per attempt, capped at 4 h, ±20 %
jitter so a backlog does not return in lock-step, and enough attempts that even the
shortest jittered schedule spans 24 h.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 16
    base_delay: float = 5.0
    multiplier: float = 3.0
    max_delay: float = 4 * 3600.0
    jitter: float = 0.2
    # A Retry-After is honoured up to this long; a larger one is treated as this.
    max_retry_after: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


def backoff_delay(policy: RetryPolicy, attempt: int, rand: Callable[[], float]) -> float:
    """Delay after the `attempt`-th failed attempt (1-based), jittered."""
    exponent = min(attempt - 1, 64)  # past this the cap has long applied; avoid overflow
    raw = min(policy.base_delay * policy.multiplier**exponent, policy.max_delay)
    return raw * (1 - policy.jitter + 2 * policy.jitter * rand())


def schedule_bounds(policy: RetryPolicy) -> tuple[float, float]:
    """Shortest and longest time from the first attempt to giving up."""
    retries = range(1, policy.max_attempts)
    low = sum(backoff_delay(policy, n, lambda: 0.0) for n in retries)
    high = sum(backoff_delay(policy, n, lambda: 1.0) for n in retries)
    return low, high
