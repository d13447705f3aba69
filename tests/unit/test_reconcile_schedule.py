"""Which window each reconciliation run covers, what it leaves for the next, and when
failing runs turn /health degraded."""

import pytest

from relay.outbox import Progress, Reconciliation
from relay.providers.calls import Window
from relay.reconciliation.schedule import (
    OVERLAP_SECONDS,
    Planned,
    Timing,
    chosen_window,
    failing_too_long,
    next_run,
    progress,
    stopped_without_finishing,
)

NOW = 1_700_000_000.0
TIMING = Timing(interval=900, grace=600, lookback=86400)


def test_the_first_run_looks_back_and_leaves_the_grace_period_alone():
    assert next_run(None, NOW, TIMING) == Planned(Window(NOW - 86400, NOW - 600))
    assert next_run(Reconciliation("vapi"), NOW, TIMING) == Planned(Window(NOW - 86400, NOW - 600))


def test_later_runs_go_on_from_the_last_complete_one_with_some_overlap():
    state = Reconciliation("vapi", reconciled_until=NOW - 1500)
    assert next_run(state, NOW, TIMING) == Planned(Window(NOW - 1500 - OVERLAP_SECONDS, NOW - 600))


def test_a_relay_that_was_down_for_days_reconciles_all_of_them():
    state = Reconciliation("vapi", reconciled_until=NOW - 5 * 86400)
    assert next_run(state, NOW, TIMING).window.start == NOW - 5 * 86400 - OVERLAP_SECONDS


def test_a_window_left_part_way_is_finished_first_from_its_token():
    state = Reconciliation("retell", reconciled_until=NOW - 5000, pending_start=NOW - 5300,
                           pending_end=NOW - 1000, pending_token="call-77")
    assert next_run(state, NOW, TIMING) == Planned(Window(NOW - 5300, NOW - 1000), "call-77")


def test_nothing_to_do_while_everything_ended_too_recently():
    assert next_run(Reconciliation("vapi", reconciled_until=NOW - 200), NOW, TIMING) is None
    assert next_run(None, NOW, Timing(900, 600, 600)) is None


def test_progress_after_a_page_and_after_the_windows_last():
    window = Window(NOW - 900, NOW - 600)
    assert progress(NOW - 1000, window, "page-3") == Progress(NOW - 1000, NOW - 900, NOW - 600, "page-3")
    assert progress(NOW - 1000, window, None) == Progress(NOW - 600)
    assert progress(None, window, None) == Progress(NOW - 600)
    # an operator's older window never moves the schedule back
    assert progress(NOW, window, None) == Progress(NOW)


def test_an_operators_window():
    assert chosen_window(NOW, 600, since=86400) == Window(NOW - 86400, NOW - 600)
    assert chosen_window(NOW, 600, start=NOW - 7200, end=NOW - 3600) == Window(NOW - 7200, NOW - 3600)
    assert chosen_window(NOW, 600, start=NOW - 7200, end=NOW) == Window(NOW - 7200, NOW - 600)
    with pytest.raises(ValueError, match="empty"):
        chosen_window(NOW, 600, start=NOW - 300)
    with pytest.raises(ValueError, match="empty"):
        chosen_window(NOW, 0, start=NOW - 300, end=NOW - 400)


def test_health_degrades_once_runs_have_failed_for_longer_than_two_intervals():
    failing = Reconciliation("vapi", failing_since=NOW - 1800, last_error="VAPI answered HTTP 500")
    assert failing_too_long(failing, "VAPI", NOW, 900) is None
    assert failing_too_long(failing, "VAPI", NOW + 1, 900) == \
        "VAPI reconciliation failing for 30 min: VAPI answered HTTP 500"
    assert failing_too_long(Reconciliation("vapi", last_success_at=NOW), "VAPI", NOW, 900) is None
    assert failing_too_long(failing, "VAPI", NOW + 1, 0) is None  # reconciliation off


def test_health_reports_a_run_whose_lease_ran_out_before_it_ended():
    held = Reconciliation("vapi", lease_owner="host-1:4242:9f3a", lease_expires_at=NOW)
    assert stopped_without_finishing(held, "VAPI", NOW - 1) is None  # it still holds the lease
    assert stopped_without_finishing(held, "VAPI", NOW + 120) == (
        "VAPI reconciliation run by host-1:4242:9f3a stopped without finishing (its lease ran out 2 min ago); "
        "the next run takes it over")
    ended = Reconciliation("vapi", last_run_at=NOW - 60)  # a run that ended hands its lease back
    assert stopped_without_finishing(ended, "VAPI", NOW + 120) is None
