"""Forwarding in a process of its own: `relay forward` (`forward`), and the child that
`relay serve` starts beside the server and restarts if it dies (`ForwardingProcess`).

Why a process: receiving and delivering in one interpreter share one lock, so a backlog
being delivered slowed every webhook's acknowledgement (BENCHMARKS.md). Nothing crosses
between the two but the store: the server stores webhooks and the store wakes the
forwarders (PostgreSQL's NOTIFY, SQLite's data_version); the forwarders report their
state through the store (relay.background). The child's counters reach the server's
/metrics through a file it rewrites every few seconds, since a Prometheus scrape reaches
one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import structlog
from prometheus_client import generate_latest

from relay import __version__
from relay.background import Background
from relay.metrics import Metrics
from relay.outbox import AsyncOutbox, open_backend
from relay.outbox.startup import migrate_when_available_async, startup_patience
from relay.periodic import every
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding_process")

#: How often the child rewrites its metrics file.
METRICS_SECONDS = 5.0
#: Restarts of a child that keeps dying back off up to this long; one that ran for
#: STEADY_SECONDS starts again at once.
MAX_RESTART_DELAY_SECONDS = 30.0
STEADY_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


async def run_forwarding(settings: Settings, stop: asyncio.Event, metrics_file: Path | None = None) -> None:
    """Deliver (and reconcile, and prune) until `stop` is set, then hand back whatever is
    in flight (see Forwarder.stop)."""
    outbox = AsyncOutbox(open_backend(settings.database_url, pool_size=settings.database_pool_size))
    try:
        await migrate_when_available_async(outbox, startup_patience(settings.database_url))
        metrics = Metrics()
        background = Background(settings, outbox, metrics, report=True)
        await background.start()
        log.info("forwarding_started", version=__version__, upstream=settings.roark_base_url,
                 destinations=[d.name for d in settings.destinations])

        async def write_metrics() -> None:
            if metrics_file is not None:
                _write_atomically(metrics_file, generate_latest(metrics.background))

        try:
            await every(METRICS_SECONDS, stop, write_metrics)
        finally:
            await background.stop()
            await write_metrics()
    finally:
        await outbox.close()


def forward(settings: Settings, metrics_file: Path | None = None, parent_pid: int | None = None) -> None:
    """`relay forward`: run until SIGTERM or SIGINT. With `parent_pid`, also end when that
    process does, however it ends (a server killed outright must not leave a forwarder
    behind that nobody supervises)."""
    if parent_pid is not None:
        _die_with(parent_pid)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_forwarding(settings, stop, metrics_file)

    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it; without it, the standard loop
        asyncio.run(main())
    else:
        uvloop.run(main())


def _die_with(parent_pid: int) -> None:
    libc = ctypes.util.find_library("c")
    if libc is not None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it ended before the line above took effect
        sys.exit(0)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class ForwardingProcess:
    """`relay forward` as a child of the server process, restarted when it dies."""

    def __init__(self, shutdown_grace_seconds: float) -> None:
        self._grace = shutdown_grace_seconds
        self._folder = tempfile.TemporaryDirectory(prefix="relay-forwarding-")
        self.metrics_file = Path(self._folder.name) / "metrics.prom"
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def metrics(self) -> bytes | None:
        """The child's counters as it last wrote them (None before its first write)."""
        try:
            return self.metrics_file.read_bytes()
        except FileNotFoundError:
            return None

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="relay-forwarding-process")

    async def _spawn(self) -> None:
        # The child reads the same environment as this process, so the same settings.
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "forward", "--metrics-file", str(self.metrics_file),
            "--parent-pid", str(os.getpid()))
        log.info("forwarding_process_started", pid=self._process.pid)

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            assert self._process is not None
            started = time.monotonic()
            code = await self._process.wait()
            if self._stopping:
                return
            delay = 1.0 if time.monotonic() - started > STEADY_SECONDS else min(delay * 2, MAX_RESTART_DELAY_SECONDS)
            if code == 0:
                # It was told to stop: most often Ctrl-C, which reaches the whole process
                # group, so this server is about to stop too (and cancels the restart).
                log.info("forwarding_process_stopped", restart_in_seconds=delay)
            else:
                log.error("forwarding_process_exited", code=code, restart_in_seconds=delay,
                          consequence="webhooks are stored but not delivered until it is back")
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn()

    async def stop(self) -> None:
        """SIGTERM, then as long as its own shutdown may take, then SIGKILL."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self._grace + 10.0)
            except TimeoutError:
                log.error("forwarding_process_killed", pid=process.pid,
                          consequence="its deliveries in flight are sent again once their leases expire")
                process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._folder.cleanup()
