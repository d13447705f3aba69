"""Helpers shared by every tier: test credentials, signed samples, polling."""

from __future__ import annotations

import time
from pathlib import Path

from relay.testing import webhooks
from relay.testing.webhooks import sample, with_call_id

__all__ = ["sample", "with_call_id", "retell_headers", "vapi_headers", "eventually"]

SHARED = Path(__file__).resolve().parents[2] / "shared"

ROARK_KEY = "rk_test_0123456789"
RETELL_KEY = "retell_key_abcdef"
VAPI_SECRET = "vapi_shared_secret_xyz"


def retell_headers(body: bytes, key: str = RETELL_KEY, now: float | None = None) -> dict[str, str]:
    return webhooks.retell_headers(body, key, now)


def vapi_headers(secret: str = VAPI_SECRET) -> dict[str, str]:
    return webhooks.vapi_headers(secret)


def eventually(condition, timeout: float = 15.0, interval: float = 0.02, message: str = ""):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds.

    For state the test cannot be notified about (a row in another process's database).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)
