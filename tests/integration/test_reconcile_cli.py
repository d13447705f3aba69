"""`relay reconcile`, run in process against fake provider APIs and a temp SQLite outbox."""

import json
import time

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.outbox import DeliveryFilter, open_backend
from relay.testing.fake_providers import FakeRetell, FakeVapi, retell_call, vapi_call

HOUR = 3600.0


@pytest.fixture
def vapi():
    with FakeVapi("vapi-private-key") as fake:
        now = time.time()
        fake.add(vapi_call("old-call", now - 30 * HOUR), vapi_call("recent-call", now - 2 * HOUR),
                 vapi_call("just-ended", now - 60))
        yield fake


@pytest.fixture
def env(tmp_path, vapi):
    return {"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "VAPI_API_KEY": vapi.api_key,
            "VAPI_API_BASE_URL": vapi.url}


def run(env, *args):
    return CliRunner(env=env).invoke(main, ["reconcile", *args], catch_exceptions=False)


def stored(env):
    backend = open_backend(env["RELAY_DATABASE_URL"])
    try:
        return sorted(d.call_id for d in backend.list_deliveries(DeliveryFilter(), None, 100)), \
            {s.provider: s for s in backend.reconciliations()}
    finally:
        backend.close()


def test_a_dry_run_says_what_it_would_queue_and_stores_nothing(env):
    result = run(env, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("vapi: ") and lines[0].endswith(
        ": 1 calls listed, 1 ended, 0 already held, 1 would queue")  # the last 24 h, less the grace
    assert lines[1:] == ["  would queue: recent-call"]
    assert stored(env) == ([], {})


def test_a_run_queues_and_goes_on_from_where_it_ended(env):
    result = run(env)
    assert result.exit_code == 0 and "1 queued" in result.output and "  queued: recent-call" in result.output
    calls, states = stored(env)
    assert calls == ["recent-call"] and states["vapi"].last_queued == 1 and states["vapi"].reconciled_until
    again = run(env)  # from where the first ended (less 5 min of overlap), so it lists nothing
    assert again.exit_code == 0 and "0 calls listed, 0 ended, 0 already held, 0 queued" in again.output
    assert stored(env)[1]["vapi"].reconciled_until > states["vapi"].reconciled_until


def test_an_operators_window_is_a_backfill_that_leaves_the_schedule_alone(env):
    result = run(env, "--since", "2d")
    assert result.exit_code == 0 and "2 calls listed, 2 ended, 0 already held, 2 queued" in result.output
    assert stored(env) == (["old-call", "recent-call"], {})
    start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3 * HOUR))
    result = run(env, "--from", start, "--to", time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()))
    assert "1 calls listed, 1 ended, 1 already held, 0 queued" in result.output


def test_a_refused_key_is_a_clear_failure(env):
    result = run({**env, "VAPI_API_KEY": "revoked"})
    assert result.exit_code == 1
    assert "vapi: FAILED: VAPI refused VAPI_API_KEY (HTTP 401 to GET /call): check the key" in result.output


def test_each_provider_is_reconciled_and_the_failing_one_decides_the_exit_code(env):
    with FakeRetell("retell-key") as retell:
        retell.add(retell_call("retell-call", time.time() - HOUR))
        both = {**env, "RETELL_API_KEY": "wrong-key", "RETELL_API_BASE_URL": retell.url}
        result = run(both)
        assert result.exit_code == 1 and "vapi: " in result.output and "retell: FAILED" in result.output
        result = run({**both, "RETELL_API_KEY": "retell-key"}, "--provider", "retell")
        assert result.exit_code == 0 and "  queued: retell-call" in result.output
        backend = open_backend(env["RELAY_DATABASE_URL"])
        body = json.loads(backend.get(2).body)
        backend.close()
        assert body["event"] == "call_ended" and body["call"]["call_id"] == "retell-call"


@pytest.mark.parametrize("args, message", [
    (["--since", "1h", "--from", "2026-01-01"], "not both"),
    (["--to", "2026-01-01"], "--to needs --from"),
    (["--from", "yesterday"], "ISO 8601"),
    (["--since", "5m"], "the window is empty"),  # all of it within the grace period
])
def test_usage_errors(env, args, message):
    result = run(env, *args)
    assert result.exit_code == 2 and message in result.output


def test_without_any_api_key_it_says_which_to_set(tmp_path):
    result = run({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}"})
    assert result.exit_code == 2 and "set VAPI_API_KEY or RETELL_API_KEY to reconcile" in result.output
    result = run({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "VAPI_API_KEY": "k"},
                 "--provider", "retell")
    assert result.exit_code == 2 and "set RETELL_API_KEY to reconcile" in result.output
