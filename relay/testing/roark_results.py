"""Roark's verdicts as the fake Roark answers them (GET /v1/call/{call_id}/evaluation-run
and .../sentiment-run, shaped as the spec's EvaluationRun and SentimentAnalysis): pending
until `delay` seconds after the call was sent, then completed, with scores derived from
the provider's call id, so tests and `relay demo` see the same mix of success and
failure every time (about one call in three fails)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

EVALUATORS = (("Customer satisfaction", 0.7), ("Task completion", 0.3))
#: A call scoring below this is classified a failure.
FAILURE_BELOW = 0.5
EMOTIONS = ("satisfaction", "gratitude", "concern", "frustration", "neutral")


def _unit(seed: str, salt: str) -> float:
    """A number in [0, 1) that depends on `seed` and `salt` only."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{seed}".encode()).digest()[:4], "big") / 2**32


def _id(seed: str, salt: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{salt}:{seed}"))


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def call_score(provider_call_id: str) -> float:
    """The call's overall score: both evaluators agree on its side of FAILURE_BELOW."""
    return round(_unit(provider_call_id, "score"), 2)


def evaluation_runs(provider_call_id: str, sent_at: float, now: float, delay: float) -> list[dict[str, Any]]:
    done = now - sent_at >= delay
    score = call_score(provider_call_id)
    runs = []
    for name, weight in EVALUATORS:
        run: dict[str, Any] = {
            "id": _id(provider_call_id, name), "status": "completed" if done else "pending",
            "evaluator": {"id": _id("evaluator", name), "name": name, "weight": weight},
            "started_at": _when(sent_at)}
        if done:
            failed = score < FAILURE_BELOW
            run |= {
                "score": score, "score_classification": "failure" if failed else "success",
                "summary": (f"{name}: the caller's issue was not resolved" if failed
                            else f"{name}: the caller's issue was resolved"),
                "completed_at": _when(sent_at + delay),
                "metrics": [{"id": _id(provider_call_id, name + "metric"), "name": "resolution",
                             "value_type": "boolean", "boolean_value": not failed, "role": "primary"}],
                "evidence": [{"id": _id(provider_call_id, name + "evidence"), "is_positive": not failed,
                              "snippet_text": "Thanks, that's all I needed." if not failed
                              else "This still doesn't work.",
                              "comment_text": "The caller says so in their own words."}],
            }
        runs.append(run)
    return runs


def sentiment(provider_call_id: str, sent_at: float, now: float, delay: float) -> dict[str, Any]:
    if now - sent_at < delay:
        return {"status": "pending"}
    average = round(_unit(provider_call_id, "sentiment"), 2)
    category = "positive" if average >= 0.6 else "negative" if average < 0.4 else "neutral"
    weights = [_unit(provider_call_id, emotion) for emotion in EMOTIONS]
    total = sum(weights)
    breakdown = {emotion: round(w / total, 3) for emotion, w in zip(EMOTIONS, weights, strict=True)}
    return {"status": "completed", "average_sentiment": average, "average_categorical_sentiment": category,
            "common_emotion": max(breakdown, key=lambda e: breakdown[e]), "emotion_breakdown": breakdown}


