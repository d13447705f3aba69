from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from relay.core.backoff import RetryPolicy, backoff_delay, schedule_bounds
from relay.core.transport import parse_retry_after
from relay.forwarding.retry import (
    AttemptResult,
    Delivered,
    GiveUp,
    PauseDelivery,
    Receiver,
    RetryAt,
    StopReceiver,
    decide,
)

NOW = 1_700_000_000.0
POLICY = RetryPolicy()


def status(code: int, **headers: str) -> AttemptResult:
    return AttemptResult(code, headers)


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(code):
    assert decide(POLICY, 1, status(code), NOW) == Delivered()


@pytest.mark.parametrize("code", [408, 425, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses_are_retried_later(code):
    decision = decide(POLICY, 1, status(code), NOW, rand=lambda: 0.5)
    assert isinstance(decision, RetryAt)
    assert decision.at == pytest.approx(NOW + POLICY.base_delay)


@pytest.mark.parametrize("error", ["timeout (ReadTimeout)", "ConnectError: refused", "RemoteProtocolError"])
def test_transport_errors_are_retried(error):
    decision = decide(POLICY, 3, AttemptResult(None, error=error), NOW, rand=lambda: 0.5)
    assert isinstance(decision, RetryAt)
    assert error in decision.reason


@pytest.mark.parametrize("code", [400, 404, 409, 410, 413, 422])
def test_other_4xx_are_permanent(code):
    decision = decide(POLICY, 1, status(code), NOW)
    assert isinstance(decision, GiveUp)
    assert f"HTTP {code}" in decision.reason


@pytest.mark.parametrize("code", [401, 403])
def test_auth_failures_pause_instead_of_failing(code):
    decision = decide(POLICY, POLICY.max_attempts, status(code), NOW)
    assert isinstance(decision, PauseDelivery)
    assert "ROARK_API_KEY" in decision.reason


def test_redirect_pauses_and_names_the_base_url():
    decision = decide(POLICY, 1, status(301, location="https://api.roark.ai/v1/vapi/call"), NOW)
    assert isinstance(decision, PauseDelivery)
    assert "ROARK_BASE_URL" in decision.reason and "https://api.roark.ai" in decision.reason


def test_gives_up_when_attempts_are_spent():
    assert isinstance(decide(POLICY, POLICY.max_attempts - 1, status(500), NOW), RetryAt)
    decision = decide(POLICY, POLICY.max_attempts, status(500), NOW)
    assert isinstance(decision, GiveUp)
    assert "HTTP 500" in decision.reason


def test_backoff_grows_exponentially_to_the_cap():
    middle = [backoff_delay(POLICY, n, lambda: 0.5) for n in range(1, 12)]
    assert middle[:4] == pytest.approx([5, 15, 45, 135])
    assert middle == sorted(middle)
    assert max(middle) == pytest.approx(POLICY.max_delay)


@pytest.mark.parametrize("attempt", [1, 5, 15, 1000])
def test_jitter_stays_within_twenty_percent(attempt):
    nominal = backoff_delay(POLICY, attempt, lambda: 0.5)
    assert backoff_delay(POLICY, attempt, lambda: 0.0) == pytest.approx(nominal * 0.8)
    assert backoff_delay(POLICY, attempt, lambda: 1.0) == pytest.approx(nominal * 1.2)


def test_default_schedule_spans_at_least_a_day_even_with_unlucky_jitter():
    low, high = schedule_bounds(POLICY)
    assert low >= 24 * 3600
    assert high <= 3 * 24 * 3600


def test_retry_after_seconds_is_honoured_when_longer_than_backoff():
    decision = decide(POLICY, 1, status(429, **{"retry-after": "120"}), NOW, rand=lambda: 0.5)
    assert decision.at == pytest.approx(NOW + 120)


def test_backoff_wins_when_retry_after_is_shorter():
    decision = decide(POLICY, 6, status(503, **{"Retry-After": "1"}), NOW, rand=lambda: 0.5)
    assert decision.at == pytest.approx(NOW + backoff_delay(POLICY, 6, lambda: 0.5))


def test_retry_after_http_date():
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    headers = {"Retry-After": format_datetime(when, usegmt=True)}
    assert parse_retry_after(headers, NOW) == pytest.approx(90)
    decision = decide(POLICY, 1, status(429, **headers), NOW, rand=lambda: 0.5)
    assert decision.at == pytest.approx(NOW + 90)


def test_retry_after_ms_takes_precedence():
    assert parse_retry_after({"retry-after-ms": "2500", "retry-after": "9"}, NOW) == 2.5


def test_past_http_date_means_now():
    when = datetime.fromtimestamp(NOW, UTC) - timedelta(hours=1)
    assert parse_retry_after({"retry-after": format_datetime(when, usegmt=True)}, NOW) == 0


@pytest.mark.parametrize("value", ["soon", "-5", "1.5e400", "", "Mon, 99 Foo 2024"])
def test_unparseable_retry_after_is_ignored(value):
    assert parse_retry_after({"retry-after": value, "retry-after-ms": value}, NOW) is None


def test_huge_retry_after_is_capped():
    decision = decide(POLICY, 1, status(429, **{"retry-after": str(10**9)}), NOW, rand=lambda: 0.5)
    assert decision.at == pytest.approx(NOW + POLICY.max_retry_after)


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"base_delay": -1}, {"multiplier": 0.5}, {"jitter": 1.0},
               {"base_delay": 10, "max_delay": 5}]
)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_a_request_that_cannot_be_built_is_permanent():
    decision = decide(POLICY, 1, AttemptResult(None, error="payload cannot be encoded", permanent=True), NOW)
    assert isinstance(decision, GiveUp)


DESTINATION = Receiver("destination crm", "the secret of destination crm", "its url", gone_stops=True)


def test_a_destination_that_answers_gone_is_stopped_and_roark_is_not():
    assert isinstance(decide(POLICY, 1, status(410), NOW, receiver=DESTINATION), StopReceiver)
    # Roark's API never says 410 of itself: there it is a 4xx like any other.
    assert isinstance(decide(POLICY, 1, status(410), NOW), GiveUp)


def test_refusals_name_the_receiver_and_what_to_fix():
    assert decide(POLICY, 1, status(401), NOW, receiver=DESTINATION) == PauseDelivery(
        "destination crm answered 401: check the secret of destination crm")
    assert decide(POLICY, 1, status(403), NOW) == PauseDelivery("Roark answered 403: check ROARK_API_KEY")
