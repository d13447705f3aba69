"""Forwarding in a process of its own: `relay forward` (`forward`), run alone or as the
child that `relay serve` starts beside the server (relay.forwarding.supervisor).

Why a process: receiving and delivering in one interpreter share one lock, so a backlog
being delivered slowed every webhook's acknowledgement (BENCHMARKS.md). Nothing crosses
between the two but the store: the server stores webhooks and the store wakes the
forwarders (PostgreSQL's NOTIFY, SQLite's data_version); the forwarders report their
state through the store (relay.forwarding.background). The child's counters reach the server's
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
from pathlib import Path

import structlog
from prometheus_client import generate_latest

from relay import __version__
from relay.core import runtime
from relay.core.metrics import Metrics
from relay.core.periodic import every
from relay.forwarding.background import Background
from relay.outbox import AsyncOutbox, open_backend
from relay.outbox.startup import migrate_when_available_async, startup_patience
from relay.settings import Settings

log = structlog.get_logger("relay.forwarding.process")

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
            await every(settings.metrics_interval_seconds, stop, write_metrics)
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
        # Beside the server on one machine: when both want the CPU, webhooks are
        # acknowledged first, and deliveries take what is left (they are durable already).
        os.nice(settings.forward_nice)
    runtime.tune()

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
