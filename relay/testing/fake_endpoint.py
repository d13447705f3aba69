"""A team's own webhook endpoint, for tests and demos of destinations: it accepts a POST
to any path whose Standard Webhooks signature the official `standardwebhooks` library
verifies with its secret (200), and refuses anything else (401), recording every request.
Scripted behaviours (`Respond(410)`, `Slow(...)`, `Reset()`, ...) work as on `FakeRoark`.
"""

from __future__ import annotations

from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay.testing.fake_roark import FakeRoark
from relay.testing.roark_contract import Outcome, error_body, rejection


class FakeEndpoint(FakeRoark):
    def __init__(self, secret: str, **options: Any) -> None:
        super().__init__(**options)
        self.webhook = Webhook(secret)

    def _success_body(self) -> dict[str, object]:
        return {"received": True}

    def _evaluate(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Outcome:
        if method != "POST":
            return Outcome(405, error_body(405, f"{method} is not allowed here"), ())
        try:
            self.webhook.verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError) as error:
            return rejection(401, "unauthorized", f"signature not verified: {error}")
        return Outcome(200, self._success_body(), ())
