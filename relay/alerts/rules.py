"""What opens an alert: one rule per kind, each a pure function of what the monitor
observed (`Observation`) and the thresholds (`Thresholds`), answering the conditions that
hold now, one per subject (Roark, a destination, a provider, the forwarding process, the
outbox).

A rule that cannot tell from this observation (the forwarders have not reported, so
nobody knows whether Roark answers) answers None: its alerts are left as they are,
neither opened nor resolved. The monitor opens an alert for a condition with none open,
and resolves one whose condition nobody has seen for RELAY_ALERT_CLEAR_SECONDS.

A new kind plugs in as a `Rule` in RULES (its rule, its title in messages), and its name in ALERT_KINDS
(relay.destinations.channels), which channels filter on: nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core.timefmt import duration, iso
from relay.outbox import BadCalls, DeadLetters
from relay.settings import Settings


@dataclass(frozen=True)
class Receiver:
    """Roark or a destination, as the forwarders and the store see it."""

    destination: str  # "roark" or a destination's name: the subject
    name: str  # "Roark", "destination crm": the words
    paused: str | None = None  # why it refused us (401/403, a redirect)
    stopped: str | None = None  # a destination's 410, until an operator resumes it
    failing_since: float | None = None  # when the attempts began to fail, until one succeeds
    failure: str | None = None  # the last of them, as logged
    #: When the forwarder last tried it; None: not since its process started, so whether it
    #: takes deliveries is not known.
    last_attempt_at: float | None = None
    waiting: int = 0  # deliveries not yet delivered nor failed
    oldest_waiting_at: float | None = None


@dataclass(frozen=True)
class Refusals:
    """Webhooks answered 503 because the outbox could not store them, within the window."""

    count: int
    first_at: float
    last_at: float


@dataclass(frozen=True)
class Observation:
    now: float
    receivers: tuple[Receiver, ...] = ()
    #: Since when no forwarding process has reported (None: one reports, or forwarding
    #: runs in this process).
    forwarding_silent_since: float | None = None
    #: Per destination, its dead letters since its burst began (see the monitor).
    dead_letters: Mapping[str, DeadLetters] = field(default_factory=dict)
    #: Per reconciled provider, what is wrong with its runs (providers fine are absent).
    reconciliation: Mapping[str, list[str]] = field(default_factory=dict)
    storage: Refusals | None = None
    #: Calls Roark evaluated badly since their burst began (None: none, or results are off).
    bad_calls: BadCalls | None = None


@dataclass(frozen=True)
class Thresholds:
    after: float
    backlog_age: float
    dead_letter_window: float
    forwarding_silence: float
    evaluation_window: float
    score_below: float

    @classmethod
    def of(cls, settings: Settings, forwarding_stale_after: float) -> Thresholds:
        return cls(after=settings.alert_after_seconds, backlog_age=settings.pending_age_degraded_seconds,
                   dead_letter_window=settings.alert_dead_letter_window_seconds,
                   forwarding_silence=max(settings.alert_after_seconds, forwarding_stale_after),
                   evaluation_window=settings.alert_evaluation_window_seconds, score_below=settings.alert_score_below)


@dataclass(frozen=True)
class Condition:
    """What holds now for one subject; `held_up` counts what it keeps from arriving.

    `opens` False: it keeps an open alert open, but opens none (a receiver failing for
    less than the threshold, or one not tried since a restart while deliveries wait for
    it); then an empty `summary` leaves the alert's own as it is. `holds` False: it opens
    an alert if none was (a burst summed up after it ended), but keeps none open."""

    kind: str
    subject: str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    held_up: int = 0
    opens: bool = True
    holds: bool = True


def _burst(first_at: float, last_at: float, window: float, now: float) -> bool | None:
    """Whether a burst (dead letters, bad evaluations) still holds its alert open: None
    while it is gathering (its first is less than a window old); False once a window has
    passed without another, when it is still summed up if no check saw it go by, however
    short it was."""
    if now - first_at < window:
        return None
    return now - last_at <= window


Find = Callable[[Observation, Thresholds], "list[Condition] | None"]


@dataclass(frozen=True)
class Rule:
    kind: str
    find: Find
    #: The kind in a message's words ("Dead letters alert opened").
    title: str
    #: What `held_up` counts, in a resolved message ("12 deliveries waiting at most").
    held_up: str = "deliveries waiting at most"


def _held_back(receiver: Receiver) -> str | None:
    """Why nothing reaches this receiver, as an operator should read it; None: as far as
    the forwarder knows, it takes deliveries."""
    if receiver.stopped:
        return receiver.stopped
    if receiver.paused:
        return f"delivery to {receiver.name} paused: {receiver.paused}"
    if receiver.failing_since is not None:
        return (f"every attempt to {receiver.name} since {iso(receiver.failing_since)} failed; "
                f"the last: {receiver.failure or 'no error recorded'}")
    return None


def delivery(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """A receiver paused (401/403) or stopped (410), at once; or every attempt failing
    for `after`, until one succeeds (however far apart retries have grown). After a
    restart, a receiver not tried yet keeps its alert while deliveries wait for it."""
    if observation.forwarding_silent_since is not None:
        return None  # what the forwarders last said is stale
    found = []
    for receiver in observation.receivers:
        details = {"receiver": receiver.name, "waiting": receiver.waiting}
        if why := _held_back(receiver):
            failing_for = None if receiver.failing_since is None else observation.now - receiver.failing_since
            opens = receiver.stopped is not None or receiver.paused is not None or (
                failing_for is not None and failing_for >= thresholds.after)
            found.append(Condition("delivery", receiver.destination, why, details, receiver.waiting, opens))
        elif receiver.last_attempt_at is None and receiver.waiting:
            found.append(Condition("delivery", receiver.destination, "", details, receiver.waiting, opens=False))
    return found


def backlog(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """The oldest undelivered webhook of a receiver older than the threshold, when nothing
    else (a delivery alert, a silent forwarding process) says why already."""
    if observation.forwarding_silent_since is not None:
        return []
    found = []
    for receiver in observation.receivers:
        oldest = receiver.oldest_waiting_at
        if oldest is None or observation.now - oldest <= thresholds.backlog_age \
                or _held_back(receiver):
            continue
        age = observation.now - oldest
        found.append(Condition(
            "backlog", receiver.destination,
            f"the oldest webhook waiting for {receiver.name} is {duration(age)} old "
            f"(threshold {duration(thresholds.backlog_age)}), with {receiver.waiting} waiting",
            {"receiver": receiver.name, "waiting": receiver.waiting, "oldest_age_seconds": round(age, 1)},
            receiver.waiting))
    return found


def dead_letter(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """Deliveries that failed for good, one summary per destination: once the first of a
    burst is a window old, until a window passes without another. Not for a receiver the
    delivery alert speaks of (a 410 fails the delivery it answers, a refused key...)."""
    window = thresholds.dead_letter_window
    receivers = {r.destination: r for r in observation.receivers}
    names = {r.destination: r.name for r in observation.receivers}
    found = []
    for destination, letters in sorted(observation.dead_letters.items()):
        now = observation.now
        holds = _burst(letters.first_at, letters.last_at, window, now)
        if holds is None:
            continue
        if destination in receivers and _held_back(receivers[destination]):
            continue
        name = names.get(destination, f"destination {destination}")
        noun = "delivery" if letters.count == 1 else "deliveries"
        found.append(Condition(
            "dead_letter", destination,
            f"{letters.count} {noun} to {name} failed for good since {iso(letters.first_at)}; "
            f"the last: {letters.last_error or 'no error recorded'}",
            {"receiver": name, "count": letters.count, "last_error": letters.last_error,
             "call_ids": list(letters.call_ids), "since": letters.first_at,
             "replay": f"relay replay --all-failed --destination {destination}"},
            letters.count, holds=holds))
    return found


def forwarding(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """No forwarding process has reported for a while: webhooks are stored, not delivered."""
    since = observation.forwarding_silent_since
    if since is None or observation.now - since < thresholds.forwarding_silence:
        return []
    waiting = sum(r.waiting for r in observation.receivers)
    return [Condition("forwarding", "forwarding",
                      f"no forwarding process has reported for {duration(observation.now - since)}: webhooks are "
                      f"stored but not delivered ({waiting} waiting); is `relay forward` running?",
                      {"waiting": waiting}, waiting)]


def reconciliation(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """A provider's runs failing for longer than two intervals, or a run that died."""
    return [Condition("reconciliation", provider, "; ".join(problems), {"problems": problems})
            for provider, problems in sorted(observation.reconciliation.items())]


