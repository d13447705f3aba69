"""When to try a delivery again: a pure function of the attempt and what the receiver
(Roark, or one of the team's destinations) answered.

The forwarder never sleeps on this schedule. It persists the returned time as the row's
next attempt, so a restart keeps the schedule and a crash loses nothing.

What to retry follows Roark's SDK; how far apart, `relay.core.backoff`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from relay.core.backoff import RetryPolicy, backoff_delay
from relay.core.transport import parse_retry_after

#: Statuses worth another try besides 5xx (Roark SDK: timeouts, too early, rate limits).
RETRYABLE_STATUSES = frozenset({408, 425, 429})


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
        if self.status_code is not None:
            return f"HTTP {self.status_code}"
        assert self.error is not None  # without a status, the transport error is said
        return self.error


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
