"""Wrong logins cannot lock the operator out (hardening round three, 10).

Guessers on many addresses, or behind a proxy where everyone shares one, spent the
login throttle's budgets, and the operator's own right token got 429 until they
stopped. The admin token holds 64 bits or more, so the right token is never refused.
"""

from __future__ import annotations

import re

import httpx
import pytest

from relay.admin.throttle import FAILURES_OVERALL
from tests.secret_scan import ADMIN_TOKEN

pytestmark = pytest.mark.e2e


def log_in(relay, token: str, source: str) -> httpx.Response:
    """The login form, filled in and sent from `source` (an address on loopback)."""
    with httpx.Client(base_url=relay.url, transport=httpx.HTTPTransport(local_address=source),
                      timeout=10, follow_redirects=False) as browser:
        form = browser.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1]
        # The login cookie is Secure (__Host-): over plain loopback HTTP it goes by hand.
        return browser.post("/login", data={"csrf_token": csrf, "next": "/status", "token": token},
                            headers={"cookie": "; ".join(f"{k}={v}" for k, v in form.cookies.items())})


def test_guessers_on_many_addresses_never_lock_the_operator_out(start_relay, relay_env):
    relay = start_relay({**relay_env, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN})
    guesses = [log_in(relay, f"wrong-guess-{n:04}-0123456789", f"127.0.0.{2 + n % 18}").status_code
               for n in range(FAILURES_OVERALL + 10)]
    # The overall budget is spent (it refills by one a second meanwhile): guessers get 429.
    assert set(guesses) == {401, 429} and guesses.count(429) >= 5, guesses
    operator = log_in(relay, ADMIN_TOKEN, "127.0.0.30")
    assert operator.status_code == 303 and "__Host-relay_session=" in operator.headers["set-cookie"]
    # Behind a proxy everyone shares one address: the right token still gets in there too.
    assert log_in(relay, ADMIN_TOKEN, "127.0.0.2").status_code == 303
