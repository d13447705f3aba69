"""When to try a delivery again: a pure function of the attempt and what the receiver
(Roark, or one of the team's destinations) answered.

The forwarder never sleeps on this schedule. It persists the returned time as the row's
next attempt, so a restart keeps the schedule and a crash loses nothing.

Defaults follow Roark's SDK (what to retry) and Svix (how far apart): exponential backoff
from 5 s, x3 per attempt, capped at 4 h, ±20 % jitter so a backlog does not return in
lock-step, and enough attempts that even the shortest jittered schedule spans 24 h.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Statuses worth another try besides 5xx (Roark SDK: timeouts, too early, rate limits).
RETRYABLE_STATUSES = frozenset({408, 425, 429})


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


@dataclass(frozen=True)
class Receiver:
    """Whom a delivery goes to, as the decisions name it: who answered, and what an
    operator fixes when it refuses the relay's credentials or moved."""

    name: str = "Roark"
    credential: str = "ROARK_API_KEY"
    location: str = "ROARK_BASE_URL"
    #: 410 Gone ends the delivery and stops the receiver until an operator resumes it
    #: (an endpoint the team took down); Roark's API never says it, so there it is an
    #: error like any other 4xx.
    gone_stops: bool = False


ROARK_RECEIVER = Receiver()


def destination_receiver(name: str) -> Receiver:
    """One of RELAY_DESTINATIONS, named `name`, as the decisions name it."""
    return Receiver(f"destination {name}", f"the secret of destination {name} (RELAY_DESTINATIONS)",
                    f"the url of destination {name} (RELAY_DESTINATIONS)", gone_stops=True)


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came back with: a status, or a transport error."""

    status_code: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    permanent: bool = False  # the request could not even be built; retrying cannot help

    @property
    def summary(self) -> str:
        return self.error if self.status_code is None else f"HTTP {self.status_code}"


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class RetryAt:
    at: float
    reason: str


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass(frozen=True)
class PauseDelivery:
    """Our configuration is wrong (key or URL); retrying rows would only burn attempts."""

    reason: str


@dataclass(frozen=True)
class StopReceiver:
    """The receiver says it is gone for good: this delivery fails, and nothing more is
    sent to it until an operator resumes it."""

    reason: str


Decision = Delivered | RetryAt | GiveUp | PauseDelivery | StopReceiver


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


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    text = lowered.get("retry-after")
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def decide(
    policy: RetryPolicy,
    attempt: int,
    result: AttemptResult,
    now: float,
    rand: Callable[[], float] = random.random,
    receiver: Receiver = ROARK_RECEIVER,
) -> Decision:
    """What to do after the `attempt`-th attempt (1-based) ended with `result`."""
    status = result.status_code
    if status is not None and 200 <= status < 300:
        return Delivered()
    if status in (401, 403):
        return PauseDelivery(f"{receiver.name} answered {status}: check {receiver.credential}")
    if status is not None and 300 <= status < 400:
        location = result.headers.get("location") or result.headers.get("Location") or "?"
        return PauseDelivery(f"{receiver.name} answered {status} redirecting to {location}: "
                             f"check {receiver.location}")
    if status == 410 and receiver.gone_stops:
        return StopReceiver(f"{receiver.name} answered 410 Gone: stopped until an operator resumes it")
    retryable = not result.permanent and (
        status is None or status in RETRYABLE_STATUSES or 500 <= status < 600
    )
    if not retryable:
        return GiveUp(f"permanent error ({result.summary})")
    if attempt >= policy.max_attempts:
        return GiveUp(f"gave up after {attempt} attempts ({result.summary})")
    delay = backoff_delay(policy, attempt, rand)
    asked = parse_retry_after(result.headers, now)
    if asked is not None:
        delay = max(delay, min(asked, policy.max_retry_after))
    return RetryAt(now + delay, f"retrying after {result.summary}")
