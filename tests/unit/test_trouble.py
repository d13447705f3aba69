"""Telling an operator at once that Roark is down, and keeping the logs readable."""

from relay.forwarding.trouble import Repeated, UpstreamTrouble, retryable_failure

T = 1_700_000_000.0


def test_every_attempt_of_the_last_minute_failing_is_trouble():
    trouble = UpstreamTrouble()
    trouble.success(T)
    trouble.failure(T + 10, None, "ConnectError: connection refused")
    assert trouble.describe(T + 30) is None  # a success within the minute
    trouble.failure(T + 65, None, "ConnectError: connection refused")
    assert trouble.describe(T + 71) == "Roark unreachable for 61 s: ConnectError: connection refused"
    trouble.failure(T + 250, 503, "HTTP 503: overloaded")
    assert trouble.describe(T + 250) == "Roark answering 503 to every attempt for 4 min: HTTP 503: overloaded"
    assert trouble.describe(T + 250 + 61) is None  # nothing tried for a minute: nothing to judge
    trouble.success(T + 400)
    trouble.failure(T + 401, 502, "HTTP 502")
    assert trouble.describe(T + 430) is None


def test_a_first_failure_is_logged_and_its_repeats_summed_up_once_a_minute():
    trouble = UpstreamTrouble()
    assert trouble.failure(T, None, "ReadTimeout") is True
    assert [trouble.failure(T + n, None, "ReadTimeout") for n in (1, 2, 3)] == [False] * 3
    assert trouble.failure(T + 61, None, "ReadTimeout") == Repeated("ReadTimeout", 4, T + 1)
    assert trouble.failure(T + 62, 503, "HTTP 503") is True  # a different failure is news


def test_only_failures_retrying_should_ride_out_count():
    assert all(retryable_failure(code) for code in (None, 500, 503, 429, 408, 425))
    assert not any(retryable_failure(code) for code in (200, 201, 400, 401, 404, 422))
