"""The login throttle: failed logins per client and overall, refilled as time passes."""

from pytest import approx

from relay.admin.throttle import LoginThrottle


def test_a_client_is_held_back_once_its_failures_are_spent_then_refills():
    now = [1000.0]
    throttle = LoginThrottle(per_client=3, overall=100, period=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.wait("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == approx(20.0)  # one failure's worth refills in 60/3 s
    assert throttle.wait("10.0.0.2") == 0
    now[0] += 19.0
    assert throttle.wait("10.0.0.1") == approx(1.0)
    now[0] += 1.0
    assert throttle.wait("10.0.0.1") == approx(0, abs=1e-9)


def test_failures_from_everywhere_share_one_overall_budget():
    now = [1000.0]
    throttle = LoginThrottle(per_client=3, overall=4, period=60.0, clock=lambda: now[0])
    for n in range(4):
        throttle.failed(f"10.0.0.{n}")
    assert throttle.wait("10.0.0.9") == approx(15.0)
    now[0] += 15.0
    assert throttle.wait("10.0.0.9") == approx(0, abs=1e-9)


def test_clients_whose_budget_is_whole_again_are_forgotten():
    now = [1000.0]
    throttle = LoginThrottle(per_client=2, overall=10**6, period=60.0, clock=lambda: now[0])
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    now[0] += 60.0
    throttle.failed("10.9.9.9")
    assert len(throttle) == 1  # clients tracked
