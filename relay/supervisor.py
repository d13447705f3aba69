"""The forwarding process as the server sees it: `relay forward` started as a child of
`relay serve`, restarted if it dies, stopped with the server (`ForwardingProcess`).

`relay serve` starts it before it loads the server, so the two start up side by side
rather than one after the other: an interpreter takes about a second to import the
forwarding code, and a backlog waits for it. That is also why this module imports
nothing heavy, and why the child is a plain `subprocess.Popen` waited for on a thread of
its own rather than an asyncio subprocess: it exists before the server's event loop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger("relay.supervisor")

#: Restarts of a child that keeps dying back off up to this long; one that ran for
#: STEADY_SECONDS starts again at once.
MAX_RESTART_DELAY_SECONDS = 30.0
STEADY_SECONDS = 60.0
#: How long a child told to stop may take beyond the shutdown grace period of its own.
STOP_MARGIN_SECONDS = 10.0


class ForwardingProcess:
    """`relay forward` as a child of the server process: `spawn` starts it (at once, with
    or without an event loop), `start` supervises it from the server's loop, `stop`
    ends it (SIGTERM, then SIGKILL once its grace period is over)."""

    def __init__(self, shutdown_grace_seconds: float) -> None:
        self._grace = shutdown_grace_seconds
        self._folder = tempfile.TemporaryDirectory(prefix="relay-forwarding-")
        self.metrics_file = Path(self._folder.name) / "metrics.prom"
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def metrics(self) -> bytes | None:
        """The child's counters as it last wrote them (None before its first write)."""
        try:
            return self.metrics_file.read_bytes()
        except FileNotFoundError:
            return None

    def spawn(self) -> None:
        """Start the child now. Call it from the thread that stays for the process's
        life: the child is told to die with the thread that started it (PDEATHSIG)."""
        # The child reads the same environment as this process, so the same settings.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "relay", "forward", "--metrics-file", str(self.metrics_file),
             "--parent-pid", str(os.getpid())])
        log.info("forwarding_process_started", pid=self._process.pid)

    async def start(self) -> None:
        """Supervise the child (spawned now unless `spawn` came first)."""
        if self._process is None:
            self.spawn()
        self._task = asyncio.create_task(self._supervise(), name="relay-forwarding-process")

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            assert self._process is not None
            started = time.monotonic()
            code = await _exited(self._process)
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
            self.spawn()

    async def stop(self) -> None:
        """SIGTERM, then as long as its own shutdown may take, then SIGKILL."""
        self._stopping = True
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.wait_for(_exited(process), self._grace + STOP_MARGIN_SECONDS)
            except TimeoutError:
                log.error("forwarding_process_killed", pid=process.pid,
                          consequence="its deliveries in flight are sent again once their leases expire")
                process.kill()
                await _exited(process)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._folder.cleanup()


async def _exited(process: subprocess.Popen[bytes]) -> int:
    """The child's exit code, once it has exited. Waited for on a daemon thread, so a
    server that ends without stopping its child is not held up by the wait (the child
    then dies with it, by PDEATHSIG)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()

    def wait() -> None:
        code = process.wait()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(lambda: exited.done() or exited.set_result(code))

    threading.Thread(target=wait, name="relay-forwarding-wait", daemon=True).start()
    return await exited
