"""Deployment files: what can be proven here without Heroku, Fly or a Docker engine."""

import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import tempfile
import tomllib
from pathlib import Path

import httpx
import pytest

from relay.settings import Settings, known_variables
from tests.helpers import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def documented_variables() -> set[str]:
    """Every variable named in the example configuration (commented or not)."""
    text = (ROOT / "config" / "relay.env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def test_every_setting_is_documented_in_the_example_config():
    # http_proxy and its kin are documented under their upper-case names.
    assert {name for name in known_variables() if name.isupper()} - documented_variables() == set()


def test_procfile_web_process_serves_on_port(tmp_path):
    processes = procfile()
    assert set(processes) == {"web", "worker", "release"}
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PORT": str(port), "ROARK_API_KEY": "rk_test",
           "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    release = subprocess.run(["sh", "-c", processes["release"]], env=env, capture_output=True, text=True, timeout=60)
    assert release.returncode == 0 and "version" in release.stdout
    web = subprocess.Popen(["sh", "-c", f"exec {processes['web']}"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        eventually(healthy, timeout=20, interval=0.1)
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(timeout=20)


def test_procfile_worker_forwards_until_told_to_stop(tmp_path):
    """The worker Heroku scales apart from web (with RELAY_FORWARD=off on the app)."""
    env = {"PATH": os.environ["PATH"], "ROARK_API_KEY": "rk_test", "RELAY_FORWARD": "off",
           "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "RELAY_LOG_FORMAT": "json"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(["sh", "-c", f"exec {procfile()['worker']}"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        eventually(lambda: "forwarding_started" in log.read_text(), timeout=20, interval=0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    assert '"forwarder_stopped"' in log.read_text()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def entrypoint() -> list[str]:
    [line] = [rest for keyword, rest in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    return json.loads(line)


def test_dockerfile_is_well_formed_runs_the_relay_as_its_user_and_uses_the_locked_set():
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "EXPOSE", "ENTRYPOINT", "CMD", "ARG", "LABEL", "HEALTHCHECK"}
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and "python:3.11" in instructions[0][1]
    assert {k for k, _ in instructions} <= known
    copied = {}
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, destination = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
                copied[destination] = source
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "pip install -r requirements.lock" in runs and "pip install --no-deps ." in runs
    # No USER (it would start the entrypoint as that user, unable to take the volume): the
    # entrypoint starts as root and runs the command as the user the image creates.
    script, user, _ = entrypoint()
    assert copied[f"/usr/local/bin/{script}"] == "deploy/entrypoint.sh"
    assert os.access(ROOT / "deploy" / "entrypoint.sh", os.X_OK)
    assert re.search(rf"useradd [^&]*\b{user}\b", runs) and user != "root"
    assert json.loads(instructions[-1][1]) == ["relay", "serve"] and instructions[-1][0] == "CMD"


def run(*command: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    return process, out


def test_the_entrypoint_gives_the_volume_to_the_user_then_runs_the_command_as_that_user():
    if os.geteuid() != 0:
        pytest.skip("the entrypoint's work needs root, as a container starts: run the tests as root (CI does)")
    nobody = pwd.getpwnam("nobody")  # stands in for the image's user, which this machine lacks
    with tempfile.TemporaryDirectory() as volume:  # in /tmp, which nobody may cross
        os.chown(volume, 0, 0)  # as Fly mounts it
        Path(volume, "relay.db-wal").touch()  # left by a root shell
        script = str(ROOT / "deploy" / "entrypoint.sh")
        process, out = run(script, "nobody", volume, "sh", "-c", f"echo $$; id -u; id -G; touch {volume}/relay.db")
        pid, uid, groups = out.split()
        # exec'd in place, so the platform's SIGTERM reaches the relay itself
        assert int(pid) == process.pid
        assert (int(uid), groups) == (nobody.pw_uid, str(nobody.pw_gid))  # root's groups dropped too
        assert {os.stat(Path(volume, name)).st_uid for name in (".", "relay.db-wal", "relay.db")} == {nobody.pw_uid}

        # Started as another user already, it just runs the command (and touches nothing).
        os.chown(volume, 0, 0)
        _, out = run("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                     script, "relay", volume, "id", "-u")
        assert out.strip() == str(nobody.pw_uid) and os.stat(volume).st_uid == 0


def test_heroku_and_docker_install_the_same_pinned_set():
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {line.split("==")[0].lower() for line in lock.splitlines() if "==" in line and not line.startswith(" ")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", dependency)[0].lower()
        assert name in pinned, f"{name} is not pinned in requirements.lock"
    assert (ROOT / "requirements.txt").read_text().split("\n", 1)[1].split() == ["-r", "requirements.lock", "."]


def test_ci_runs_the_readmes_test_command_on_the_pinned_set():
    """What ships (requirements.lock) is what CI tests, with the README's own command."""
    readme = (ROOT / "README.md").read_text()
    [documented] = [line for line in readme.splitlines() if line.endswith("&& pytest")]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()[-1]
    assert ci == documented.replace("pip install ", "pip install -q ")
    assert "pip install -r requirements.lock -e '.[test]'" in documented


def test_fly_config_points_at_real_paths_and_a_valid_configuration():
    config = tomllib.loads((ROOT / "deploy" / "fly.toml").read_text())
    assert (ROOT / "deploy" / config["build"]["dockerfile"]).exists()
    env = config["env"]
    settings = Settings.from_env({**env, "ROARK_API_KEY": "rk_test"})
    service = config["http_service"]
    assert service["internal_port"] == settings.port == 8080
    assert settings.host == "0.0.0.0"
    [mount] = config["mounts"]
    assert settings.database_url.removeprefix("sqlite:///").startswith(mount["destination"] + "/")
    assert entrypoint()[2] == mount["destination"]  # the directory the entrypoint gives the relay user
    [check] = service["checks"]
    assert check["path"] == "/health"
    assert service["auto_stop_machines"] == "off" and service["min_machines_running"] >= 1


def test_app_json_describes_real_variables_and_the_postgres_addon():
    app = json.loads((ROOT / "app.json").read_text())
    assert app["env"]["ROARK_API_KEY"]["required"] is True
    assert set(app["env"]) <= documented_variables()
    assert all(v.get("description") for v in app["env"].values())
    assert any(addon["plan"].startswith("heroku-postgresql") for addon in app["addons"])
    # What the Procfile's command line says is not said again as a config var.
    assert not {"RELAY_HOST", "PORT"} & set(app["env"])
    assert "heroku config:get RELAY_ADMIN_TOKEN" in app["env"]["RELAY_ADMIN_TOKEN"]["description"]
