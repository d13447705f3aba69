"""Roark's verdicts read purely: when a call's runs have finished, its score and
classification, when to ask again, which destinations a verdict is owed to, and the
evaluation alert; and the fake Roark's verdicts hold to the spec's schemas."""

import json

import pytest

from relay.alerts.rules import Observation, Thresholds, evaluation
from relay.core.errors import ConfigError
from relay.destinations import Destinations, new_secret
from relay.outbox import BadCalls
from relay.results.verdict import Timing, finished, next_fetch, verdict
from relay.testing import roark_results
from relay.testing.roark_contract import validator_for

NOW = 1_800_000_000.0


def run(status: str, score: float | None = None, classification: str | None = None, weight: float | None = None):
    evaluator = {"id": "e", "name": "n", **({"weight": weight} if weight is not None else {})}
    return {"id": "r", "status": status, "evaluator": evaluator,
            **({"score": score} if score is not None else {}),
            **({"score_classification": classification} if classification else {})}


@pytest.mark.parametrize("data, done", [
    ([], False),  # no run yet: Roark has not started evaluating
    ([run("completed", 0.9, "success"), run("pending")], False),
    ([run("completed", 0.9, "success"), run("failed")], True),
    ("not a list", False),
])
def test_an_evaluation_is_finished_once_every_run_has(data, done):
    assert finished("evaluation", data) is done


def test_a_sentiment_is_finished_once_completed_or_failed():
    assert finished("sentiment", {"status": "completed"}) and finished("sentiment", {"status": "failed"})
    assert not finished("sentiment", {"status": "in_progress"}) and not finished("sentiment", None)


def test_the_calls_score_weighs_each_evaluator_and_any_failure_fails_it():
    found = verdict("evaluation", [run("completed", 0.9, "success", weight=0.25),
                                   run("completed", 0.3, "failure", weight=0.75), run("failed")])
    assert (found.score, found.classification) == (0.45, "failure")
    assert verdict("evaluation", [run("completed", 0.8, "irrelevant")]).classification == "irrelevant"
    assert verdict("evaluation", [run("failed")]) == verdict("evaluation", []) == verdict("evaluation", None)


def test_a_sentiments_verdict_is_its_average_and_category():
    found = verdict("sentiment", {"status": "completed", "average_sentiment": 0.72,
                                  "average_categorical_sentiment": "positive"})
    assert (found.score, found.classification) == (0.72, "positive")


TIMING = Timing(first_delay=120, max_delay=3600, give_up=86400)


def test_fetches_back_off_doubling_up_to_an_hour_then_give_up():
    due = NOW - 10
    assert [next_fetch(TIMING, n, due, NOW) - NOW for n in (1, 2, 3, 5, 6, 20)] == [120, 240, 480, 1920, 3600, 3600]
    assert next_fetch(TIMING, 1, due, NOW, retry_after=600) == NOW + 600  # never sooner than Retry-After
    assert next_fetch(TIMING, 9, NOW - 86400, NOW) is None


def destination(**fields):
    entry = {"name": "crm", "url": "https://crm.example.com/roark", "secret": new_secret(), **fields}
    return Destinations()("RELAY_DESTINATIONS", json.dumps([entry]))[0]


def test_a_destination_gets_only_the_verdicts_it_asked_for_and_that_pass_its_filter():
    failing_only = destination(events=["roark:evaluation"], when={"classification": "failure"})
    assert failing_only.wants_result("evaluation", "failure", 0.2)
    assert not failing_only.wants_result("evaluation", "success", 0.9)
    assert not failing_only.wants_result("sentiment", "negative", 0.1)
    low = destination(events=["roark:*", "vapi:end-of-call-report"], when={"score_below": 0.5})
    assert low.wants_result("evaluation", "success", 0.49) and not low.wants_result("evaluation", "success", 0.5)
    assert low.wants_result("sentiment", "positive", 0.9)  # the filter is the evaluation's
    assert low.wants("vapi", "end-of-call-report") and not destination().results


@pytest.mark.parametrize("fields, problem", [
    ({"events": ["roark:verdict"]}, "field events: 'roark:verdict': Roark's verdicts are roark:evaluation"),
    ({"when": {"classification": "failure"}}, "field when: filters roark:evaluation events"),
    ({"events": ["roark:evaluation"], "when": {"classification": "bad"}}, "field when: classification must be"),
    ({"events": ["roark:evaluation"], "when": {"score_below": 2}}, "field when: score_below must be"),
    ({"events": ["roark:evaluation"], "when": {"score": 1}}, "field when: Object contains unknown field `score`"),
])
def test_a_mistaken_result_event_or_filter_names_its_field(fields, problem):
    with pytest.raises(ConfigError, match="RELAY_DESTINATIONS: entry 1 \\(crm\\): " + problem):
        destination(**fields)


LIMITS = Thresholds(after=300, backlog_age=900, dead_letter_window=60, forwarding_silence=300,
                    evaluation_window=600, score_below=0.5)


def test_badly_evaluated_calls_are_one_summary_per_window():
    bad = BadCalls(50, NOW - 600, NOW - 5, ("c50", "c49"), ("Customer satisfaction: not resolved",))
    [condition] = evaluation(Observation(NOW, bad_calls=bad), LIMITS)
    assert (condition.kind, condition.subject, condition.held_up) == ("evaluation", "evaluations", 50)
    assert condition.summary.startswith("50 calls failed Roark's evaluation or scored below 0.5 since ")
    assert condition.summary.endswith("; Customer satisfaction: not resolved")
    assert evaluation(Observation(NOW, bad_calls=BadCalls(3, NOW - 599, NOW, (), ())), LIMITS) == []  # gathering
    [ended] = evaluation(Observation(NOW, bad_calls=BadCalls(3, NOW - 9000, NOW - 601, (), ())), LIMITS)
    assert condition.holds and not ended.holds  # summed up, but it holds no alert open
    assert evaluation(Observation(NOW), LIMITS) == []


@pytest.mark.parametrize("delay_passed", [False, True])
def test_the_fake_roarks_verdicts_hold_to_the_spec(delay_passed):
    now = NOW + (60 if delay_passed else 1)
    for call in ("call-1", "call-2", "call-3", "call-4"):
        runs = roark_results.evaluation_runs(call, NOW, now, 30)
        assert all(not list(validator_for("EvaluationRun").iter_errors(r)) for r in runs)
        assert not list(validator_for("SentimentAnalysis").iter_errors(roark_results.sentiment(call, NOW, now, 30)))
        assert finished("evaluation", runs) is delay_passed


def test_the_fake_roark_fails_some_calls_and_passes_others():
    classes = {verdict("evaluation", roark_results.evaluation_runs(f"call-{n}", NOW, NOW + 60, 30)).classification
               for n in range(20)}
    assert classes == {"success", "failure"}
