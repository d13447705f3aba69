"""Running the app under uvicorn, the way `relay serve` and `relay demo` do."""

from __future__ import annotations

import resource
import threading
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from relay.core import logs, runtime
from relay.forwarding.supervisor import ForwardingProcess
from relay.http.app import create_app
from relay.http.protocol import BoundedHttpToolsProtocol, ConnectionBounds
from relay.settings import Settings

#: Descriptors kept from client connections beyond the forwarder's and the database's:
#: the outbox files, logs, listening sockets, the process's own pipes.
RESERVED_DESCRIPTORS = 128
MIN_CONNECTIONS = 64


def connection_limit(settings: Settings) -> int:
    """Client connections allowed at once: the descriptors this process may open (its
    soft limit, raised to the hard one) less those its own work needs. Past it, accept()
    would fail on its own, and uvicorn would only log, over and over, while every client
    (and the database) waited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    own = settings.forward_concurrency + settings.database_pool_size + RESERVED_DESCRIPTORS
    return max(MIN_CONNECTIONS, soft - own)


def uvicorn_config(settings: Settings, app: ASGIApp, host: str, port: int,
                   max_connections: int | None = None) -> uvicorn.Config:
    """The uvicorn configuration `relay serve` runs with (tests serve the same)."""
    # Every body gets a time bound, a second later than the webhook endpoint's own 408.
    protocol = type("RelayHttpProtocol", (BoundedHttpToolsProtocol,), {"bounds": ConnectionBounds(
        head_timeout=settings.head_timeout_seconds,
        body_timeout=settings.body_timeout_seconds + 1.0,
        max_connections=min(max_connections or settings.max_connections, connection_limit(settings)),
        head_budget=settings.head_budget_bytes)})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=settings.log_level,
        log_config=None,  # relay.core.logs already routed the standard library's logging
        access_log=False,
        # The forwarder gets its own grace period during lifespan shutdown. uvicorn hints
        # whole seconds but hands the value to asyncio, which takes any.
        timeout_graceful_shutdown=max(settings.shutdown_grace_seconds, 1.0),  # type: ignore[arg-type]
    )


def run(
    settings: Settings,
    host: str,
    port: int,
    on_started: Callable[[str], None] | None = None,
    forwarding: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. `on_started(base_url)` runs on a helper thread once
    the server accepts connections. `forwarding`: where the forwarders run, if not
    where RELAY_FORWARD says."""
    logs.configure(settings.log_level, settings.log_format)
    runtime.tune()  # first: a forked forwarding process inherits both
    forwarding = forwarding or settings.forward
    child = None
    if forwarding == "process":
        # Now, with everything imported and before any thread or event loop: see fork.
        child = ForwardingProcess(settings.shutdown_grace_seconds)
        child.fork(settings)
    app = create_app(settings, forwarding=forwarding, forwarding_process=child)
    server = uvicorn.Server(uvicorn_config(settings, app, host, port))
    if on_started is not None:
        def notify() -> None:
            while not server.started:
                if server.should_exit:
                    return
                threading.Event().wait(0.02)
            on_started(f"http://{host}:{port}")

        threading.Thread(target=notify, name="relay-on-started", daemon=True).start()
    server.run()
