"""Real `relay serve` processes on 127.0.0.1, in front of a loopback fake Roark."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import eventually, free_port


class RelayProcess:
    """One `relay serve` process; its stdout (JSON logs) goes to a file the test can read."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> RelayProcess:
        executable = shutil.which("relay")
        assert executable, "the `relay` console script is not installed (pip install -e '.[test]')"
        env = {"PATH": os.environ["PATH"], **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [executable, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        eventually(self._ready, timeout=20, interval=0.05,
                   message=f"relay did not become ready; log:\n{self.logs()}")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"relay exited with {self.process.returncode}; log:\n{self.logs()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def children(self) -> list[int]:
        """Its live child processes: the forwarding process (RELAY_FORWARD=process)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid and fields[0] != "Z":
                    found.append(int(entry.name))
        return found

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=10)


def rows(env: dict[str, str]) -> list[dict]:
    path = env["RELAY_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM webhooks JOIN deliveries ON deliveries.webhook_id = webhooks.id "
                                                   "ORDER BY deliveries.id")]


@pytest.fixture
def start_relay(tmp_path):
    started: list[RelayProcess] = []

    def start(env: dict[str, str]) -> RelayProcess:
        relay = RelayProcess(env, tmp_path / "relay.log").start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        if relay.process.poll() is None:
            relay.kill()
