"""Each kind of alert: when its rule says the condition holds, when it says it no longer
does, and when it cannot tell (pure functions: no clock, no store)."""

import pytest

from relay.alerts.rules import (
    RULES,
    Observation,
    Receiver,
    Refusals,
    Thresholds,
    backlog,
    dead_letter,
    delivery,
    forwarding,
    reconciliation,
    storage,
)
from relay.destinations import ALERT_KINDS
from relay.outbox import DeadLetters

NOW = 1_800_000_000.0
LIMITS = Thresholds(after=300, backlog_age=900, dead_letter_window=60, forwarding_silence=300,
                    evaluation_window=600, score_below=0.5)
ROARK = Receiver("roark", "Roark")


def seen(*receivers, **fields) -> Observation:
    return Observation(NOW, tuple(receivers), **fields)


def test_every_kind_a_channel_may_ask_for_has_its_rule():
    assert tuple(rule.kind for rule in RULES) == ALERT_KINDS


# --- delivery --------------------------------------------------------------------------

def failing(since: float, **fields) -> Receiver:
    return Receiver("roark", "Roark", failing_since=since, failure="HTTP 503 service_unavailable",
                    **{"last_attempt_at": NOW - 1, **fields})


def test_delivery_opens_once_every_attempt_has_failed_for_the_threshold():
    [early] = delivery(seen(failing(NOW - 299)), LIMITS)
    assert not early.opens  # it keeps an open alert open, but opens none yet
    [condition] = delivery(seen(failing(NOW - 300, waiting=12)), LIMITS)
    assert (condition.kind, condition.subject, condition.held_up, condition.opens) == ("delivery", "roark", 12, True)
    assert condition.summary == ("every attempt to Roark since 2027-01-15T07:55:00Z failed; "
                                 "the last: HTTP 503 service_unavailable")


def test_delivery_holds_however_far_apart_the_retries_grow_until_one_succeeds():
    # The last attempt an hour ago (a long backoff) still failed: nothing says Roark is back.
    [condition] = delivery(seen(failing(NOW - 7200, last_attempt_at=NOW - 3600)), LIMITS)
    assert condition.opens
    succeeded = Receiver("roark", "Roark", failing_since=None, last_attempt_at=NOW - 1)
    assert delivery(seen(succeeded), LIMITS) == []


def test_after_a_restart_an_untried_receiver_keeps_its_alert_while_deliveries_wait():
    [held] = delivery(seen(Receiver("roark", "Roark", last_attempt_at=None, waiting=3)), LIMITS)
    assert (held.opens, held.summary) == (False, "")  # the alert keeps its own summary
    assert delivery(seen(Receiver("roark", "Roark", last_attempt_at=None, waiting=0)), LIMITS) == []


def test_a_pause_or_a_stop_opens_at_once():
    paused = Receiver("roark", "Roark", paused="Roark answered 401: check ROARK_API_KEY")
    stopped = Receiver("crm", "destination crm", stopped="destination crm answered 410 Gone: stopped")
    found = {c.subject: (c.summary, c.opens) for c in delivery(seen(paused, stopped), LIMITS)}
    assert found == {"roark": ("delivery to Roark paused: Roark answered 401: check ROARK_API_KEY", True),
                     "crm": ("destination crm answered 410 Gone: stopped", True)}


def test_delivery_cannot_tell_while_no_forwarding_process_reports():
    assert delivery(seen(failing(NOW - 3600), forwarding_silent_since=NOW - 30), LIMITS) is None


# --- backlog ---------------------------------------------------------------------------

def test_backlog_opens_past_the_age_and_clears_below_it():
    old = Receiver("roark", "Roark", waiting=40, oldest_waiting_at=NOW - 901)
    [condition] = backlog(seen(old), LIMITS)
    assert (condition.kind, condition.subject, condition.held_up) == ("backlog", "roark", 40)
    assert "15 min old" in condition.summary
    assert backlog(seen(Receiver("roark", "Roark", waiting=40, oldest_waiting_at=NOW - 899)), LIMITS) == []


