"""Realistic provider webhooks, signed the way VAPI and Retell sign them.

`relay send-sample` and `relay demo` send them, and the tests and benchmarks use them.
The payloads in `sample_payloads/` are representative of each provider (one VAPI report
carries a fake `twilioAuthToken`, to prove it is masked wherever the relay shows a
payload).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from relay.providers import retell

SAMPLES = Path(__file__).with_name("sample_payloads")


def sample(name: str) -> bytes:
    """A sample payload's bytes, e.g. `sample("vapi/end-of-call-report")`."""
    return (SAMPLES / f"{name}.json").read_bytes()


def sample_events(provider: str) -> list[str]:
    """The events there is a sample of for `provider`."""
    return sorted(path.stem for path in (SAMPLES / provider).glob("*.json"))


def with_call_id(name: str, call_id: str) -> bytes:
    """A sample with its call id replaced, to send many distinct calls."""
    document = json.loads(sample(name))
    if name.startswith("vapi/"):
        document["message"]["call"]["id"] = call_id
    else:
        document["call"]["call_id"] = call_id
    return json.dumps(document, ensure_ascii=False).encode()


def retell_headers(body: bytes, key: str, now: float | None = None) -> dict[str, str]:
    timestamp_ms = int((time.time() if now is None else now) * 1000)
    return {"content-type": "application/json", "x-retell-signature": retell.sign(key, body, timestamp_ms)}


def vapi_headers(secret: str) -> dict[str, str]:
    return {"content-type": "application/json", "x-vapi-secret": secret}
