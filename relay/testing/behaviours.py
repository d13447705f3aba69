"""How a fake peer answers: the behaviours a test scripts into FakeRoark and the fake providers.

    fake.script(RateLimited("2"), Slow(0.5), Accept())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Accept:
    """Answer as Roark would: 201 for a valid request, the deserved error otherwise."""


@dataclass(frozen=True)
class Respond:
    """Answer `status`; the default body is an ErrorResponse (a success body for 2xx)."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RateLimited:
    """429 with Retry-After, plus retry-after-ms when given (the official SDK prefers it)."""

    retry_after: str = "1"
    retry_after_ms: str | None = None


@dataclass(frozen=True)
class Slow:
    """Hold the request for `seconds`, then behave as `then` (as Accept when None)."""

    seconds: float
    then: Behaviour | None = None


@dataclass(frozen=True)
class Reset:
    """Read the request, then reset the connection without answering."""


@dataclass(frozen=True)
class Trickle:
    """Answer as `then` would (as Accept when None), but send its body one byte every
    `seconds` after the headers: a peer that never quite stops answering."""

    seconds: float
    then: Behaviour | None = None


Behaviour = Accept | Respond | RateLimited | Slow | Reset | Trickle
