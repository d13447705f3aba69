"""What the web process reads of a forwarder, whether it runs in this process
(relay.forwarding.forwarder) or in the forwarding process, seen through the store
(relay.forwarding.remote): /health, the status page, the admin API and /metrics read
these and nothing else."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol


class TroubleView(Protocol):
    def describe(self, now: float) -> str | None:
        """What keeps deliveries from arriving now, in an operator's words; None: nothing."""

    @property
    def failing_since(self) -> float | None:
        """When the current run of failed attempts began; None while attempts succeed."""

    @property
    def last_failure(self) -> str | None:
        """The last failure, as logged, while attempts fail."""

    @property
    def last_attempt_at(self) -> float | None:
        """When the forwarder last tried its receiver; None: not since it started."""


class ForwarderView(Protocol):
    @property
    def destination(self) -> str: ...

    @property
    def receiver(self) -> str:
        """Whom it delivers to, as operators are told ("Roark", "destination crm")."""

    @property
    def paused(self) -> bool: ...

    @property
    def pause_reason(self) -> str | None: ...

    @property
    def rate_limited_until(self) -> float: ...

    @property
    def trouble(self) -> TroubleView: ...


class ForwarderViews(Protocol):
    """Every destination's forwarder, Roark's first."""

    @property
    def roark(self) -> ForwarderView: ...

    @property
    def by_destination(self) -> Mapping[str, ForwarderView]: ...

    def __iter__(self) -> Iterator[ForwarderView]: ...

    def wake(self) -> None:
        """New work was stored, or released (a replay, a resume): deliver it now."""

    def silent_since(self, now: float) -> float | None:
        """Since when no forwarding process has reported, once that is long enough to mean
        none runs; None while one reports (always, for forwarders in this process)."""
