"""Whether Roark (or a destination) is taking deliveries, judged from the attempts themselves.

A backlog only grows old after minutes, while an operator wants to hear at once that
every attempt fails: "Roark unreachable for 3 min: ConnectError ...", "Roark answering
503 to every attempt for 40 s". The rule, shown on the status page and applied by
/health, is that every attempt of the last minute failed in a way retrying is meant to
ride out (no answer, 5xx, 408, 425, 429). A 4xx that fails one delivery for good means
Roark is up and reading.

It also keeps the logs readable through an outage: the first failure of a kind is logged
as it happens; the same failure again is only counted, and summed up once a minute.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.timefmt import duration
from relay.forwarding.retry import RETRYABLE_STATUSES

WINDOW_SECONDS = 60.0
SUMMARY_EVERY_SECONDS = 60.0


def retryable_failure(status_code: int | None) -> bool:
    return status_code is None or status_code >= 500 or status_code in RETRYABLE_STATUSES


@dataclass
class Repeated:
    """Identical failures not logged one by one since `since`."""

    failure: str
    count: int
    since: float


@dataclass(frozen=True)
class TroubleState:
    """What the rule needs to know of a receiver's recent attempts (times are unix
    seconds; None: never)."""

    failing_since: float | None = None
    last_failure: float | None = None
    last_success: float | None = None
    failure: str | None = None
    status: int | None = None


def describe(receiver: str, state: TroubleState, now: float) -> str | None:
    """What is wrong, when every attempt of the last minute failed; None otherwise."""
    if state.failing_since is None or state.last_failure is None or now - state.last_failure > WINDOW_SECONDS \
            or (state.last_success is not None and now - state.last_success <= WINDOW_SECONDS):
        return None
    lasting = duration(now - state.failing_since)
    if state.status is None:
        return f"{receiver} unreachable for {lasting}: {state.failure}"
    return f"{receiver} answering {state.status} to every attempt for {lasting}: {state.failure}"


#: How long past its receiver's timeout a claim may still be held (its result being
#: recorded) before the delivery counts as stuck.
STUCK_MARGIN_SECONDS = 10.0


def stuck(receiver: str, claimed_at: float | None, timeout: float, now: float) -> str | None:
    """What is wrong when a delivery to `receiver` has been in flight, since `claimed_at`,
    for longer than any attempt may take; None otherwise. Every request has a deadline,
    so such a delivery is held by a forwarder that is itself stuck."""
    if claimed_at is None or now - claimed_at <= timeout + STUCK_MARGIN_SECONDS:
        return None
    return (f"a delivery to {receiver} has been in flight for {duration(now - claimed_at)}, past its "
            f"{timeout:g} s timeout: its forwarder is stuck")


class UpstreamTrouble:
    def __init__(self, receiver: str = "Roark") -> None:
        self.receiver = receiver
        self._last_success = float("-inf")
        self._last_failure = float("-inf")
        self._failing_since: float | None = None
        self._failure: str | None = None
        self._status: int | None = None
        self._repeats = 0
        self._repeats_since = 0.0
        self._summarised_at = float("-inf")

    def success(self, now: float) -> None:
        self._last_success = now
        self._failing_since = self._failure = None
        self._repeats = 0

    def failure(self, now: float, status_code: int | None, failure: str) -> bool | Repeated:
        """Record a failed attempt. True: log it (the first of its kind); False: it is
        counted only; a `Repeated`: log that summary of the ones counted."""
        self._last_failure = now
        if self._failing_since is None:
            self._failing_since = now
        if failure != self._failure:
            self._failure, self._status = failure, status_code
            self._repeats, self._summarised_at = 0, now
            return True
        self._status = status_code
        if self._repeats == 0:
            self._repeats_since = now
        self._repeats += 1
        if now - self._summarised_at < SUMMARY_EVERY_SECONDS:
            return False
        summary = Repeated(failure, self._repeats, self._repeats_since)
        self._repeats, self._summarised_at = 0, now
        return summary

    @property
    def state(self) -> TroubleState:
        return TroubleState(
            failing_since=self._failing_since,
            last_failure=None if self._last_failure == float("-inf") else self._last_failure,
            last_success=None if self._last_success == float("-inf") else self._last_success,
            failure=self._failure, status=self._status)

    @property
    def failing_since(self) -> float | None:
        return self._failing_since

    @property
    def last_failure(self) -> str | None:
        return self._failure

    @property
    def last_attempt_at(self) -> float | None:
        last = max(self._last_success, self._last_failure)
        return None if last == float("-inf") else last

    def describe(self, now: float) -> str | None:
        return describe(self.receiver, self.state, now)

