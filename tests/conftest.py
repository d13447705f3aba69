"""Fixtures shared by every tier: the upstream spec, a fake Roark, relay settings."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.settings import Settings
from relay.testing.fake_roark import FakeRoark
from tests.helpers import RETELL_KEY, ROARK_KEY, SHARED, VAPI_SECRET, fresh_schema

# The `secret_scan` fixture, for every suite that checks what leaves the relay.
pytest_plugins = ["tests.secret_scan"]


def pytest_terminal_summary(terminalreporter) -> None:
    """The figures the attack suites measure (`record_property`), after the run: printed
    as they come, they would break pytest's line of progress dots."""
    measured = [report for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
                if report.when == "call" and report.user_properties]
    if measured:
        terminalreporter.section("figures")
        for report in measured:
            terminalreporter.write_line(f"{report.nodeid}: {json.dumps(dict(report.user_properties), default=str)}")


@pytest.fixture(scope="session")
def roark_spec() -> dict:
    """The authoritative upstream spec: RELAY_TEST_SPEC, else ../shared/roark-openapi.json
    (CI has it); tests needing it skip without it, saying how to give it."""
    path = Path(os.environ.get("RELAY_TEST_SPEC") or SHARED / "roark-openapi.json")
    if not path.exists():
        pytest.skip("Roark's OpenAPI spec not found: set RELAY_TEST_SPEC=/path/to/roark-openapi.json")
    return json.loads(path.read_text())


@pytest.fixture
def fake_roark():
    with FakeRoark(api_key=ROARK_KEY) as fake:
        yield fake


@pytest.fixture
def relay_env(tmp_path, fake_roark) -> dict[str, str]:
    """Environment for a relay talking to `fake_roark`, with a fast retry schedule."""
    return {
        "ROARK_API_KEY": ROARK_KEY,
        "ROARK_BASE_URL": fake_roark.url,
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RETELL_API_KEY": RETELL_KEY,
        "VAPI_SECRET": VAPI_SECRET,
        "RELAY_RETRY_BASE_SECONDS": "0.05",
        "RELAY_RETRY_MAX_DELAY_SECONDS": "0.2",
        "RELAY_RETRY_MAX_ATTEMPTS": "4",
        "RELAY_POLL_INTERVAL_SECONDS": "0.05",
        "RELAY_AUTH_PAUSE_SECONDS": "0.3",
        "ROARK_TIMEOUT_SECONDS": "5",
        "RELAY_LOG_FORMAT": "json",
        # RETELL_API_KEY alone would send the relay to Retell's real API to reconcile;
        # the reconciliation tests turn it on against fake provider APIs.
        "RELAY_RECONCILE_INTERVAL_SECONDS": "0",
    }


@pytest.fixture
def relay_settings(relay_env) -> Settings:
    return Settings.from_env(relay_env)


def _service(env_name: str, what: str) -> str:
    """A real service the tests need; skipped where absent, but CI
    (RELAY_TEST_REQUIRE_SERVICES=1, set by .ci/run) fails instead of skipping."""
    value = os.environ.get(env_name)
    if value:
        return value
    reason = f"{what} not available: set {env_name} (.ci/run does)"
    if os.environ.get("RELAY_TEST_REQUIRE_SERVICES"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL database the tests may freely create tables in."""
    return _service("RELAY_TEST_POSTGRES_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    return _service("RELAY_TEST_CHROMIUM", "Chromium (Debian package chromium)")


@pytest.fixture
def postgres_schema_url(postgres_url) -> Iterator[str]:
    """A fresh, empty schema on the test server, dropped afterwards."""
    with fresh_schema(postgres_url) as url:
        yield url