def storage(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """Webhooks answered 503 because the outbox could not store them."""
    refused = observation.storage
    if refused is None:
        return []
    noun = "webhook was" if refused.count == 1 else "webhooks were"
    return [Condition("storage", "outbox",
                      f"{refused.count} {noun} answered 503 since {iso(refused.first_at)}: the outbox could not "
                      "store them (providers retry; check the database and its disk)",
                      {"refused": refused.count}, refused.count)]


def evaluation(observation: Observation, thresholds: Thresholds) -> list[Condition] | None:
    """Calls whose evaluation failed or scored below RELAY_ALERT_SCORE_BELOW, summed like
    dead letters: a bad afternoon is one message, not fifty."""
    bad, window, now = observation.bad_calls, thresholds.evaluation_window, observation.now
    holds = None if bad is None else _burst(bad.first_at, bad.last_at, window, now)
    if bad is None or holds is None:
        return []
    noun = "call" if bad.count == 1 else "calls"
    return [Condition(
        "evaluation", "evaluations",
        f"{bad.count} {noun} failed Roark's evaluation or scored below {thresholds.score_below:g} since "
        f"{iso(bad.first_at)}" + (f"; {bad.summaries[0]}" if bad.summaries else ""),
        {"count": bad.count, "call_ids": list(bad.call_ids), "summaries": list(bad.summaries),
         "since": bad.first_at, "score_below": thresholds.score_below},
        bad.count, holds=holds)]


RULES: tuple[Rule, ...] = (
    Rule("delivery", delivery, "Delivery"),
    Rule("dead_letter", dead_letter, "Dead letters", held_up="deliveries failed for good"),
    Rule("backlog", backlog, "Backlog"),
    Rule("forwarding", forwarding, "Forwarding"),
    Rule("reconciliation", reconciliation, "Reconciliation", held_up=""),
    Rule("storage", storage, "Storage", held_up="webhooks refused"),
    Rule("evaluation", evaluation, "Evaluations", held_up="calls evaluated badly"),
)
