"""Helpers shared by every tier: sample payloads, signing, test credentials."""

from __future__ import annotations

import json
import time
from pathlib import Path

from relay.verification import sign_retell

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared"

ROARK_KEY = "rk_test_0123456789"
RETELL_KEY = "retell_key_abcdef"
VAPI_SECRET = "vapi_shared_secret_xyz"


def sample(name: str) -> bytes:
    """A provider sample payload, e.g. `sample("vapi/end-of-call-report")`."""
    return (FIXTURES / f"{name}.json").read_bytes()


def retell_headers(body: bytes, key: str = RETELL_KEY, now: float | None = None) -> dict[str, str]:
    ts = int((time.time() if now is None else now) * 1000)
    return {"content-type": "application/json", "x-retell-signature": sign_retell(key, body, ts)}


def vapi_headers(secret: str = VAPI_SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "x-vapi-secret": secret}


def with_call_id(name: str, call_id: str) -> bytes:
    """A sample with its call id replaced, so tests can send many distinct calls."""
    document = json.loads(sample(name))
    if name.startswith("vapi/"):
        document["message"]["call"]["id"] = call_id
    else:
        document["call"]["call_id"] = call_id
    return json.dumps(document, ensure_ascii=False).encode()


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
