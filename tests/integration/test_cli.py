"""The `relay` command against a temp SQLite outbox: in process, and as its own process
where what a user sees is the point (`relay_process`)."""

import json
import threading
import time

import click
import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.cli.check import KEY_PROBE_PATH
from relay.cli.common import parse_duration
from relay.outbox import Attempt, Completion, NewDelivery, State, migrations, open_backend
from relay.settings import Settings
from relay.testing.fake_roark import FakeRoark
from tests.helpers import free_port, relay_process

NOW = time.time()


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_help_text():
    commands = list(all_commands(main))
    assert {("serve",), ("migrate",), ("deliveries", "list"), ("deliveries", "show"), ("replay",),
            ("prune",), ("demo",), ("settings",), ("secret",), ("destinations", "list"),
            ("destinations", "resume")} <= {path for path, _ in commands}
    for path, command in commands:
        assert command.help and len(command.help.strip()) > 20, f"relay {' '.join(path)} lacks help"
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.output
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"relay {' '.join(path)} {param.opts[0]} lacks help"


@pytest.fixture
def env(tmp_path):
    return {"ROARK_API_KEY": "rk_test", "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}


@pytest.fixture
def store(env):
    backend = open_backend(env["RELAY_DATABASE_URL"])
    backend.migrate()
    yield backend
    backend.close()


def run(env, *args):
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def add(store, call_id, state, body=None, provider="vapi", received_at=NOW):
    body = body or json.dumps({"message": {"type": "end-of-call-report", "call": {"id": call_id},
                                           "phoneNumber": {"twilioAuthToken": "tw-secret-123"}}}).encode()
    [row] = store.insert_many(
        [NewDelivery(provider, "end-of-call-report", call_id, f"e:{call_id}", body, received_at)], NOW)
    if state is not State.PENDING:
        store.claim("cli-test", NOW, 60, 1)
        status, error = (400, "HTTP 400 invalid_parameter: bad") if state is State.FAILED else (201, None)
        attempt = Attempt(1, NOW, 5.0, status, error, state.value)
        store.complete(row.delivery_id, "cli-test",
                       Completion(state, NOW, status_code=status, error=error, attempt=attempt))
    return row.delivery_id


def test_configuration_errors_name_the_variable(tmp_path):
    result = CliRunner(env={"ROARK_API_KEY": "", "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}).invoke(
        main, ["check"])
    assert result.exit_code == 2 and "ROARK_API_KEY" in result.output


def test_commands_that_only_read_or_repair_the_outbox_need_no_roark_key(env, store):
    failed = add(store, "no-key", State.FAILED)
    keyless = {**env, "ROARK_API_KEY": ""}
    for command in (["migrate"], ["deliveries", "list"], ["deliveries", "show", str(failed)],
                    ["replay", str(failed)], ["prune", "--older-than", "30d"]):
        result = CliRunner(env=keyless).invoke(main, command)
        assert result.exit_code == 0, (command, result.output)


def test_settings_prints_an_environment_file_the_relay_reads_back(tmp_path):
    result = CliRunner().invoke(main, ["settings"], env={})
    assert result.exit_code == 0
    assert "ROARK_API_KEY=rk_live_replace_me" in result.output.splitlines()
    environ = dict(line.split("=", 1) for line in result.output.splitlines()
                   if line and not line.startswith("#"))
    assert Settings.from_env({**environ, "ROARK_API_KEY": "rk_live_mine"}).roark_api_key.reveal() == "rk_live_mine"


def test_an_unedited_example_file_is_refused_naming_its_placeholder(tmp_path):
    written = relay_process({}, "settings", cwd=tmp_path)
    (tmp_path / ".env").write_text(written.stdout)
    result = relay_process({}, "check", cwd=tmp_path)
    assert result.returncode == 2 and "configuration: ok" not in result.stdout
    assert "ROARK_API_KEY: still holds the example's placeholder 'rk_live_replace_me'" in result.stderr


def test_variables_that_name_no_setting_are_pointed_out_with_the_closest_one(tmp_path):
    (tmp_path / ".env").write_text("RELAY_DESTINATION=[]\n")
    env = {"ROARK_API_KEY": "rk_test", "ROARK_API_BASE_URL": "https://api.roark.ai", "VAPI_SECERT": "s",
           # the test suite's own, set where the tests run: never taken for typos
           "RELAY_TEST_POSTGRES_URL": "postgresql://x/y", "RELAY_SCREENSHOTS": "/tmp/shots"}
    result = relay_process(env, "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("configuration: WARNING")]
    assert warnings == [
        "configuration: WARNING RELAY_DESTINATION is set but is no setting, so it is ignored; "
        "did you mean RELAY_DESTINATIONS?",
        "configuration: WARNING ROARK_API_BASE_URL is set but is no setting, so it is ignored; "
        "did you mean ROARK_BASE_URL?",
        "configuration: WARNING VAPI_SECERT is set but is no setting, so it is ignored; did you mean VAPI_SECRET?",
    ]


def test_json_that_does_not_parse_says_where(tmp_path):
    env = {"ROARK_API_KEY": "rk_test", "RELAY_DESTINATIONS": '[\n  {"name": "crm", "url": "https://crm"},\n]'}
    result = relay_process(env, "check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("relay: configuration error: RELAY_DESTINATIONS: is not valid JSON: "
                             "trailing comma in array at line 3, column 1\n")


def test_a_sqlite_url_short_of_a_slash_shows_the_forms_that_work(tmp_path):
    result = relay_process({"ROARK_API_KEY": "rk_test", "RELAY_DATABASE_URL": "sqlite://relay.db"}, "check",
                           cwd=tmp_path)
    assert result.returncode == 2 and "got scheme" not in result.stderr
    assert "sqlite://relay.db has too few slashes" in result.stderr
    assert "(sqlite:///relay.db)" in result.stderr and "(sqlite:////abs/path/to/file.db)" in result.stderr


def test_help_says_where_the_settings_come_from(tmp_path):
    result = relay_process({}, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "a .env file in the" in result.stdout and "relay settings" in result.stdout


def test_commands_that_read_the_outbox_refuse_a_database_that_is_not_there(tmp_path):
    database = tmp_path / "relay.db"
    for command in (["deliveries", "list"], ["deliveries", "show", "1"], ["destinations", "list"],
                    ["replay", "1"], ["prune", "--older-than", "30d"]):
        result = relay_process({"RELAY_DATABASE_URL": "sqlite:///relay.db"}, *command, cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stdout == "" and "no deliveries match" not in result.stderr
        assert f"the database {database} does not exist (RELAY_DATABASE_URL is sqlite:///relay.db)" \
            in result.stderr
        assert list(tmp_path.iterdir()) == [], command  # nor its -wal and -shm


def test_a_dotenv_file_in_the_working_directory_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        f"ROARK_API_KEY=rk_from_dotenv\nRELAY_DATABASE_URL=sqlite:///{tmp_path / 'file.db'}\n")
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0 and "file.db" in result.output
    result = CliRunner(env={"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}"}).invoke(main, ["check"])
    assert result.exit_code == 0 and "env.db" in result.output and "file.db" not in result.output


def test_migrate(env):
    result = run(env, "migrate")
    latest = migrations.load("sqlite")[-1].version
    assert result.exit_code == 0 and f"outbox schema at version {latest}" in result.output


def test_list_filters_and_json(env, store):
    failed = add(store, "call-failed", State.FAILED)
    add(store, "call-done", State.DELIVERED)
    add(store, "retell-1", State.PENDING, provider="retell")
    table = run(env, "deliveries", "list").output
    assert "call-failed" in table and "call-done" in table and "invalid_parameter" in table
    only_failed = [json.loads(line)
                   for line in run(env, "deliveries", "list", "--state", "failed", "--json").output.splitlines()]
    assert [r["id"] for r in only_failed] == [failed] and only_failed[0]["last_status"] == 400
    assert "retell-1" in run(env, "deliveries", "list", "--provider", "retell").output
    assert "call-done" not in run(env, "deliveries", "list", "--call-id", "call-f").output
    paged = run(env, "deliveries", "list", "--limit", "1").output
    assert "more: relay deliveries list --before" in paged


def test_a_long_error_is_shortened_between_words(env, store):
    [row] = store.insert_many([NewDelivery("vapi", "e", "long", "e:long", b"{}", NOW)], NOW)
    store.claim("cli-test", NOW, 60, 1)
    error = "permanent error (HTTP 400): invalid_parameter: " + " ".join(["assistantOverrides"] * 12)
    store.complete(row.delivery_id, "cli-test", Completion(State.FAILED, NOW, status_code=400, error=error,
                                                            attempt=Attempt(1, NOW, 5.0, 400, error, "giveup")))
    [line] = [line for line in run(env, "deliveries", "list").output.splitlines() if "long  " in line]
    shown = line.split("long  ", 1)[1].strip()
    assert shown.endswith("assistantOverrides ...") and len(shown) <= 80


def test_show_masks_secrets(env, store):
    delivery_id = add(store, "call-x", State.FAILED)
    result = run(env, "deliveries", "show", str(delivery_id))
    assert result.exit_code == 0
    assert "call-x" in result.output and "#1" in result.output and "invalid_parameter" in result.output
    assert "tw-secret-123" not in result.output and "********" in result.output
    missing = CliRunner(env=env).invoke(main, ["deliveries", "show", "999"])
    assert missing.exit_code == 1 and "no delivery 999" in missing.output


def test_replay_ids_and_all_failed(env, store):
    a, b = add(store, "a", State.FAILED), add(store, "b", State.FAILED)
    done = add(store, "c", State.DELIVERED)
    result = run(env, "replay", str(a), str(done))
    assert result.exit_code == 0
    assert f"replayed 1 delivery: {a}" in result.output
    assert f"not replayed (delivered or being delivered): {done}" in result.output
    assert store.get(a).state is State.PENDING and store.get(a).attempts == 0
    assert f"replayed 1 delivery: {b}" in run(env, "replay", "--all-failed").output
    assert store.counts()[State.FAILED] == 0


def test_replaying_an_unknown_id_fails_and_says_so(env, store):
    known = add(store, "known", State.FAILED)
    result = CliRunner(env=env).invoke(main, ["replay", str(known), "9999"])
    assert result.exit_code == 1
    assert f"replayed 1 delivery: {known}" in result.output and "no delivery 9999" in result.output


def test_replaying_only_unknown_ids_says_only_that(env, store, tmp_path):
    result = relay_process(env, "replay", "999999", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == "" and result.stderr == "relay: no delivery 999999\n"


def test_the_retrying_state_lists_what_the_status_page_calls_retrying(env, store, tmp_path):
    add(store, "failed", State.FAILED)
    store.insert_many([NewDelivery("vapi", "end-of-call-report", "tried", "e:tried", b"{}", NOW)], NOW)
    [claimed] = store.claim("cli-test", NOW, 60, 1)
    attempt = Attempt(1, NOW, 5.0, 503, "HTTP 503", "retry")
    store.complete(claimed.id, "cli-test", Completion(State.PENDING, NOW, next_attempt_at=NOW + 60, status_code=503,
                                                      error="HTTP 503", attempt=attempt))
    add(store, "never-tried", State.PENDING)
    result = relay_process(env, "deliveries", "list", "--state", "retrying", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["call_id"] for line in result.stdout.splitlines()] == ["tried"]
    mixed = relay_process(env, "deliveries", "list", "--state", "retrying", "--state", "failed", cwd=tmp_path)
    assert mixed.returncode == 2 and "retrying (pending, tried at least once) goes alone" in mixed.stderr


def test_replay_usage_errors(env):
    assert CliRunner(env=env).invoke(main, ["replay"]).exit_code == 2
    assert CliRunner(env=env).invoke(main, ["replay", "1", "--all-failed"]).exit_code == 2
    assert CliRunner(env=env).invoke(main, ["replay", "1", "--provider", "vapi"]).exit_code == 2


def test_prune_keeps_recent_and_failed(env, store):
    old = add(store, "old", State.DELIVERED, received_at=NOW - 40 * 86400)
    recent = add(store, "recent", State.DELIVERED)
    old_failed = add(store, "old-failed", State.FAILED, received_at=NOW - 40 * 86400)
    assert "deleted 1 deliveries" in run(env, "prune", "--older-than", "30d").output
    assert store.get(old) is None and store.get(recent) and store.get(old_failed)
    assert "deleted 1 deliveries" in run(env, "prune", "--older-than", "30d", "--failed").output
    assert CliRunner(env=env).invoke(main, ["prune", "--older-than", "soon"]).exit_code == 2


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_unavailable_store_is_a_clear_error(tmp_path):
    env = {"ROARK_API_KEY": "rk", "RELAY_DATABASE_URL": f"sqlite:///{tmp_path}"}  # a directory, not a file
    result = CliRunner(env=env).invoke(main, ["deliveries", "list"])
    assert result.exit_code == 1 and "outbox is unavailable" in result.output


def test_check_reports_each_part(env):
    result = CliRunner(env=env).invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    assert "configuration: ok" in result.output and "database: ok" in result.output
    assert "vapi: WARNING no secret configured" in result.output
    assert "retell: WARNING no secret configured" in result.output
    assert "disabled (set RELAY_ADMIN_TOKEN" in result.output


def test_check_upstream_proves_the_key(env, fake_roark):
    good = {**env, "ROARK_BASE_URL": fake_roark.url, "ROARK_API_KEY": fake_roark.api_key}
    result = CliRunner(env=good).invoke(main, ["check", "--upstream"])
    assert result.exit_code == 0 and "roark: ok (key accepted; Roark reports healthy)" in result.output
    # proven by an authenticated read, not by /health, which need not look at the key
    assert [(r.path, r.status) for r in fake_roark.requests] == [("/health", 200), (KEY_PROBE_PATH, 404)]
    fake_roark.clear()
    wrong = CliRunner(env={**good, "ROARK_API_KEY": "rk_wrong_key"}).invoke(main, ["check", "--upstream"])
    assert wrong.exit_code == 1 and "ROARK_API_KEY is wrong" in wrong.output
    assert (KEY_PROBE_PATH, 401) in [(r.path, r.status) for r in fake_roark.requests]
    assert "rk_wrong_key" not in wrong.output
    down = CliRunner(env={**good, "ROARK_BASE_URL": "http://127.0.0.1:9"}).invoke(main, ["check", "--upstream"])
    assert down.exit_code == 1 and "cannot reach" in down.output


def test_check_upstream_tries_again_until_roark_is_reachable(env):
    port = free_port()  # where nothing listens until, well before the second try, Roark does
    appearing = FakeRoark(api_key="rk_test", port=port)
    timer = threading.Timer(0.2, appearing.start)
    timer.start()
    try:
        result = CliRunner(env={**env, "ROARK_BASE_URL": f"http://127.0.0.1:{port}"}).invoke(
            main, ["check", "--upstream"])
    finally:
        timer.join()
        appearing.stop()
    assert result.exit_code == 0 and "roark: ok (key accepted" in result.output, result.output


def test_check_fails_on_bad_database_and_hides_passwords(tmp_path):
    env = {"ROARK_API_KEY": "rk", "RELAY_DATABASE_URL": f"postgresql://relay:hunter2@127.0.0.1:{free_port()}/relay"}
    result = relay_process(env, "check", cwd=tmp_path)
    assert result.returncode == 1 and "database: FAILED" in result.stdout
    assert "hunter2" not in result.stdout and "********" in result.stdout
    assert "that the PostgreSQL server is up" in result.stdout
    # its own summary only: not the connection pool's log lines before it
    assert result.stderr == ""
    assert all(line.startswith(("configuration:", "vapi:", "retell:", "status page", "database:"))
               for line in result.stdout.splitlines()), result.stdout


def test_check_on_a_sqlite_file_it_cannot_create_speaks_of_the_file(tmp_path):
    env = {"ROARK_API_KEY": "rk", "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'relay.db'}"}
    result = relay_process(env, "check", cwd=tmp_path)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("database:")]
    assert result.returncode == 1
    assert line.endswith(f"directory {tmp_path / 'missing'} does not exist; set RELAY_DATABASE_URL or create it.")


def test_check_says_once_where_vapis_waiting_messages_go_and_only_to_who_takes_vapi_webhooks(tmp_path, env):
    def vapi_lines(**more):
        result = relay_process({**env, **more}, "check", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if "VAPI_SERVER_URL" in line]

    assert vapi_lines() == []  # no VAPI_SECRET: the relay takes no VAPI webhook at all
    [note] = vapi_lines(VAPI_SECRET="vapi-secret")
    assert note.startswith("vapi: note: messages VAPI waits on an answer to (assistant-request")
    assert "nothing to do if VAPI sends this relay only what goes to Roark" in note
    assert vapi_lines(VAPI_SECRET="vapi-secret", VAPI_SERVER_URL="https://team.example/vapi") == []


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["migrate"]])
def test_a_database_that_cannot_be_created_is_one_line_with_what_to_do(tmp_path, command):
    env = {"ROARK_API_KEY": "rk", "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'relay.db'}"}
    started = time.monotonic()
    result = CliRunner(env=env).invoke(main, command)
    assert result.exit_code == 1 and time.monotonic() - started < 10
    assert "does not exist; set RELAY_DATABASE_URL or create it" in result.output
    assert "Traceback" not in result.output


# --- destinations ----------------------------------------------------------------------

def test_secret_prints_a_fresh_secret_the_relay_accepts(env):
    first, second = run(env, "secret").output.strip(), run(env, "secret").output.strip()
    assert first.startswith("whsec_") and first != second
    destinations = json.dumps([{"name": "crm", "url": "https://crm.example/hooks", "secret": first}])
    assert Settings.from_env({**env, "RELAY_DESTINATIONS": destinations}).destinations[0].name == "crm"


def test_destinations_list_filter_resume_and_replay(env, store):
    env = {**env, "RELAY_DESTINATIONS": json.dumps(
        [{"name": "crm", "url": "https://user:pw@crm.example/hooks?token=t0p",
          "secret": run(env, "secret").output.strip()}])}
    [row] = store.insert_many([NewDelivery("vapi", "end-of-call-report", "call-d", "e:call-d", b"{}", NOW,
                                           destinations=("roark", "crm"))], NOW)
    crm_id = row.deliveries["crm"]
    [_claimed] = store.claim("cli-test", NOW, 60, 1, destination="crm")
    store.complete(crm_id, "cli-test", Completion(State.FAILED, NOW, status_code=410, error="gone"))
    store.pause_destination("crm", "destination crm answered 410 Gone: stopped until an operator resumes it", NOW)

    listed = run(env, "destinations", "list").output
    assert "crm.example/hooks" in listed and "t0p" not in listed and "pw@" not in listed
    assert "failed=1" in listed and "STOPPED since" in listed and "410 Gone" in listed
    only_crm = [json.loads(line)
                for line in run(env, "deliveries", "list", "--destination", "crm", "--json").output.splitlines()]
    assert [(r["id"], r["destination"]) for r in only_crm] == [(crm_id, "crm")]

    assert run(env, "destinations", "resume", "crm").output == "resumed crm\n"
    again = CliRunner(env=env).invoke(main, ["destinations", "resume", "crm"])
    assert again.exit_code == 1 and "is not stopped" in again.output
    replayed = run(env, "replay", "--all-failed", "--destination", "roark").output
    assert replayed.startswith("replayed 0")
    assert run(env, "replay", "--all-failed", "--destination", "crm").output == f"replayed 1 delivery: {crm_id}\n"


def test_check_upstream_probes_each_destination(env, fake_roark):
    with FakeRoark() as crm:
        destinations = json.dumps([
            {"name": "crm", "url": f"{crm.url}/hooks", "secret": run(env, "secret").output.strip()},
            {"name": "gone", "url": "http://127.0.0.1:9/hooks", "secret": run(env, "secret").output.strip()}])
        good = {**env, "ROARK_BASE_URL": fake_roark.url, "ROARK_API_KEY": fake_roark.api_key,
                "RELAY_DESTINATIONS": destinations}
        result = CliRunner(env=good).invoke(main, ["check", "--upstream"])
    assert "destination crm: ok (reachable; answered" in result.output
    assert "destination gone: FAILED cannot reach http://127.0.0.1:9/hooks" in result.output
    assert result.exit_code == 1
