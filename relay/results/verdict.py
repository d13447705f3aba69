"""What Roark answered, read: whether every run of a call has finished, the call's score
and classification, and when to ask again. Pure functions of the answer and the time.

    evaluation  {"data": [EvaluationRun]}: finished once there is a run and each is
                completed or failed; the call's score is the mean of its completed runs'
                scores weighted by their evaluators' weights; it is a failure when any run
                is classified failure, else a success when any is, else irrelevant.
    sentiment   {"data": SentimentAnalysis}: finished once completed or failed; the score
                is average_sentiment, the classification average_categorical_sentiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINISHED = ("completed", "failed")
#: However short RELAY_RESULTS_DELAY_SECONDS, fetches of one verdict are this far apart.
MIN_WAIT_SECONDS = 0.1


def finished(kind: str, data: Any) -> bool:
    if kind == "evaluation":
        return isinstance(data, list) and bool(data) and all(
            isinstance(run, dict) and run.get("status") in FINISHED for run in data)
    return isinstance(data, dict) and data.get("status") in FINISHED


@dataclass(frozen=True)
class Verdict:
    score: float | None
    classification: str | None


def verdict(kind: str, data: Any) -> Verdict:
    if kind == "sentiment":
        if not isinstance(data, dict):
            return Verdict(None, None)
        score = data.get("average_sentiment")
        return Verdict(float(score) if isinstance(score, int | float) else None,
                       data.get("average_categorical_sentiment"))
    runs = [run for run in data if isinstance(run, dict) and run.get("status") == "completed"] \
        if isinstance(data, list) else []
    scored = [(float(run["score"]), _weight(run)) for run in runs if isinstance(run.get("score"), int | float)]
    total = sum(weight for _, weight in scored)
    score = (sum(s * w for s, w in scored) / total if total else
             sum(s for s, _ in scored) / len(scored) if scored else None)
    classes = {run.get("score_classification") for run in runs}
    classification = next((c for c in ("failure", "success", "irrelevant") if c in classes), None)
    return Verdict(None if score is None else round(score, 4), classification)


def _weight(run: dict[str, Any]) -> float:
    weight = (run.get("evaluator") or {}).get("weight")
    return float(weight) if isinstance(weight, int | float) and weight >= 0 else 1.0


@dataclass(frozen=True)
class Timing:
    first_delay: float
    max_delay: float
    give_up: float


def next_fetch(timing: Timing, attempts: int, due_from: float, now: float,
               retry_after: float | None = None) -> float | None:
    """When to ask again after the `attempts`-th fetch (1-based) left the verdict unfinished:
    twice the previous wait (from the first delay), at most `max_delay`, never sooner than
    Roark's Retry-After; None once `give_up` has passed since the first fetch."""
    if now - due_from >= timing.give_up:
        return None
    wait = min(max(timing.first_delay, MIN_WAIT_SECONDS) * 2 ** min(attempts - 1, 32), timing.max_delay)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return now + wait
