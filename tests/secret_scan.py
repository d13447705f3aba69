"""No secret in anything the relay logs or serves.

The attack suites (crash, chaos, storage faults, hostile input, and the dedicated secrets
suite) each take the `secret_scan` fixture. A test hands it every response the relay
served and every log the relay wrote (a `relay serve` log file, or the in-process logs
captured by `captured_relay_logs`), and every credential the test sent: bearer tokens,
VAPI secrets, Retell and HMAC signatures. When the test ends the fixture searches all of
it for the configured secrets, the sample report's `twilioAuthToken` and each credential
sent, and fails the test naming the source of any hit (never the secret itself).

Signatures number in the thousands under hypothesis, so hex credentials are looked for
among the hex runs of the collected text rather than by one substring search each.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest
import structlog

from relay.core import logs
from relay.providers.samples import sample
from tests.helpers import RETELL_KEY, ROARK_KEY, VAPI_SECRET

VAPI_HMAC_SECRET = "vapi_hmac_secret_0123456789abcdef"
ADMIN_TOKEN = "admin-token-for-attack-suites-0123456789"
TWILIO_AUTH_TOKEN = json.loads(sample("vapi/end-of-call-report"))["message"]["phoneNumber"]["twilioAuthToken"]
CONFIGURED_SECRETS = (ROARK_KEY, RETELL_KEY, VAPI_SECRET, VAPI_HMAC_SECRET, ADMIN_TOKEN, TWILIO_AUTH_TOKEN)

# Signatures are hex (thousands of them under hypothesis): they are looked for in the
# hex runs of the collected text, not by one substring search each.
_HEX = re.compile(r"[0-9a-fA-F]+")
_HEX_RUNS = re.compile(r"[0-9a-fA-F]{12,}")  # as long as MIN_CREDENTIAL_LENGTH, at least
_RETELL_DIGEST = re.compile(r"d=([0-9a-fA-F]{16,})")
# Shorter values (a fuzzer's "abc") would match innocent text by chance.
MIN_CREDENTIAL_LENGTH = 12


class SecretScan:
    def __init__(self, secrets: Iterable[str] = CONFIGURED_SECRETS) -> None:
        self._configured = {s for s in secrets if s}
        self._sent: set[str] = set()
        self._texts: list[tuple[str, str]] = []
        self._files: list[tuple[str, Path]] = []
        self.responses = 0

    # --- what must never come back ----------------------------------------------------

    def forbid(self, *values: str | None) -> None:
        for value in values:
            if value and len(value) >= MIN_CREDENTIAL_LENGTH:
                self._sent.add(value)

    def forbid_headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """Every credential in request headers the test sent."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            name = name.lower() if isinstance(name, str) else name.decode("latin-1").lower()
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if name == "x-retell-signature":
                self.forbid(*_RETELL_DIGEST.findall(value))
            elif name == "authorization":
                self.forbid(value.partition(" ")[2].strip(), value)
            elif name in ("x-vapi-secret", "x-signature"):
                self.forbid(value.strip())

    # --- what the relay said ------------------------------------------------------------

    def served(self, response, label: str = "") -> None:
        """An httpx (or Starlette test client) response the relay sent."""
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.served_text(label or f"response {response.status_code}",
                         f"{response.status_code}\n{headers}\n\n{response.text}")

    def served_text(self, label: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.responses += 1
        self._texts.append((label, text))

    def logged(self, path: Path, label: str | None = None) -> None:
        """A log file, read when the test ends (so it holds everything written)."""
        self._files.append((label or f"log {path.name}", Path(path)))

    def logged_text(self, label: str, text: str) -> None:
        self._texts.append((label, text))

    # --- the verdict --------------------------------------------------------------------

    def _everything(self) -> Iterator[tuple[str, str]]:
        yield from self._texts
        for label, path in self._files:
            if path.exists():
                yield label, path.read_text(errors="replace")

    def findings(self) -> list[str]:
        found: list[str] = []
        sent = self._sent - self._configured
        sent_hex = {s for s in sent if _HEX.fullmatch(s)}
        sent_other = sent - sent_hex
        for label, text in self._everything():
            for index, secret in enumerate(sorted(self._configured)):
                if secret in text:
                    found.append(f"configured secret #{index} ({secret[:3]}…) in {label}")
            hits = {s for s in sent_other if s in text}
            if sent_hex:
                runs = set(_HEX_RUNS.findall(text))
                hits |= {s for s in sent_hex if s in runs or any(s in run for run in runs)}
            for value in sorted(hits):
                found.append(f"a credential the test sent ({value[:3]}…, {len(value)} chars) in {label}")
        return found

    def assert_clean(self) -> None:
        found = self.findings()
        assert not found, "secrets leaked:\n" + "\n".join(found[:20])


@pytest.fixture
def secret_scan() -> Iterator[SecretScan]:
    """Collects what the relay serves and logs during a test; fails it if a secret shows."""
    scan = SecretScan()
    yield scan
    scan.assert_clean()


@contextlib.contextmanager
def captured_relay_logs(level: str = "debug") -> Iterator[io.StringIO]:
    """The relay's own log set-up (structlog JSON lines plus the standard library's
    loggers: uvicorn, httpx), writing to a buffer instead of stdout, for apps run in
    process. The previous configuration is restored afterwards."""
    buffer = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_config = structlog.get_config()
    with contextlib.redirect_stdout(buffer):
        logs.configure(level, "json")
    # Cached loggers would keep writing to this buffer after the test; don't cache.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_config)
