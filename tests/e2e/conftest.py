"""Real `relay serve` processes on 127.0.0.1, in front of a loopback fake Roark."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import eventually, free_port

#: What a small machine has (Fly's shared-cpu-1x, Heroku's basic dyno).
SMALL_MACHINE_BYTES = 512 * 1024 * 1024


class MemoryCgroup:
    """A memory-limited cgroup (v1 memory controller) beneath this process's own, for
    running a relay in the 512 MB a small machine has; `create` gives None where the
    machine offers none to make."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup | None:
        try:
            own = next(line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                       if line.split(":", 2)[1] == "memory")
            path = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / f"relay-test-{os.getpid()}-{time.time_ns()}"
            path.mkdir()
        except (OSError, StopIteration, IndexError):
            return None
        group = cls(path)
        try:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):  # no swap to hide in, where the host allows
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        except OSError:
            group.remove()
            return None
        return group

    def join(self) -> None:
        """Put the calling process in the group (a child's preexec_fn: all it starts follows)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    @property
    def peak(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    @property
    def oom_kills(self) -> int:
        fields = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(fields.get("oom_kill", 0))

    def empty(self) -> None:
        """Kill whatever still runs in the group, and remove it."""
        def members() -> list[int]:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]

        for pid in members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        eventually(lambda: not members(), timeout=10, message="processes stayed in the test's memory cgroup")
        self.remove()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.rmdir()


class RelayProcess:
    """One `relay serve` process; its stdout (JSON logs) goes to a file the test can read."""

    def __init__(self, env: dict[str, str], log_path: Path, cgroup: MemoryCgroup | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.cgroup = cgroup
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
                preexec_fn=None if self.cgroup is None else self.cgroup.join,
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

    def peak_rss(self) -> int:
        """The relay's peak, its forwarding process's included: each process's own peak,
        summed (they need not peak together, so this bounds what the machine needed)."""
        total = 0
        for pid in (self.process.pid, *self.children()):
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
        return total

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=10)


def rows(env: dict[str, str]) -> list[dict]:
    path = env["RELAY_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT * FROM webhooks JOIN deliveries ON deliveries.webhook_id = webhooks.id ORDER BY deliveries.id")]


@pytest.fixture
def start_relay(tmp_path):
    """Starts `relay serve` processes, in `cgroup` when given; kills them at the end."""
    started: list[RelayProcess] = []

    def start(env: dict[str, str], cgroup: MemoryCgroup | None = None) -> RelayProcess:
        relay = RelayProcess(env, tmp_path / "relay.log", cgroup)
        started.append(relay)
        return relay.start()

    yield start
    for relay in started:
        if relay.process.poll() is None:
            relay.kill()


@pytest.fixture
def small_machine():
    """A 512 MB memory cgroup to run a relay in, or None where none can be made (the
    memory tests then judge by the processes' own peak)."""
    group = MemoryCgroup.create(SMALL_MACHINE_BYTES)
    yield group
    if group is not None:
        group.empty()
