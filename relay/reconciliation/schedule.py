"""Which window of time a reconciliation run covers, what it leaves behind for the next,
and when failing runs, or a run that stopped without finishing, make the relay degraded:
pure functions of the stored state and the time.

The first run looks back `lookback`; each later one starts where the last complete run
ended, less `OVERLAP_SECONDS`, so a call the provider indexed late or stamped with a
clock a little behind ours still falls in a window (a call seen twice is stored once).
Every window ends `grace` ago: a call that ended since may still have its webhook on
the way. A run that fails part-way leaves its window and the provider's token for the
page after the last one stored, and the next run finishes that window first.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.timefmt import duration
from relay.outbox import Progress, Reconciliation
from relay.providers.calls import Window

OVERLAP_SECONDS = 300.0


@dataclass(frozen=True)
class Timing:
    interval: float  # 0: reconciliation is off
    grace: float
    lookback: float


@dataclass(frozen=True)
class Planned:
    window: Window
    token: str | None = None  # where in the window to resume; None: from its start


def next_run(state: Reconciliation | None, now: float, timing: Timing) -> Planned | None:
    """What the next scheduled run covers; None while nothing has ended long enough ago."""
    if state is not None and state.pending_token is not None \
            and state.pending_start is not None and state.pending_end is not None:
        return Planned(Window(state.pending_start, state.pending_end), state.pending_token)
    if state is None or state.reconciled_until is None:
        start = now - timing.lookback
    else:
        start = state.reconciled_until - OVERLAP_SECONDS
    end = now - timing.grace
    return Planned(Window(start, end)) if end > start else None


def chosen_window(now: float, grace: float, since: float | None = None,
                  start: float | None = None, end: float | None = None) -> Window:
    """A window an operator asked for: the last `since` seconds, or from `start` to
    `end` (now when absent). It never comes closer than `grace` to now."""
    if since is not None:
        start = now - since
    if start is None:
        raise ValueError("give since or a start")
    latest = now - grace
    window = Window(start, latest if end is None else min(end, latest))
    if window.end <= window.start:
        raise ValueError("the window is empty: it must start before it ends, and calls that "
                         f"ended in the last {grace:g} s are left for their webhook")
    return window


def progress(reconciled_until: float | None, window: Window, token: str | None) -> Progress:
    """What to save once a page of `window` is stored: the token of the page after it,
    or, after the window's last page, that everything up to its end is reconciled."""
    if token is not None:
        return Progress(reconciled_until, window.start, window.end, token)
    return Progress(window.end if reconciled_until is None else max(reconciled_until, window.end))


def failing_too_long(state: Reconciliation, title: str, now: float, interval: float) -> str | None:
    """What /health says when the provider's runs have failed for longer than two
    intervals; None otherwise."""
    if interval <= 0 or state.failing_since is None or now - state.failing_since <= 2 * interval:
        return None
    return f"{title} reconciliation failing for {duration(now - state.failing_since)}: {state.last_error}"


def stopped_without_finishing(state: Reconciliation, title: str, now: float) -> str | None:
    """What /health says while a run's lease has run out but the run never ended: the
    process running it died (a run renews its lease while it lives, and ends it when it
    stops). None otherwise; the next run to take the lease over clears it."""
    if state.lease_owner is None or state.lease_expires_at is None or state.running(now):
        return None
    return (f"{title} reconciliation run by {state.lease_owner} stopped without finishing "
            f"(its lease ran out {duration(now - state.lease_expires_at)} ago); the next run takes it over")
