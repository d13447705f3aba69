"""The forwarding process as the server sees it: `relay forward` run as a child of
`relay serve`, restarted if it dies, stopped with the server (`ForwardingProcess`).

The first child is a copy of the server process (`fork`), made once the server has
imported everything and before it starts a thread or an event loop: it starts
delivering at once, where a new interpreter spends about a second importing the same
code while a backlog waits. Restarts run `relay forward` afresh (`spawn`): by then the
server has threads, and a copy of a process with threads may inherit a lock held by
one of them. Either child is waited for on a thread of its own, since the first exists
before the server's event loop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

import structlog

from relay.forwarding.process import forward
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding.supervisor")

#: Restarts of a child that keeps dying back off up to this long; one that ran for
#: STEADY_SECONDS starts again at once.
MAX_RESTART_DELAY_SECONDS = 30.0
STEADY_SECONDS = 60.0
#: How long a child told to stop may take beyond the shutdown grace period of its own.
STOP_MARGIN_SECONDS = 10.0


class _Child(Protocol):
    pid: int

    def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class _Forked:
    """A forked child, waited for and signalled as subprocess.Popen does its own."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class ForwardingProcess:
    """`relay forward` as a child of the server process: `fork` or `spawn` starts it,
    `start` supervises it from the server's loop, `stop` ends it (SIGTERM, then SIGKILL
    once its grace period is over). Start it from the thread that stays for the
    process's life: the child is told to die with the thread that started it."""

    def __init__(self, shutdown_grace_seconds: float) -> None:
        self._grace = shutdown_grace_seconds
        self._folder = tempfile.TemporaryDirectory(prefix="relay-forwarding-")
        self.metrics_file = Path(self._folder.name) / "metrics.prom"
        self._process: _Child | None = None
        self._exit: asyncio.Future[int] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def metrics(self) -> bytes | None:
        """The child's counters as it last wrote them (None before its first write)."""
        try:
            return self.metrics_file.read_bytes()
        except FileNotFoundError:
            return None

    def fork(self, settings: Settings) -> None:
        """Start the child as a copy of this process, which must have no other thread
        (a fresh `spawn` otherwise)."""
        if threading.active_count() > 1:
            self.spawn()
            return
        parent = os.getpid()
        sys.stdout.flush()
        # Everything imported so far moves out of the collector's reach in both processes:
        # a collection writes to every object it visits, so without this the child copied
        # the interpreter's pages it shares with the server on its first collection.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            _forward_then_exit(settings, self.metrics_file, parent)
        self._started(_Forked(pid))

    def spawn(self) -> None:
        """Start the child as a new interpreter running `relay forward`, which reads the
        same environment as this process, so the same settings."""
        self._started(subprocess.Popen(
            [sys.executable, "-m", "relay", "forward", "--metrics-file", str(self.metrics_file),
             "--parent-pid", str(os.getpid())]))

    def _started(self, process: _Child) -> None:
        self._process = process
        log.info("forwarding_process_started", pid=process.pid)

    async def start(self) -> None:
        """Supervise the child (spawned now unless it was started already)."""
        if self._process is None:
            self.spawn()
        assert self._process is not None
        self._exit = _exited(self._process)
        self._task = asyncio.create_task(self._supervise(), name="relay-forwarding-process")

    async def _supervise(self) -> None:
        delay = 0.5
        while True:
            assert self._exit is not None
            started = time.monotonic()
            code = await asyncio.shield(self._exit)
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
            assert self._process is not None
            self._exit = _exited(self._process)

    async def stop(self) -> None:
        """SIGTERM, then as long as its own shutdown may take, then SIGKILL."""
        self._stopping = True
        process, exit = self._process, self._exit
        if process is not None and exit is not None and not exit.done():
            process.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(exit), self._grace + STOP_MARGIN_SECONDS)
            except TimeoutError:
                log.error("forwarding_process_killed", pid=process.pid,
                          consequence="its deliveries in flight are sent again once their leases expire")
                process.kill()
                await exit
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._folder.cleanup()


def _exited(process: _Child) -> asyncio.Future[int]:
    """The child's exit code, once it has exited. Waited for on a daemon thread, so a
    server that ends without stopping its child is not held up by the wait (the child
    then dies with it, by PDEATHSIG)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()

    def settle(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    def wait() -> None:
        code = process.wait()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, code)

    threading.Thread(target=wait, name="relay-forwarding-wait", daemon=True).start()
    return exited


def _forward_then_exit(settings: Settings, metrics_file: Path, parent: int) -> None:
    """The forked child's whole life: it never returns into the server's code."""
    code = 1
    try:
        forward(settings, metrics_file, parent)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        log.exception("forwarding_process_failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
