"""How times and spans of time are written, the same in logs, pages, the API and the CLI."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import overload

#: (unit, its seconds, spans shorter than this are written in it).
UNITS = (("ms", 0.001, 1.0), ("s", 1.0, 90.0), ("min", 60.0, 90 * 60.0), ("h", 3600.0, 36 * 3600.0),
         ("d", 86400.0, math.inf))


def duration(seconds: float) -> str:
    """'40 ms', '2.5 s', '45 s', '1.7 min', '25 min', '1.5 h', '3 d': one decimal below
    ten of a unit, none above."""
    seconds = abs(seconds)
    unit, size = next((unit, size) for unit, size, below in UNITS if seconds < below)
    value = seconds / size
    shown = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return f"{shown.removesuffix('.0')} {unit}"


@overload
def iso(timestamp: float, *, milliseconds: bool = False) -> str: ...
@overload
def iso(timestamp: None, *, milliseconds: bool = False) -> None: ...
def iso(timestamp: float | None, *, milliseconds: bool = False) -> str | None:
    """ISO 8601 in UTC with a Z, to the second (or millisecond); None for None."""
    if timestamp is None:
        return None
    spec = "milliseconds" if milliseconds else "seconds"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def now_iso() -> str:
    """Now, as `iso` writes it, to the microsecond."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