def test_backlog_leaves_it_to_the_delivery_alert_when_that_says_why():
    old_and_paused = Receiver("roark", "Roark", paused="401", waiting=40, oldest_waiting_at=NOW - 5000)
    assert backlog(seen(old_and_paused), LIMITS) == []
    old = Receiver("roark", "Roark", waiting=40, oldest_waiting_at=NOW - 5000)
    assert backlog(seen(old, forwarding_silent_since=NOW - 400), LIMITS) == []


# --- dead letters ----------------------------------------------------------------------

def letters(first_ago: float, last_ago: float, count: int = 20) -> DeadLetters:
    return DeadLetters(count, NOW - first_ago, NOW - last_ago, "permanent error (400: bad call)", ("c3", "c2", "c1"))


def test_dead_letters_are_gathered_for_a_window_then_summed_in_one_alert():
    assert dead_letter(seen(ROARK, dead_letters={"roark": letters(59, 1)}), LIMITS) == []
    [condition] = dead_letter(seen(ROARK, dead_letters={"roark": letters(60, 1)}), LIMITS)
    assert (condition.kind, condition.subject, condition.held_up) == ("dead_letter", "roark", 20)
    assert condition.summary.startswith("20 deliveries to Roark failed for good since ")
    assert condition.details["call_ids"] == ["c3", "c2", "c1"]
    assert condition.details["last_error"] == "permanent error (400: bad call)"


def test_dead_letters_of_a_receiver_the_delivery_alert_speaks_of_are_left_to_it():
    stopped = Receiver("crm", "destination crm", stopped="destination crm answered 410 Gone")
    assert dead_letter(seen(stopped, dead_letters={"crm": letters(60, 1)}), LIMITS) == []


def test_dead_letters_hold_their_alert_until_a_window_passes_without_one():
    [going_on] = dead_letter(seen(ROARK, dead_letters={"roark": letters(600, 59)}), LIMITS)
    [ended] = dead_letter(seen(ROARK, dead_letters={"roark": letters(600, 61)}), LIMITS)
    assert going_on.holds and not ended.holds


def test_a_single_dead_letter_is_summed_up_though_no_check_fell_within_its_window():
    # One dead letter 90 s ago, checked now: its window (60 s) has passed unseen, and the
    # alert still opens (and then resolves, being held by nothing).
    [condition] = dead_letter(seen(ROARK, dead_letters={"roark": letters(90, 90, count=1)}), LIMITS)
    assert (condition.opens, condition.holds, condition.held_up) == (True, False, 1)
    assert condition.summary.startswith("1 delivery to Roark failed for good")


# --- forwarding, reconciliation, storage -----------------------------------------------

def test_forwarding_opens_once_silent_for_its_threshold():
    assert forwarding(seen(ROARK, forwarding_silent_since=NOW - 299), LIMITS) == []
    [condition] = forwarding(seen(Receiver("roark", "Roark", waiting=7), forwarding_silent_since=NOW - 300), LIMITS)
    assert (condition.subject, condition.held_up) == ("forwarding", 7)
    assert "relay forward" in condition.summary
    assert forwarding(seen(ROARK), LIMITS) == []


def test_reconciliation_opens_per_provider_with_its_problems():
    found = reconciliation(seen(reconciliation={"vapi": ["VAPI reconciliation failing for 31 min: 500"]}), LIMITS)
    assert [(c.subject, c.summary) for c in found] == [("vapi", "VAPI reconciliation failing for 31 min: 500")]
    assert reconciliation(seen(), LIMITS) == []


@pytest.mark.parametrize("count, words", [(1, "1 webhook was"), (3, "3 webhooks were")])
def test_storage_opens_while_webhooks_were_refused(count, words):
    [condition] = storage(seen(storage=Refusals(count, NOW - 10, NOW - 1)), LIMITS)
    assert (condition.subject, condition.held_up) == ("outbox", count)
    assert condition.summary.startswith(f"{words} answered 503")
    assert storage(seen(), LIMITS) == []
