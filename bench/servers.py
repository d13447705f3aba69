"""The processes a benchmark runs on 127.0.0.1: the relay (`relay serve`, as in
production), the bare Starlette ceiling and the stand-in upstream. Each is started,
waited for, measured (RSS from /proc) and stopped by its own pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROARK_KEY = "rk_bench_0123456789"
VAPI_SECRET = "vapi_bench_secret"
#: `python -m bench.*` servers import the bench package from here.
ROOT = Path(__file__).resolve().parents[1]


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state, ppid, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path,
                 ready_path: str, ready_timeout: float = 60.0, profile: Path | None = None) -> None:
        self.name = name
        self._profiler: subprocess.Popen | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], env={**os.environ, **env},
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_ready(ready_path, ready_timeout, log)
        if profile is not None:
            self._profiler = _profile(self.process.pid, profile)

    def _wait_ready(self, path: str, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {log}")
            try:
                httpx.request("GET" if path == "/health" else "HEAD", self.url + path, timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s; see {log}")

    def processes(self) -> list[int]:
        """The server process and its descendants (the relay's forwarding process)."""
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int(_stat(int(entry.name))[1])
                except (OSError, ValueError):
                    continue
        tree = [self.process.pid]
        for pid in tree:
            tree += [child for child, parent in parents.items() if parent == pid]
        return tree

    def memory_kb(self) -> dict[str, int]:
        """Current and peak resident set size (VmRSS, VmHWM), summed over the server's
        processes: a peak each reached at its own moment, so an upper bound."""
        each = self.memory_kb_by_process()
        return {key: sum(fields[key] for fields in each) for key in ("VmRSS", "VmHWM")}

    def memory_kb_by_process(self) -> list[dict[str, int]]:
        """VmRSS and VmHWM of the server process, then of each of its descendants."""
        each = []
        for pid in self.processes():
            fields = {}
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
            each.append(fields)
        return each

    def pss_kb(self) -> int:
        """Proportional set size summed over the server's processes: each shared page
        counted once in all, as the machine pays for it (a forked forwarding process
        shares most of the server's pages)."""
        total = 0
        for pid in self.processes():
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        return total

    def cpu_seconds_by_process(self) -> list[float]:
        """User + system CPU time of the server process, then of each descendant."""
        return [(int(f[11]) + int(f[12])) / 100 for f in map(_stat, self.processes())]

    def cpu_seconds(self) -> float:
        """User + system CPU time the server's processes have used (all threads; ended
        children included once reaped)."""
        ticks = 0
        for pid in self.processes():
            fields = _stat(pid)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == self.process.pid:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped children
        return ticks / 100  # clock ticks (100 Hz)

    def stop(self, timeout: float = 30.0) -> None:
        if self._profiler is not None:  # py-spy writes its flame graph when interrupted
            self._profiler.send_signal(signal.SIGINT)
            self._profiler.wait(timeout=60)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(server_factory) -> Iterator[Server]:
    server = server_factory()
    try:
        yield server
    finally:
        server.stop()


def relay_env(database_url: str, upstream_url: str, forward_concurrency: int | None) -> dict[str, str]:
    """The relay as deployed, at its default log level (one JSON line per webhook and per
    attempt, to a file), with its default forwarding concurrency unless one is given."""
    env = {
        "ROARK_API_KEY": ROARK_KEY,
        "ROARK_BASE_URL": upstream_url,
        "RELAY_DATABASE_URL": database_url,
        "VAPI_SECRET": VAPI_SECRET,
        "RELAY_LOG_FORMAT": "json",
    }
    if forward_concurrency is not None:
        env["RELAY_FORWARD_CONCURRENCY"] = str(forward_concurrency)
    return env


def _profile(pid: int, output: Path) -> subprocess.Popen:
    """py-spy (pip install py-spy) sampling `pid`, every thread, into an SVG flame graph."""
    executable = shutil.which("py-spy")
    if executable is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    return subprocess.Popen([executable, "record", "--pid", str(pid), "--output", str(output), "--subprocesses",
                             "--threads", "--nonblocking", "--rate", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def relay(env: dict[str, str], log: Path, profile: Path | None = None) -> Server:
    executable = shutil.which("relay")
    if executable is None:
        raise RuntimeError("the `relay` command is not installed: pip install -e .")
    return Server("relay", [executable, "serve", "--host", "127.0.0.1"], env, log, "/health",
                  profile=profile)


def bare(env: dict[str, str], log: Path) -> Server:
    return Server("bare", [sys.executable, "-m", "bench.bare"], env, log, "/")


def upstream(log: Path, delay: float = 0.0, hold: bool = False) -> Server:
    command = [sys.executable, "-m", "bench.upstream", "--delay", str(delay)]
    return Server("upstream", command + (["--hold"] if hold else []), {}, log, "/")
